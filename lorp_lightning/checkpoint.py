"""Prune a checkpoint on disk, without loading the model: [`prune_checkpoint`][lorp_lightning.checkpoint.prune_checkpoint].

The checkpoint is a Hugging Face model directory with safetensors weights, one file
(``model.safetensors``) or sharded (``model.safetensors.index.json`` and its shards). The
pruned copy is the checkpoint that ``prune_layers`` and ``save_pretrained`` would give, written
tensor by tensor:

- the tensors of removed blocks are dropped, and the kept blocks renumbered
  (``model.layers.17.mlp...`` becomes ``model.layers.14.mlp...``; where the blocks are comes
  from `ARCHITECTURES`);
- ``config.json`` is [`pruned_config`][lorp_lightning.surgery.pruned_config] of the checkpoint's config;
- a per-block table outside the blocks (``per_block_slices`` of the architecture: Gemma 4's
  per-layer input embeddings) keeps the kept blocks' slices;
- the index's ``weight_map`` and ``total_size`` follow; a shard left with no tensors is dropped;
- every other file (tokenizer, ``generation_config.json``, ...) is copied as it is.

Memory stays near nothing, whatever the checkpoint's size: a safetensors file is an 8-byte
little-endian header length, a JSON header that gives each tensor's dtype, shape and byte range
(``data_offsets``, from the end of the header), then the tensors' bytes. Each output file is
written from that layout, its header first, then each kept tensor's bytes copied from the input
file in pieces of at most ``_COPY_BYTES``: no tensor is ever loaded whole (a per-block table is
read in whole rows, at most ``_COPY_BYTES`` at a time, and its kept columns written).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lorp_lightning._io import OutputDirectory
from lorp_lightning._validation import ParameterError, tagged
from lorp_lightning.architectures import Architecture, architecture_of, skeleton
from lorp_lightning.selection import PruningPlan
from lorp_lightning.surgery import _pruned_config

__all__ = ["check_safetensors", "prune_checkpoint"]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_COPY_BYTES = 16 * 2**20
"""The most bytes held in memory at once while a tensor is copied."""

# Weights in a format this module does not rewrite: never copied, as they would describe the unpruned model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")


def prune_checkpoint(
    plan_or_blocks: Any, checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write the checkpoint in ``checkpoint_dir`` with the blocks of ``plan_or_blocks`` removed to
    ``out_dir``, one tensor at a time, and return ``out_dir``.

    The result equals loading the checkpoint, [`prune_layers`][lorp_lightning.surgery.prune_layers], and
    ``save_pretrained``: the same tensors under the same names, the same ``config.json``
    (pruning an already pruned checkpoint composes the ``lorp_pruning`` record), loadable with
    plain ``AutoModelForCausalLM.from_pretrained``. The shards keep their partition of the
    tensors (a shard that held removed blocks only is dropped). Peak memory is that of the
    interpreter and its imports plus a copy buffer of 16 MB, whatever the checkpoint's size
    (``benchmarks/performance/apply_memory.py``). Weights in other formats (``pytorch_model.bin``, ...) and
    sub-folders are left out with a warning; every other file is copied.

        prune_checkpoint([12, 13, 14], "Qwen2.5-0.5B", "Qwen2.5-0.5B-pruned")
        prune_checkpoint("pruned/smollm2-135m-lorp_search-0.25/report.json", "SmolLM2-135M", "out")

    Everything is checked before anything is written, and the output is written in a temporary
    folder beside ``out_dir`` and renamed at the end: on an error, there is no ``out_dir`` (or
    the old one is as it was). ``checkpoint_dir`` is only read.

    Args:
        plan_or_blocks: the blocks to remove, in the checkpoint's current numbering: a list or
            tuple of ints, a [`PruningPlan`][lorp_lightning.selection.PruningPlan] computed for a model
            of this depth, or the path of a saved plan: the ``report.json`` written by
            ``lorp prune`` (or its directory), or a file of ``PruningPlan.to_json()``.
        checkpoint_dir: a Hugging Face model directory with ``config.json`` and safetensors
            weights, whose ``model_type`` is in `ARCHITECTURES`.
        out_dir: the directory to write; it must not exist unless ``overwrite``, and must be
            neither ``checkpoint_dir`` nor inside it nor around it.
        overwrite: replace ``out_dir`` if it exists.

    Raises:
        ValueError: bad blocks, a plan for another depth, a plan file that holds no plan, a
            checkpoint with only PyTorch ``.bin`` weights, an index that disagrees with its shards,
            a damaged safetensors file, a config that disagrees with the blocks on disk, or an
            ``out_dir`` that overlaps ``checkpoint_dir``.
        FileNotFoundError: a missing ``checkpoint_dir``, ``config.json``, weights, shard or plan file.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        TypeError: ``plan_or_blocks`` of another type.
        NotImplementedError: an architecture not in the table, or a plan with a compensation (not folded on disk).
    """
    checkpoint = _checked_checkpoint_dir(checkpoint_dir)
    out = _checked_out_dir(out_dir, checkpoint, overwrite)
    request = _read_plan_file(plan_or_blocks) if isinstance(plan_or_blocks, (str, os.PathLike)) else plan_or_blocks
    if getattr(request, "compensation", None) is not None:
        raise NotImplementedError(
            "the plan carries a compensation (chosen with compensate=True / --compensate), which pruning a checkpoint on "
            "disk does not fold into the weights yet: prune the model in memory (prune_layers, or lorp prune "
            "--compensate), or apply a plan chosen without compensation"
        )
    rewrite = _plan_rewrite(request, checkpoint)
    with OutputDirectory(out, overwrite) as output:
        rewrite.write(output.path)
    return output.final


# --------------------------------------------------------------------------- arguments


def _checked_checkpoint_dir(checkpoint_dir: Any) -> Path:
    path = Path(checkpoint_dir)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise tagged(
            FileNotFoundError(
                f"checkpoint_dir={str(checkpoint_dir)!r} {what}; pass a Hugging Face model directory "
                "(config.json and model.safetensors, or model.safetensors.index.json and its shards)"
            ),
            "checkpoint_dir",
        )
    return path


def _checked_out_dir(out_dir: Any, checkpoint: Path, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise tagged(
            FileExistsError(f"out_dir={str(out_dir)!r} exists; pass overwrite=True to replace it, or choose another out_dir"),
            "out_dir",
        )
    if out.exists() and not out.is_dir():
        raise tagged(
            FileExistsError(f"out_dir={str(out_dir)!r} exists and is not a directory; choose another out_dir"), "out_dir"
        )
    a, b = out.resolve(), checkpoint.resolve()
    if a == b or a in b.parents or b in a.parents:
        where = "is" if a == b else "is inside" if b in a.parents else "holds"
        raise ParameterError(
            "out_dir",
            f"out_dir={str(out_dir)!r} {where} checkpoint_dir={str(checkpoint)!r}; the checkpoint is "
            "only read, never changed: choose an out_dir outside it",
        )
    return out


def _read_plan_file(path_like: str | os.PathLike) -> PruningPlan:
    """The plan saved in a file: the report.json of ``lorp prune`` (or its directory), or a PruningPlan's JSON."""
    path = Path(path_like)
    shown = f"plan_or_blocks={str(path_like)!r}"
    if path.is_dir() and (path / "report.json").is_file():
        path = path / "report.json"
    if not path.is_file():
        raise tagged(
            FileNotFoundError(
                f"{shown} is not a file; pass a saved plan (the report.json of `lorp prune`, or a "
                "file of PruningPlan.to_json()) or the blocks to remove"
            ),
            "plan_or_blocks",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ParameterError("plan_or_blocks", f"{shown} is not a JSON plan file ({error})") from error
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]
    elif isinstance(data, dict) and data.get("command") == "analyze":
        raise ParameterError(
            "plan_or_blocks",
            f"{shown} is the report of `lorp analyze`, which holds statistics but no plan; choose the "
            "blocks with `lorp prune MODEL --stats DIR/stats.pt --amount ...` and pass its report.json, "
            "or pass the blocks",
        )
    elif isinstance(data, dict) and "command" in data:
        raise ParameterError(
            "plan_or_blocks",
            f"{shown} is the report of `lorp {data['command']}`, which holds no single plan; pass the "
            "report.json of `lorp prune`, or the blocks",
        )
    if not (isinstance(data, dict) and {"pruned", "num_layers"} <= set(data)):
        raise ParameterError(
            "plan_or_blocks",
            f"{shown} holds no plan (no 'pruned' and 'num_layers'); pass the report.json of `lorp prune` "
            "or a file of PruningPlan.to_json()",
        )
    try:
        return PruningPlan.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ParameterError("plan_or_blocks", f"{shown} holds a plan this version cannot read ({error})") from error


# --------------------------------------------------------------------------- reading safetensors


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: list[int]
    begin: int  # byte range in the file's data, after the header
    end: int
    cut: tuple[int, int, tuple[int, ...]] | None = None
    """(dim, blocks, kept): a per-block table (one slice per block along dim) of which only the kept blocks' slices are written."""

    @property
    def written_shape(self) -> list[int]:
        if self.cut is None:
            return self.shape
        dim, blocks, kept = self.cut
        return [size // blocks * len(kept) if i == dim else size for i, size in enumerate(self.shape)]

    @property
    def written_bytes(self) -> int:
        return self.end - self.begin if self.cut is None else (self.end - self.begin) // self.cut[1] * len(self.cut[2])

    def runs(self) -> tuple[int, int, list[tuple[int, int]]]:
        """(rows, bytes per row, the byte ranges of a row to keep, merged) of a cut tensor."""
        dim, blocks, kept = self.cut
        rows = math.prod(self.shape[:dim])
        row = (self.end - self.begin) // rows
        width = row // blocks
        runs: list[tuple[int, int]] = []
        for i in kept:
            if runs and runs[-1][1] == i * width:
                runs[-1] = (runs[-1][0], (i + 1) * width)
            else:
                runs.append((i * width, (i + 1) * width))
        return rows, row, runs


@dataclass(frozen=True)
class _Shard:
    path: Path
    data_start: int  # 8 + header length: where the tensors' bytes begin
    tensors: list[_Tensor]  # in the order of their bytes
    metadata: dict[str, str] | None


def check_safetensors(path: str | os.PathLike) -> None:
    """Refuse a safetensors file that is not whole (its header cut, unreadable, or accounting for other than the file's
    bytes) with a ValueError naming the file and what is wrong; reads the header only."""
    _read_shard(Path(path))


def _read_shard(path: Path) -> _Shard:
    """The header of the safetensors file at ``path``, checked against the file's size."""
    size = path.stat().st_size
    damaged = f"the safetensors file {str(path)!r} is damaged"
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise ValueError(f"{damaged}: {size} bytes, shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise ValueError(f"{damaged}: its header length {length} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(file.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{damaged}: its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{damaged}: its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    tensors = []
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            tensors.append(_Tensor(name, str(entry["dtype"]), [int(d) for d in entry["shape"]], int(begin), int(end)))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{damaged}: the header entry of {name!r} is {entry!r}") from error
    tensors.sort(key=lambda t: (t.begin, t.end))
    position = 0
    for tensor in tensors:
        if tensor.begin != position or tensor.end < tensor.begin:
            raise ValueError(
                f"{damaged}: tensor {tensor.name!r} has data_offsets [{tensor.begin}, {tensor.end}], "
                f"but the previous tensor ends at {position}"
            )
        position = tensor.end
    if 8 + length + position != size:
        raise ValueError(f"{damaged}: its header accounts for {8 + length + position} bytes, the file has {size}")
    return _Shard(path, 8 + length, tensors, metadata)


def _weight_files(checkpoint: Path) -> tuple[list[_Shard], dict | None]:
    """The checkpoint's safetensors files, read and checked, and its index (None for one file).

    Like transformers, a ``model.safetensors`` is the model when there is one, else the index."""
    shown = f"checkpoint_dir={str(checkpoint)!r}"
    if (checkpoint / SINGLE_FILE).is_file():
        return [_read_shard(checkpoint / SINGLE_FILE)], None
    if not (checkpoint / INDEX_FILE).is_file():
        others = sorted(p.name for p in checkpoint.iterdir() if p.name.endswith((".bin", ".bin.index.json", ".pt", ".pth")))
        if others:
            raise ParameterError(
                "checkpoint_dir",
                f"{shown} holds PyTorch weights only ({', '.join(others)}); only safetensors checkpoints "
                "can be pruned on disk: load the model and save_pretrained it (safetensors is the default), "
                "or prune it in memory with prune_layers",
            )
        raise tagged(
            FileNotFoundError(f"{shown} has neither {SINGLE_FILE} nor {INDEX_FILE}; pass a directory written by save_pretrained"),
            "checkpoint_dir",
        )
    index_path = checkpoint / INDEX_FILE
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not a dict of file names")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"the index {str(index_path)!r} is not a safetensors index ({type(error).__name__}: {error})") from error
    shards = []
    for file_name in sorted(set(weight_map.values())):
        if Path(file_name).name != file_name:
            raise ParameterError(
                "checkpoint_dir",
                f"the index {str(index_path)!r} names the shard {file_name!r}, which is not a file name in {shown}",
            )
        if not (checkpoint / file_name).is_file():
            raise FileNotFoundError(
                f"the shard {file_name!r}, named in the weight_map of {str(index_path)!r}, is missing "
                f"from {shown}; the checkpoint is incomplete"
            )
        shard = _read_shard(checkpoint / file_name)
        listed = {name for name, f in weight_map.items() if f == file_name}
        held = {t.name for t in shard.tensors}
        if listed - held:
            raise ValueError(
                f"the index {str(index_path)!r} puts the tensor {sorted(listed - held)[0]!r} in {file_name!r}, "
                f"which does not hold it ({len(listed - held)} such tensors); the index disagrees with its shards"
            )
        if held - listed:
            raise ValueError(
                f"the shard {file_name!r} holds the tensor {sorted(held - listed)[0]!r}, which the index "
                f"{str(index_path)!r} does not put there ({len(held - listed)} such tensors); the index "
                "disagrees with its shards"
            )
        shards.append(shard)
    return shards, index


# --------------------------------------------------------------------------- the rewrite


@dataclass(frozen=True)
class _Rewrite:
    """Everything checked and decided: what `write` writes, and from where."""

    checkpoint: Path
    config: Any  # the pruned config
    shards: list[tuple[_Shard, str, list[tuple[_Tensor, str]]]]  # (input, output file name, [(tensor, new name)])
    index: dict | None
    copied: list[str]  # other files, copied as they are

    def write(self, directory: Path) -> None:
        self.config.save_pretrained(directory)
        buffer = bytearray(min(_COPY_BYTES, max((t.end - t.begin for s in self.shards for t, _ in s[2]), default=1)))
        for shard, file_name, tensors in self.shards:
            _write_shard(shard, directory / file_name, tensors, buffer)
        if self.index is not None:
            (directory / INDEX_FILE).write_text(json.dumps(self.index, indent=2, sort_keys=True) + "\n")
        for name in self.copied:
            shutil.copyfile(self.checkpoint / name, directory / name)


def _plan_rewrite(plan_or_blocks: Any, checkpoint: Path) -> _Rewrite:
    """Read and check the checkpoint and the request; decide every output file. Writes nothing."""
    from transformers import AutoConfig

    if not (checkpoint / "config.json").is_file():
        raise tagged(
            FileNotFoundError(
                f"checkpoint_dir={str(checkpoint)!r} has no config.json; pass a directory written by save_pretrained"
            ),
            "checkpoint_dir",
        )
    config = AutoConfig.from_pretrained(str(checkpoint))
    architecture = architecture_of(config)
    if architecture.generic:
        raise NotImplementedError(
            f"prune_checkpoint prunes only the families in the table of lorp_lightning/architectures.py, and "
            f"model_type={config.model_type!r} is not there: a family outside it is pruned by the generic path, which "
            "proves each pruning on the model's own logits, and a checkpoint on disk has no model in memory to prove it "
            "on. Load the model and prune it (prune_layers, or lorp prune), or add an Architecture entry for it to "
            "ARCHITECTURES in lorp_lightning/architectures.py"
        )
    shards, index = _weight_files(checkpoint)
    prefix, num_layers = _blocks_on_disk(shards, architecture, checkpoint, config)
    pruned, new_config = _pruned_config(config, architecture, plan_or_blocks, num_layers)
    kept = tuple(i for i in range(num_layers) if i not in set(pruned))
    new_index = {old: new for new, old in enumerate(kept)}

    kept_tensors = [
        [
            (_cut(t, architecture, num_layers, kept), new_name)
            for t in shard.tensors
            if (new_name := _renamed(t.name, prefix, new_index)) is not None
        ]
        for shard in shards
    ]
    kept_shards = [
        (shard, kept) for shard, kept in zip(shards, kept_tensors, strict=True) if kept
    ]  # a shard may hold removed blocks only
    names = _renumbered_shard_names([shard.path.name for shard, _ in kept_shards])
    planned = [(shard, name, kept) for (shard, kept), name in zip(kept_shards, names, strict=True)]
    if index is not None:
        tensors = [tensor for _, _, kept in planned for tensor, _ in kept]
        metadata = dict(index.get("metadata") or {})
        metadata["total_size"] = sum(t.written_bytes for t in tensors)
        if "total_parameters" in metadata:  # transformers writes model.num_parameters(): parameters, not buffers
            removed = [t for shard in shards for t in shard.tensors if _renamed(t.name, prefix, new_index) is None]
            buffers = _block_buffers(config, architecture, prefix)
            metadata["total_parameters"] = (
                int(metadata["total_parameters"])
                - sum(math.prod(t.shape) for t in removed if t.name.split(".", prefix.count(".") + 2)[-1] not in buffers)
                - sum(math.prod(t.shape) - math.prod(t.written_shape) for t in tensors)
            )
        weight_map = {new_name: name for _, name, kept in planned for _, new_name in kept}
        index = {**index, "metadata": metadata, "weight_map": weight_map}

    rewritten = {"config.json", INDEX_FILE if index is not None else SINGLE_FILE} | {shard.path.name for shard in shards}
    copied, left_out = [], []
    for path in sorted(checkpoint.iterdir()):
        if path.name in rewritten:
            continue
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES):
            copied.append(path.name)
        else:
            left_out.append(path.name + ("/" if path.is_dir() else ""))
    if left_out:
        warnings.warn(
            f"prune_checkpoint leaves out of the pruned checkpoint {', '.join(left_out)} from checkpoint_dir="
            f"{str(checkpoint)!r}: weights in another format and folders would describe the unpruned model",
            stacklevel=3,
        )
    return _Rewrite(checkpoint, new_config, planned, index, copied)


def _blocks_on_disk(shards: list[_Shard], architecture: Architecture, checkpoint: Path, config: Any) -> tuple[str, int]:
    """Under which name the checkpoint keeps its blocks, and how many there are (checked against the config)."""
    names = [t.name for shard in shards for t in shard.tensors]
    found = {}
    for path in (architecture.layers_path, *architecture.checkpoint_layers_paths):
        pattern = re.compile(re.escape(path) + r"\.(\d+)\.")
        indices = {int(m.group(1)) for m in map(pattern.match, names) if m}
        if indices:
            found[path] = indices
    shown = f"checkpoint_dir={str(checkpoint)!r}"
    where = f"the ARCHITECTURES entry for model_type={config.model_type!r} in lorp_lightning/architectures.py"
    if len(found) != 1:
        paths = " or ".join(repr(p) for p in (architecture.layers_path, *architecture.checkpoint_layers_paths))
        problem = "no tensor named" if not found else "tensors under both of"
        raise ParameterError(
            "checkpoint_dir",
            f"{shown} has {problem} {paths} followed by a block number; its tensors are named like "
            f"{names[0]!r}. If transformers names this model's blocks otherwise on disk, add the name "
            f"to checkpoint_layers_paths in {where}",
        )
    ((prefix, indices),) = found.items()
    num_layers = max(indices) + 1
    if sorted(indices) != list(range(num_layers)):
        missing = sorted(set(range(num_layers)) - indices)
        raise ParameterError(
            "checkpoint_dir",
            f"{shown} has no tensors of the blocks {missing} under {prefix!r}, but has tensors of block "
            f"{num_layers - 1}; the checkpoint is incomplete",
        )
    text_config = config.get_text_config(decoder=True)
    for name in architecture.depth_fields:
        depth = getattr(text_config, name, None)
        if depth is not None and depth != num_layers:
            raise ParameterError(
                "checkpoint_dir",
                f"{shown}: config.json says {name}={depth}, but the weights hold {num_layers} blocks under "
                f"{prefix!r}; the weights and the config are of different models",
            )
    return prefix, num_layers


def _block_buffers(config: Any, architecture: Architecture, prefix: str) -> set[str]:
    """The names, within a block, of the blocks' buffers (saved with the weights, as MiniMax's decay
    rates): what a checkpoint's tensors of a removed block hold that is not a parameter."""
    try:
        blocks = skeleton(config).get_submodule(architecture.layers_path)
    except Exception:  # noqa: BLE001 - a config that cannot be built on the meta device: count every tensor
        return set()
    return {name for block in blocks for name, _ in block.named_buffers()}


def _cut(tensor: _Tensor, architecture: Architecture, num_layers: int, kept: tuple[int, ...]) -> _Tensor:
    """``tensor``, marked to keep only the kept blocks' slices if it is one of the architecture's per-block tables."""
    for path, dim in architecture.per_block_slices:
        if tensor.name.endswith("." + path) and len(tensor.shape) > dim and tensor.shape[dim] % num_layers == 0:
            return replace(tensor, cut=(dim, num_layers, kept))
    return tensor


def _renamed(name: str, prefix: str, new_index: dict[int, int]) -> str | None:
    """The tensor's name in the pruned checkpoint, or None for a tensor of a removed block."""
    if not name.startswith(prefix + "."):
        return name
    number, dot, rest = name[len(prefix) + 1 :].partition(".")
    if not (dot and number.isdigit()):
        return name
    if int(number) not in new_index:
        return None
    return f"{prefix}.{new_index[int(number)]}.{rest}"


_SHARD_NAME = re.compile(r"(.+)-(\d+)-of-(\d+)\.safetensors")


def _renumbered_shard_names(names: list[str]) -> list[str]:
    """``names`` of the form ``model-00002-of-00005.safetensors``, numbered 1..len(names) in their
    order (a shard may have been dropped); other names as they are."""
    matches = [_SHARD_NAME.fullmatch(name) for name in names]
    if not names or not all(matches) or len({(m.group(1), len(m.group(2))) for m in matches}) != 1:
        return list(names)
    stem, width = matches[0].group(1), len(matches[0].group(2))
    return [f"{stem}-{i:0{width}d}-of-{len(names):0{width}d}.safetensors" for i in range(1, len(names) + 1)]


def _copy(source: Any, target: Any, shard: _Shard, tensor: _Tensor, start: int, length: int, view: memoryview) -> None:
    """Copy ``length`` bytes at ``start`` of ``source`` (``shard``'s file) to ``target``, in pieces of ``view``."""
    source.seek(start)
    while length:
        count = source.readinto(view[: min(length, len(view))])
        if not count:
            raise ValueError(f"the safetensors file {str(shard.path)!r} ended inside tensor {tensor.name!r}")
        target.write(view[:count])
        length -= count


def safetensors_header(entries: list[tuple[str, str, list[int], int]], metadata: dict | None = None) -> bytes:
    """The start of a safetensors file whose tensors follow in the order of ``entries`` (name, dtype, shape, bytes):
    the 8-byte little-endian header length, then the JSON header, padded with spaces as safetensors writes it, so
    that the tensors' bytes start 8-byte aligned."""
    header: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
    position = 0
    for name, dtype, shape, length in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, position + length]}
        position += length
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def _write_shard(shard: _Shard, path: Path, tensors: list[tuple[_Tensor, str]], buffer: bytearray) -> None:
    """Write the safetensors file ``path`` holding ``tensors`` (under their new names), copied from ``shard``."""
    entries = [(name, tensor.dtype, tensor.written_shape, tensor.written_bytes) for tensor, name in tensors]
    view = memoryview(buffer)
    with open(shard.path, "rb", buffering=0) as source, open(path, "wb") as target:
        target.write(safetensors_header(entries, shard.metadata))
        for tensor, _ in tensors:
            if tensor.cut is None:
                _copy(source, target, shard, tensor, shard.data_start + tensor.begin, tensor.end - tensor.begin, view)
                continue
            rows, row, runs = tensor.runs()
            if row > len(view):  # rows longer than the buffer: each kept range of each row in pieces
                for r in range(rows):
                    for a, b in runs:
                        _copy(source, target, shard, tensor, shard.data_start + tensor.begin + r * row + a, b - a, view)
                continue
            step = len(view) // row  # whole rows per read, the kept columns gathered
            for first in range(0, rows, step):
                count = min(step, rows - first)
                source.seek(shard.data_start + tensor.begin + first * row)
                if source.readinto(view[: count * row]) != count * row:
                    raise ValueError(f"the safetensors file {str(shard.path)!r} ended inside tensor {tensor.name!r}")
                block = np.frombuffer(view[: count * row], dtype=np.uint8).reshape(count, row)
                target.write(np.concatenate([block[:, a:b] for a, b in runs], axis=1).tobytes())

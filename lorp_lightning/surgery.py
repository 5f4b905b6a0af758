"""Depth pruning surgery: remove whole decoder blocks from a Hugging Face causal LM.

``prune_layers`` removes blocks, renumbers what carries a block index, fixes the config
(depth, per-block lists, block-index fields; the facts per architecture live in
``lorp_lightning.architectures``) and records what it did in ``config.lorp_pruning``, so
that the pruned model saves with ``save_pretrained`` and loads back with plain
``AutoModelForCausalLM.from_pretrained``.

``pruned_config`` is the config half of that on its own, with no model: the one rule for
what a config says after pruning, which ``prune_layers`` and
``lorp_lightning.checkpoint.prune_checkpoint`` (pruning a checkpoint on disk) both follow.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from lorp_lightning._validation import is_integer
from lorp_lightning.architectures import Architecture, architecture_of, decoder_layers

__all__ = [
    "RECORD_ATTRIBUTE",
    "SavedStack",
    "prune_layers",
    "pruned_config",
    "pruning_record",
    "removed_blocks",
    "save_stack",
    "temporarily_pruned",
    "temporarily_restored",
]

RECORD_ATTRIBUTE = "lorp_pruning"
"""Name of the config attribute that records the pruning (a JSON-able dict, saved in config.json)."""


def prune_layers(model: nn.Module, plan_or_blocks: Any, inplace: bool = True) -> nn.Module:
    """Remove decoder blocks from ``model`` and return the pruned model.

    Args:
        model: a Hugging Face causal LM whose ``model_type`` is in
            ``ARCHITECTURES``.
        plan_or_blocks: the indices of the blocks to remove (a list or tuple of ints, in the
            model's current numbering), or a ``PruningPlan`` computed on this model (its
            ``pruned`` blocks are removed; its method, RLS and K are recorded).
        inplace: change ``model`` itself (True) or a deep copy of it, leaving ``model`` as it was.

    The kept blocks stay in order, as the same module objects; every ``layer_idx`` below them
    is renumbered 0..M-1; the config's depth and per-block lists follow; and
    ``config.lorp_pruning`` records the original depth and the removed blocks in the original
    numbering (pruning again composes the record). Everything is checked before anything
    changes: on an error the model is left as it was.

    Raises:
        ValueError: bad ``plan_or_blocks``, a plan computed for another depth, or a model that
            cannot be pruned correctly (offloaded weights, settings that tie a block to its index).
        TypeError: ``plan_or_blocks`` is neither a list/tuple nor a plan.
        NotImplementedError: an architecture missing from the table, or whose entry does not
            make the pruned config valid.
    """
    architecture = architecture_of(model)
    layers = decoder_layers(model)
    num_layers = len(layers)
    pruned, new_config = _pruned_config(model.config, architecture, plan_or_blocks, num_layers)
    _refuse_offload(model)
    kept = [i for i in range(num_layers) if i not in set(pruned)]

    if not inplace:
        model = copy.deepcopy(model)
        layers = decoder_layers(model)
    configs_to_edit = _decoder_configs(model, architecture)
    for index in reversed(pruned):
        del layers[index]  # nn.ModuleList renumbers its keys, so state_dict names follow
    for new_index, block in enumerate(layers):
        for module in block.modules():
            if is_integer(getattr(module, "layer_idx", None)):
                module.layer_idx = new_index
    for config in configs_to_edit:  # the model keeps its config objects: the edit new_config was checked with
        _edit_config(config, architecture, kept)
    setattr(model.config, RECORD_ATTRIBUTE, getattr(new_config, RECORD_ATTRIBUTE))
    _renumber_device_map(model, architecture, kept)
    return model


def pruned_config(config: Any, plan_or_blocks: Any) -> Any:
    """A copy of ``config`` that describes the model with the blocks of ``plan_or_blocks`` removed.

    No model is needed: this is the config half of ``prune_layers``, by the same rule (the
    depth, the per-block lists and the block-index fields named in
    ``ARCHITECTURES``, and the ``lorp_pruning`` record,
    composed with an earlier one), and checked the same way: the copy passes what
    ``save_pretrained`` validates and survives a JSON round trip. ``config`` is left as it was.

        config = AutoConfig.from_pretrained("path/to/model")
        pruned_config(config, [4, 5]).num_hidden_layers  # two fewer

    Args:
        config: the config of a Hugging Face causal LM (the top-level config of a multimodal
            model) whose ``model_type`` is in the table.
        plan_or_blocks: as for ``prune_layers``: block indices in the current numbering,
            or a ``PruningPlan`` computed for a model of the depth this config gives.

    Raises:
        ValueError, TypeError, NotImplementedError: as ``prune_layers``, for bad blocks, a
            plan for another depth, settings that tie a block to its index, and an architecture
            missing from the table or whose entry does not make the pruned config valid.
    """
    architecture = architecture_of(config)
    return _pruned_config(config, architecture, plan_or_blocks, _depth(config, architecture))[1]


@contextmanager
def temporarily_pruned(model: nn.Module, blocks: Any) -> Iterator[nn.Module]:
    """Inside the ``with`` block, ``model`` is pruned of ``blocks`` (in place, by
    ``prune_layers``); on leaving it, the model is exactly as it was.

    This is how a candidate plan is tried on the real model without copying its weights: the
    removed blocks are kept aside, and on exit the block list, every ``layer_idx``, the config
    fields pruning edits, the pruning record and the device map are put back.

        with temporarily_pruned(model, [4, 5]) as pruned:
            loss = pruned(input_ids, labels=input_ids).loss
    """
    saved = save_stack(model)
    prune_layers(model, list(blocks), inplace=True)  # validates first: on an error nothing changed
    try:
        yield model
    finally:
        _put_back(model, saved)


@dataclass(frozen=True, eq=False)
class SavedStack:
    """A model's decoder stack as ``save_stack`` found it: references to its blocks (not
    copies), each block's ``layer_idx``, the config fields pruning edits, the pruning record and
    the device map. Holding one keeps the blocks alive after pruning removes them from the
    model; nothing else is held."""

    blocks: tuple[nn.Module, ...]
    layer_indices: tuple[tuple[nn.Module, int], ...]
    fields: tuple[tuple[Any, dict], ...]
    record: Any
    device_map: Any

    @property
    def num_layers(self) -> int:
        return len(self.blocks)


_MISSING = object()


def save_stack(model: nn.Module) -> SavedStack:
    """The decoder stack of ``model`` as it is now, to put back later with ``temporarily_restored``.

    No weights are copied: the saved stack refers to the model's own blocks. Saved before
    ``prune_layers`` removes blocks in place, it keeps the removed blocks aside (alive, where
    they were), which is how a pruned model can run as the dense one again without a second
    copy of it in memory:

        saved = save_stack(model)
        prune_layers(model, [4, 5])
        with temporarily_restored(model, saved):
            dense_logits = model(input_ids).logits   # the 2 blocks are back, for this call only
    """
    architecture = architecture_of(model)
    blocks = tuple(decoder_layers(model))
    layer_indices = tuple((module, module.layer_idx) for block in blocks for module in block.modules()
                          if is_integer(getattr(module, "layer_idx", None)))
    fields = _edited_fields(architecture)
    saved_fields = tuple((config, {name: copy.copy(vars(config)[name]) for name in fields if name in vars(config)})
                         for config in _decoder_configs(model, architecture))
    record = getattr(model.config, RECORD_ATTRIBUTE, _MISSING)
    device_map = getattr(model, "hf_device_map", _MISSING)
    return SavedStack(blocks, layer_indices, saved_fields, record if record is _MISSING else copy.deepcopy(record),
                      device_map if device_map is _MISSING else copy.copy(device_map))


@contextmanager
def temporarily_restored(model: nn.Module, saved: SavedStack) -> Iterator[nn.Module]:
    """Inside the ``with`` block, ``model`` has the decoder stack of ``saved`` (the blocks pruned
    since ``save_stack`` put back, the config and record as they were); on leaving it, the
    model is exactly as it was. The reverse of ``temporarily_pruned``.

    The kept blocks are the model's own, with whatever happened to them since (adapters
    injected into them, for one): only the list of blocks and what pruning edits change.

    Raises:
        ValueError: ``model`` is not ``saved``'s model with blocks removed (a block of the model
            is not among the saved ones, or the order differs); the model is left as it was.
    """
    removed_blocks(model, saved)  # checks
    current = save_stack(model)
    _put_back(model, saved)
    try:
        yield model
    finally:
        _put_back(model, current)


def removed_blocks(model: nn.Module, saved: SavedStack) -> list[nn.Module]:
    """The blocks of ``saved`` that ``model`` no longer has, in their original order.

    Raises:
        TypeError: ``saved`` is not a ``SavedStack``.
        ValueError: ``model`` is not ``saved``'s model with blocks removed (a block of the model
            is not among the saved ones, or the order differs).
    """
    if not isinstance(saved, SavedStack):
        raise TypeError(f"saved must be a SavedStack from save_stack(model), got {type(saved).__name__}")
    current = list(decoder_layers(model))
    position = {id(block): i for i, block in enumerate(saved.blocks)}
    where = [position.get(id(block)) for block in current]
    if None in where or where != sorted(where):
        raise ValueError(
            f"the model's {len(current)} blocks are not the saved stack's {saved.num_layers} blocks with some removed "
            "(a block was replaced, or the order changed, since save_stack); save the stack of this model"
        )
    kept = set(where)
    return [block for i, block in enumerate(saved.blocks) if i not in kept]


def _edited_fields(architecture: Architecture) -> tuple[str, ...]:
    """The config fields pruning edits."""
    return architecture.depth_fields + architecture.per_layer_fields + architecture.block_index_fields + architecture.block_count_fields


def _put_back(model: nn.Module, saved: SavedStack) -> None:
    """Make ``model``'s block list, ``layer_idx`` values, edited config fields, record and device map those of ``saved``."""
    layers = decoder_layers(model)
    while len(layers):
        del layers[len(layers) - 1]
    layers.extend(saved.blocks)
    for module, index in saved.layer_indices:
        module.layer_idx = index
    for config, values in saved.fields:
        for name, value in values.items():
            setattr(config, name, copy.copy(value))
    if saved.record is _MISSING:
        if RECORD_ATTRIBUTE in vars(model.config):
            delattr(model.config, RECORD_ATTRIBUTE)
    else:
        setattr(model.config, RECORD_ATTRIBUTE, copy.deepcopy(saved.record))
    if saved.device_map is not _MISSING:
        model.hf_device_map = copy.copy(saved.device_map)


def pruning_record(model_or_config: Any) -> dict | None:
    """The ``lorp_pruning`` record of a model or config, or None for one never pruned."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, RECORD_ATTRIBUTE, None)


# --------------------------------------------------------------------------- input


def _read_request(plan_or_blocks: Any, num_layers: int) -> tuple[list[int], dict]:
    """The sorted blocks to remove, and the step's method/rls/num_clusters for the record."""
    if hasattr(plan_or_blocks, "pruned"):
        plan = plan_or_blocks
        if plan.num_layers != num_layers:
            raise ValueError(
                f"the plan was computed for a model with plan.num_layers={plan.num_layers!r} blocks, but this "
                f"model has {num_layers}; compute a plan on this model (block numbers of a plan only hold for "
                "the model it was computed on)"
            )
        pruned = _checked_blocks(plan.pruned, num_layers, "plan.pruned")
        step = {
            "method": None if plan.method is None else str(plan.method),
            "rls": None if plan.rls is None else float(plan.rls),
            "num_clusters": None if plan.num_clusters is None else int(plan.num_clusters),
        }
        return pruned, step
    if isinstance(plan_or_blocks, (list, tuple)):
        return _checked_blocks(plan_or_blocks, num_layers, "plan_or_blocks"), {"method": None, "rls": None, "num_clusters": None}
    raise TypeError(
        f"plan_or_blocks must be a list or tuple of block indices or a PruningPlan, got "
        f"{type(plan_or_blocks).__name__} {plan_or_blocks!r}; pass e.g. [3, 7] or the plan from lorp_lightning.selection"
    )


def _checked_blocks(blocks: Any, num_layers: int, name: str) -> list[int]:
    """``blocks`` as a sorted list of ints after checking each is a distinct index < ``num_layers``."""
    valid = f"pass distinct integer indices in 0..{num_layers - 1}"
    if not isinstance(blocks, (list, tuple)):
        raise ValueError(f"{name} must be a list of block indices, got {blocks!r}; {valid}")
    if not blocks:
        raise ValueError(f"{name}={blocks!r} is empty: there is nothing to remove; {valid}")
    seen: set[int] = set()
    for value in blocks:
        if not is_integer(value):
            raise ValueError(
                f"{name}={blocks!r} holds {value!r} ({type(value).__name__}), which is not an integer block index; {valid}"
            )
        if value < 0:
            raise ValueError(
                f"{name}={blocks!r} holds the negative index {value}; negative indices are not accepted, {valid}"
            )
        if value >= num_layers:
            raise ValueError(f"{name}={blocks!r} holds {value}, out of range for a model of {num_layers} blocks; {valid}")
        if int(value) in seen:
            raise ValueError(f"{name}={blocks!r} holds block {value} more than once; {valid}")
        seen.add(int(value))
    if len(seen) == num_layers:
        raise ValueError(f"{name}={blocks!r} removes all {num_layers} blocks of the model; keep at least one")
    return sorted(seen)



# --------------------------------------------------------------------------- refusals


def _refuse_what_cannot_be_made_right(config: Any, architecture: Architecture, num_layers: int) -> None:
    """Raise for a config of ``num_layers`` blocks whose pruning cannot be made right; return silently otherwise."""
    model_type = config.model_type
    text_config = config.get_text_config(decoder=True)
    if getattr(text_config, "is_heterogeneous", False):
        raise ValueError(
            f"cannot prune this {model_type} model: its config has a heterogeneous per_layer_config (per-block "
            "overrides keyed by block index), which lorp_lightning does not renumber; use a homogeneous config"
        )
    for name, required in architecture.required_settings:
        value = getattr(text_config, name, required)
        if value != required:
            raise ValueError(
                f"cannot prune this {model_type} model: its config has {name}={value!r}, which makes what a block "
                f"computes depend on its absolute index in the stack, so removing blocks would change the kept "
                f"ones (at once or after save and reload). Only models with {name}={required!r} can be pruned"
            )
    for name in architecture.depth_fields:
        depth = getattr(text_config, name, None)
        if depth is not None and depth != num_layers:
            raise ValueError(
                f"the model's config says {name}={depth} but the model has {num_layers} decoder blocks at "
                f"{architecture.layers_path}; the model was changed without its config, prune an unchanged model"
            )
    for name in architecture.per_layer_fields:
        values = vars(text_config).get(name)
        if values is not None and len(values) != num_layers:
            raise ValueError(
                f"the model's config.{name} has {len(values)} entries but the model has {num_layers} blocks; "
                "the config is inconsistent with the model, prune an unchanged model"
            )


def _refuse_offload(model: nn.Module) -> None:
    """Raise for a model whose weights accelerate offloads; return silently otherwise."""
    offload = _offload_in(model)
    if offload:
        raise ValueError(
            f"cannot prune a model whose weights accelerate offloads ({offload}): its hooks and weight maps are "
            "keyed by block names that pruning changes. Load the model onto one device (no device_map offload), "
            "prune it, then dispatch it again"
        )


def _offload_in(model: nn.Module) -> str:
    """What shows that accelerate offloads some of ``model``'s weights, or '' when nothing does."""
    devices = {str(device) for device in (getattr(model, "hf_device_map", None) or {}).values()}
    if "disk" in devices or (len(devices) > 1 and "cpu" in devices):
        return f"hf_device_map spreads it over {sorted(devices)}"
    for name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if any(getattr(h, "offload", False) for h in getattr(hook, "hooks", [hook])):
            return f"module {name or '(the model)'!r} has an offload hook"
    return ""


# --------------------------------------------------------------------------- config


def _pruned_config(config: Any, architecture: Architecture, plan_or_blocks: Any, num_layers: int) -> tuple[list[int], Any]:
    """The blocks to remove (current numbering, ascending) and the checked pruned copy of ``config``,
    for a model of ``num_layers`` blocks; raises before returning anything for what cannot be pruned."""
    pruned, step = _read_request(plan_or_blocks, num_layers)
    _refuse_what_cannot_be_made_right(config, architecture, num_layers)
    kept = [i for i in range(num_layers) if i not in set(pruned)]
    record = _composed_record(config, num_layers, pruned, step)
    return pruned, _checked_pruned_config(config, architecture, kept, record)


def _depth(config: Any, architecture: Architecture) -> int:
    """The number of blocks ``config`` describes (its first depth field that is set)."""
    text_config = config.get_text_config(decoder=True)
    for name in architecture.depth_fields:
        depth = getattr(text_config, name, None)
        if depth is not None:
            return int(depth)
    raise NotImplementedError(
        f"the config of model_type={config.model_type!r} has none of the depth fields {architecture.depth_fields} "
        "that its ARCHITECTURES entry in lorp_lightning/architectures.py names"
    )


def _decoder_configs(model: nn.Module, architecture: Architecture) -> list:
    """The distinct config objects that describe the decoder stack (usually just one)."""
    configs = [model.config.get_text_config(decoder=True)]
    owner = model.get_submodule(architecture.layers_path.rpartition(".")[0])  # the module holding the blocks
    owner_config = getattr(owner, "config", None)
    if owner_config is not None and owner_config is not configs[0]:
        configs.append(owner_config)
    return configs


def _edit_config(config: Any, architecture: Architecture, kept: list[int]) -> None:
    """Make ``config`` describe the stack of the ``kept`` blocks (original indices, ascending)."""
    for name in architecture.depth_fields:
        if hasattr(config, name):
            setattr(config, name, len(kept))
    for name in architecture.per_layer_fields:
        values = vars(config).get(name)
        if values is not None:
            setattr(config, name, [values[i] for i in kept])
    new_index = {old: new for new, old in enumerate(kept)}
    for name in architecture.block_index_fields:
        values = vars(config).get(name)
        if values is not None:
            setattr(config, name, [new_index[i] for i in values if i in new_index])
    for name in architecture.block_count_fields:
        count = vars(config).get(name)
        if count is not None:
            setattr(config, name, sum(1 for i in kept if i < count))


def _checked_pruned_config(config: Any, architecture: Architecture, kept: list[int], record: dict) -> Any:
    """Edit a copy of ``config``, run what save_pretrained checks, round-trip it through JSON; return the copy."""
    config = copy.deepcopy(config)
    text_config = config.get_text_config(decoder=True)
    _edit_config(text_config, architecture, kept)
    setattr(config, RECORD_ATTRIBUTE, record)
    where = f"the ARCHITECTURES entry for model_type={config.model_type!r} in lorp_lightning/architectures.py"
    try:
        for c in {id(c): c for c in (config, text_config)}.values():
            if hasattr(c, "validate"):
                c.validate()  # what save_pretrained runs before it writes config.json
        reloaded = type(config).from_dict(json.loads(config.to_json_string(use_diff=True)))
    except Exception as error:
        raise NotImplementedError(
            f"pruning blocks {record['steps'][-1]['pruned_layers']} (original numbering) would leave an invalid "
            f"config ({type(error).__name__}: {error}); {where} probably misses a per-block or block-index field"
        ) from error
    reloaded_text = reloaded.get_text_config(decoder=True)
    for name in _edited_fields(architecture):
        if getattr(reloaded_text, name, None) != getattr(text_config, name, None):
            raise NotImplementedError(
                f"after pruning, config.{name}={getattr(text_config, name, None)!r} does not survive saving and "
                f"loading (it comes back as {getattr(reloaded_text, name, None)!r}); see {where}"
            )
    if getattr(reloaded, RECORD_ATTRIBUTE, None) != record:
        raise NotImplementedError(f"config.{RECORD_ATTRIBUTE} does not survive saving and loading with this transformers version")
    return config


# --------------------------------------------------------------------------- record


def _composed_record(config: Any, num_layers: int, pruned: list[int], step: dict) -> dict:
    """The ``lorp_pruning`` record after removing ``pruned`` (current numbering) from the model."""
    previous = getattr(config, RECORD_ATTRIBUTE, None)
    if previous is None:
        original_num_layers, already_pruned, steps = num_layers, [], []
    else:
        try:
            original_num_layers = int(previous["original_num_layers"])
            already_pruned = [int(i) for i in previous["pruned_layers"]]
            steps = copy.deepcopy(list(previous["steps"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"config.{RECORD_ATTRIBUTE}={previous!r} is not a pruning record written by lorp_lightning; "
                f"delete the attribute if the model was pruned by other means"
            ) from error
    original_index = [i for i in range(original_num_layers) if i not in set(already_pruned)]
    if len(original_index) != num_layers:
        raise ValueError(
            f"config.{RECORD_ATTRIBUTE} says {original_num_layers} - {len(already_pruned)} = {len(original_index)} "
            f"blocks remain, but the model has {num_layers}; the record is stale (the model was changed by other "
            f"means): delete config.{RECORD_ATTRIBUTE} or prune an unchanged model"
        )
    step_pruned = [original_index[i] for i in pruned]
    return {
        "original_num_layers": original_num_layers,
        "pruned_layers": sorted(already_pruned + step_pruned),
        "steps": steps + [{"method": step["method"], "pruned_layers": step_pruned, "rls": step["rls"], "num_clusters": step["num_clusters"]}],
    }


# --------------------------------------------------------------------------- device map


def _renumber_device_map(model: nn.Module, architecture: Architecture, kept: list[int]) -> None:
    """Rename the block entries of accelerate's ``hf_device_map`` to the new numbering."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return
    prefix = architecture.layers_path + "."
    new_index = {old: new for new, old in enumerate(kept)}
    renamed = {}
    for key, device in device_map.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if index.isdigit():
                if int(index) not in new_index:
                    continue
                key = prefix + str(new_index[int(index)]) + ("." + rest if rest else "")
        renamed[key] = device
    model.hf_device_map = renamed

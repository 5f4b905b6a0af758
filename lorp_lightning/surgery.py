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
import functools
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lorp_lightning import compensation
from lorp_lightning._validation import ParameterError, is_integer
from lorp_lightning.architectures import Architecture, architecture_of, decoder_layers, skeleton

__all__ = [
    "RECORD_ATTRIBUTE",
    "PlanRefusedError",
    "SavedStack",
    "prune_layers",
    "pruned_config",
    "pruning_record",
    "removed_blocks",
    "save_stack",
    "temporarily_pruned",
    "temporarily_restored",
]


class PlanRefusedError(ValueError):
    """The model's family cannot take this plan exactly (a kept block would change, or would not
    reload as it is); the model is unchanged. Another plan of the same model may be fine, so a
    search skips the plan (``lorp_lightning.search.PlanLoss`` gives it an infinite loss)."""


RECORD_ATTRIBUTE = "lorp_pruning"
"""Name of the config attribute that records the pruning (a JSON-able dict, saved in config.json)."""


def prune_layers(
    model: nn.Module, plan_or_blocks: Any, inplace: bool = True, compensate: Mapping[int, float] | None = None
) -> nn.Module:
    """Remove decoder blocks from ``model`` and return the pruned model.

    Args:
        model: a Hugging Face causal LM. A family in ``ARCHITECTURES`` is pruned by its entry; any
            other by the generic path, which finds the blocks by shape and proves the pruning on
            the spot: on a random input of ``PROOF_LENGTH`` tokens the pruned model's logits must
            equal the dense model's with the removed blocks skipped, and where the dense model
            generates the same with its KV cache as without, so must the pruned one.
        plan_or_blocks: the indices of the blocks to remove (a list or tuple of ints, in the
            model's current numbering), or a ``PruningPlan`` computed on this model (its
            ``pruned`` blocks are removed; its method, RLS and K are recorded).
        inplace: change ``model`` itself (True) or a deep copy of it, leaving ``model`` as it was.
        compensate: None, or the factor of the stream at each gap, by the kept block right after
            the gap (current numbering): ``{b: c}`` gives the logits of the pruned model with the
            stream entering block b multiplied by c, folded into the weights (what every block from
            b on writes into the stream is divided by c; ``lorp_lightning.compensation``, whose
            ``gap_factors`` computes them from the statistics). The record lists the factors.
            Default: a plan's own ``compensation`` (``select_layers(..., compensate=True)``), if any.

    The kept blocks stay in order, as the same module objects; every ``layer_idx`` below them
    is renumbered 0..M-1; the config's depth and per-block lists follow; and
    ``config.lorp_pruning`` records the original depth and the removed blocks in the original
    numbering (pruning again composes the record). Everything is checked before anything
    changes: on an error the model is left as it was.

    Raises:
        ValueError: bad ``plan_or_blocks``, a plan computed for another depth, or a model that
            cannot be pruned correctly (offloaded weights, settings that tie a block to its index);
            ``compensate`` with a key that is not the block after a gap, a factor that is not finite
            and positive, or for a family where no fold is exact (named in the message).
        PlanRefusedError: (a ValueError) a plan this model's family cannot take exactly: a kept
            block would change (Jamba's period), read a removed block's keys and values (Gemma 4's
            shared blocks), or not reload as it is; or every attention block of a hybrid; or a
            generic pruning whose proof fails. Another plan may be fine.
        TypeError: ``plan_or_blocks`` is neither a list/tuple nor a plan.
        NotImplementedError: what is not a decoder-only causal LM (an encoder-decoder, no config),
            a model whose blocks the generic path cannot find (``BlocksNotFoundError``) or run, or
            a table entry that does not make the pruned config valid.
    """
    return _prune(model, plan_or_blocks, inplace, check_cache=True, compensate=compensate)


def _prune(
    model: nn.Module, plan_or_blocks: Any, inplace: bool, check_cache: bool, compensate: Mapping[int, float] | None = None
) -> nn.Module:
    """``prune_layers``; ``check_cache``: a generic pruning is proven with the KV cache too (a
    trial inside ``temporarily_pruned`` runs without the cache, and skips that part)."""
    compensate = _requested_compensation(plan_or_blocks, compensate)
    if compensate is not None:
        compensation.check_compensable(model)  # the family first: a generic one is refused here
    architecture = architecture_of(model)
    layers = decoder_layers(model)
    num_layers = len(layers)
    pruned, new_config = _pruned_config(model.config, architecture, plan_or_blocks, num_layers, compensate)
    _refuse_offload(model)
    if architecture.generic:  # not in the table: proven on the spot, or refused with the model as it was
        return _proven(model, architecture, pruned, new_config, inplace, check_cache)
    kept = [i for i in range(num_layers) if i not in set(pruned)]
    if compensate is not None:
        factors = compensation.check_factors(compensate, pruned, num_layers)
        scales = compensation.writer_scales(kept, factors)
        compensation.check_writers(model, architecture, [b for b, s in zip(kept, scales, strict=True) if s != 1.0])
    result = _pruned_in_place(model if inplace else copy.deepcopy(model), architecture, pruned, new_config)
    if compensate is not None:
        compensation.fold(decoder_layers(result), architecture, scales)
    return result


def _pruned_in_place(model: nn.Module, architecture: Architecture, pruned: list[int], new_config: Any) -> nn.Module:
    """Remove the checked blocks ``pruned`` from ``model`` itself; ``new_config`` is the checked pruned config."""
    layers = decoder_layers(model)
    num_layers = len(layers)
    kept = [i for i in range(num_layers) if i not in set(pruned)]
    configs_to_edit = _decoder_configs(model, architecture)
    for index in reversed(pruned):
        del layers[index]  # nn.ModuleList renumbers its keys, so state_dict names follow
    for new_index, block in enumerate(layers):
        for module in block.modules():
            if is_integer(getattr(module, "layer_idx", None)):
                module.layer_idx = new_index
    for module, name, dim in _sliced(model, architecture):
        parameter = getattr(module, name)
        width = parameter.shape[dim] // num_layers
        index = torch.cat([torch.arange(i * width, (i + 1) * width) for i in kept]).to(parameter.device)
        _set_parameter(
            module, name, nn.Parameter(parameter.detach().index_select(dim, index), requires_grad=parameter.requires_grad)
        )
    for config in configs_to_edit:  # the model keeps its config objects: the edit new_config was checked with
        _edit_config(config, architecture, kept, num_layers)
    setattr(model.config, RECORD_ATTRIBUTE, getattr(new_config, RECORD_ATTRIBUTE))
    _renumber_device_map(model, architecture, kept)
    return model


# --------------------------------------------------------------------------- the generic path

PROOF_LENGTH = 32
"""Tokens of the random input on which a pruning by the generic path is proven."""


@torch.no_grad()
def _proven(
    model: nn.Module, architecture: Architecture, pruned: list[int], new_config: Any, inplace: bool, check_cache: bool
) -> nn.Module:
    """Prune a model of a family not in the table, and prove it on the spot: on a short random
    input, the pruned model's logits must equal the dense model's with the ``pruned`` blocks
    skipped (each hands its input on unchanged), and (``check_cache``) where the dense model
    generates the same with its KV cache as without, so must the pruned one. Otherwise raise,
    with the model as it was."""
    ids = _proof_ids(model)
    was_training = model.training
    model.eval()
    try:
        dense_cache_agrees = check_cache and _cache_agrees(model, ids)
        expected = _logits(model, ids, skipped=pruned)
    except Exception as error:
        raise NotImplementedError(
            f"cannot prove a pruning of this {model.config.model_type} model, a family not in the table of "
            f"lorp_lightning/architectures.py: its forward pass on input ids alone, with blocks skipped, raised "
            f"{type(error).__name__}: {error}. The model is unchanged; to support the family, add an Architecture entry for it"
        ) from error
    finally:
        model.train(was_training)
    target = model if inplace else copy.deepcopy(model)  # a copy keeps the paths the architecture names
    saved = save_stack(target)
    _pruned_in_place(target, architecture, pruned, new_config)
    target.eval()
    try:
        try:
            got = _logits(target, ids)
        except Exception as error:
            raise NotImplementedError(
                f"cannot prune blocks {pruned} of this {model.config.model_type} model, a family not in the table of "
                f"lorp_lightning/architectures.py: by the generic path (blocks at {architecture.layers_path}), the pruned "
                f"model's forward pass raised {type(error).__name__}: {error}. The model is unchanged; to support the "
                "family, add an Architecture entry for it"
            ) from error
        difference = (got - expected).abs().max().item()
        # the kept blocks compute the same thing on the same input either way: any difference is the family's
        low_precision = next(target.parameters()).dtype != torch.float32
        tolerance = (1e-3 if low_precision else 1e-5) * (1.0 + expected.abs().max().item())
        if not difference <= tolerance:  # a NaN fails too
            raise PlanRefusedError(
                f"cannot prune blocks {pruned} of this {model.config.model_type} model, a family not in the table of "
                f"lorp_lightning/architectures.py: by the generic path (blocks at {architecture.layers_path}, per-block "
                f"config lists trimmed) its logits differ from the dense model's with those blocks skipped by up to "
                f"{difference:.3g} on a random input of {ids.shape[1]} tokens, so something in this family depends on a "
                "block's position. The model is unchanged; to support the family, add an Architecture entry for it"
            )
        if dense_cache_agrees and not _cache_agrees(target, ids):
            raise PlanRefusedError(
                f"cannot prune blocks {pruned} of this {model.config.model_type} model, a family not in the table of "
                "lorp_lightning/architectures.py: by the generic path its logits are right, but generating with the KV "
                "cache no longer gives what generating without it gives (the dense model's do), so the cache is tied to "
                "the block positions. The model is unchanged; to support the family, add an Architecture entry for it"
            )
    except BaseException:
        _put_back(target, saved)
        raise
    finally:
        target.train(was_training)
    return target


def _cache_agrees(model: nn.Module, ids: torch.Tensor) -> bool:
    """Whether greedy generation of a few tokens after ``ids`` gives the same logits with the KV
    cache as without it (False also when the model cannot generate)."""
    pad = getattr(model.generation_config, "pad_token_id", None)
    settings = dict(
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=3,
        min_new_tokens=3,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=0 if pad is None else pad,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = [model.generate(ids, use_cache=use_cache, **settings) for use_cache in (True, False)]
    except Exception:  # noqa: BLE001 - a model that cannot generate has no cache to prove
        return False
    cached, plain = (torch.stack(run.logits).float() for run in runs)
    return torch.equal(runs[0].sequences, runs[1].sequences) and torch.allclose(cached, plain, rtol=1e-3, atol=1e-3)


def _proof_ids(model: nn.Module) -> torch.Tensor:
    """A fixed random input of ``PROOF_LENGTH`` tokens that avoids the config's special tokens (an
    image token would ask for pixels)."""
    config = model.config
    vocab = config.get_text_config(decoder=True).vocab_size
    special = {
        value
        for c in (config, config.get_text_config(decoder=True))
        for name, value in vars(c).items()
        if name.endswith(("_token_id", "_token_index", "_token_ids")) and isinstance(value, int)
    }
    allowed = torch.tensor([i for i in range(min(vocab, 4096)) if i not in special])
    generator = torch.Generator().manual_seed(0)
    longest = getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)
    length = min(PROOF_LENGTH, longest) if isinstance(longest, int) and longest > 1 else PROOF_LENGTH
    picks = allowed[torch.randint(len(allowed), (1, length), generator=generator)]
    return picks.to(next(model.parameters()).device)


def _logits(model: nn.Module, ids: torch.Tensor, skipped: Sequence[int] = ()) -> torch.Tensor:
    """The float32 logits of ``model`` on ``ids``, with the ``skipped`` blocks handing their input on unchanged."""

    def skip(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])

    layers = decoder_layers(model)
    handles = [layers[i].register_forward_hook(skip, with_kwargs=True) for i in skipped]
    try:
        return model(input_ids=ids, use_cache=False).logits.float()
    finally:
        for handle in handles:
            handle.remove()


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
    compensate = _requested_compensation(plan_or_blocks, None)
    return _pruned_config(config, architecture, plan_or_blocks, _depth(config, architecture), compensate)[1]


def _requested_compensation(plan_or_blocks: Any, compensate: Mapping[int, float] | None) -> Mapping[int, float] | None:
    """The factors asked for: ``compensate``, else those of a plan chosen with compensation, else None."""
    if compensate is None and getattr(plan_or_blocks, "compensation", None) is not None:
        return plan_or_blocks.factors
    return compensate


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
    _prune(model, list(blocks), inplace=True, check_cache=False)  # validates first: on an error nothing changed
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
    slices: tuple[tuple[nn.Module, str, nn.Parameter], ...] = ()  # (module, name, the parameter) of per_block_slices

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
    layer_indices = tuple(
        (module, module.layer_idx)
        for block in blocks
        for module in block.modules()
        if is_integer(getattr(module, "layer_idx", None))
    )
    fields = _edited_fields(architecture)
    saved_fields = tuple(
        (config, {name: copy.copy(vars(config)[name]) for name in fields if name in vars(config)})
        for config in _decoder_configs(model, architecture)
    )
    record = getattr(model.config, RECORD_ATTRIBUTE, _MISSING)
    device_map = getattr(model, "hf_device_map", _MISSING)
    slices = tuple((module, name, getattr(module, name)) for module, name, _ in _sliced(model, architecture))
    return SavedStack(
        blocks,
        layer_indices,
        saved_fields,
        record if record is _MISSING else copy.deepcopy(record),
        device_map if device_map is _MISSING else copy.copy(device_map),
        slices,
    )


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


def _sliced(model: nn.Module, architecture: Architecture) -> list[tuple[nn.Module, str, int]]:
    """(module, parameter name, dim) of each of the architecture's per-block slices the model has."""
    owner = model.get_submodule(architecture.layers_path.rpartition(".")[0])
    found = []
    for path, dim in architecture.per_block_slices:
        module_path, _, name = path.rpartition(".")
        try:
            module = owner.get_submodule(module_path) if module_path else owner
        except AttributeError:  # this model has no such table (Gemma 4's larger models)
            continue
        if isinstance(getattr(module, name, None), nn.Parameter):
            found.append((module, name, dim))
    return found


def _set_parameter(module: nn.Module, name: str, parameter: nn.Parameter) -> None:
    """Put ``parameter`` in ``module``, and the sizes an Embedding or a Linear keeps beside its weight."""
    setattr(module, name, parameter)
    if name == "weight" and isinstance(module, nn.Embedding):
        module.embedding_dim = parameter.shape[1]
    elif name == "weight" and isinstance(module, nn.Linear):
        module.out_features, module.in_features = parameter.shape


def _edited_fields(architecture: Architecture) -> tuple[str, ...]:
    """The config fields pruning edits (``_heterogeneity_spec`` holds transformers' per_layer_config)."""
    return (
        architecture.depth_fields
        + architecture.per_layer_fields
        + architecture.block_index_fields
        + architecture.block_count_fields
        + architecture.tail_count_fields
        + (HETEROGENEITY,)
    )


HETEROGENEITY = "_heterogeneity_spec"
"""Where a transformers config keeps its per_layer_config (per-block overrides keyed by block index)."""


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
    for module, name, parameter in saved.slices:
        _set_parameter(module, name, parameter)


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
        raise ParameterError(name, f"{name} must be a list of block indices, got {blocks!r}; {valid}")
    if not blocks:
        raise ParameterError(name, f"{name}={blocks!r} is empty: there is nothing to remove; {valid}")
    seen: set[int] = set()
    for value in blocks:
        if not is_integer(value):
            raise ParameterError(
                name, f"{name}={blocks!r} holds {value!r} ({type(value).__name__}), which is not an integer block index; {valid}"
            )
        if value < 0:
            raise ParameterError(
                name, f"{name}={blocks!r} holds the negative index {value}; negative indices are not accepted, {valid}"
            )
        if value >= num_layers:
            raise ParameterError(
                name, f"{name}={blocks!r} holds {value}, out of range for a model of {num_layers} blocks; {valid}"
            )
        if int(value) in seen:
            raise ParameterError(name, f"{name}={blocks!r} holds block {value} more than once; {valid}")
        seen.add(int(value))
    if len(seen) == num_layers:
        raise ParameterError(name, f"{name}={blocks!r} removes all {num_layers} blocks of the model; keep at least one")
    return sorted(seen)


# --------------------------------------------------------------------------- refusals


def _refuse_what_cannot_be_made_right(config: Any, architecture: Architecture, num_layers: int) -> None:
    """Raise for a config of ``num_layers`` blocks whose pruning cannot be made right; return silently otherwise."""
    model_type = config.model_type
    text_config = config.get_text_config(decoder=True)
    for name, required in architecture.required_settings:
        value = vars(text_config).get(name, required)
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


def _refuse_lost_kv_producers(config: Any, kept: list[int]) -> None:
    """Raise when a kept block reads the keys and values of a removed one (KV sharing across blocks,
    as Gemma 4's ``num_kv_shared_layers``: each of the last n blocks reuses those of the last earlier
    block of its attention kind, which ``kv_sharing_modes`` marks "store")."""
    text_config = config.get_text_config(decoder=True)
    shared = vars(text_config).get("num_kv_shared_layers")
    if not shared or not hasattr(type(text_config), "kv_sharing_modes"):
        return
    modes, kinds = text_config.kv_sharing_modes, vars(text_config)["layer_types"]
    producers = {kinds[i]: i for i, mode in enumerate(modes) if mode == "store"}
    for i in kept:
        if modes[i] == "reuse" and producers.get(kinds[i]) not in kept:
            raise PlanRefusedError(
                f"cannot prune this {config.model_type} model so: block {i} reuses the keys and values of block "
                f"{producers.get(kinds[i])} ({kinds[i]}; num_kv_shared_layers={shared} shares them with the last "
                f"{shared} blocks), which the plan removes. Keep block {producers.get(kinds[i])}, or remove block {i} too"
            )


def _attention_blocks(config: Any) -> int | None:
    """How many blocks use softmax attention, by the config's per-block kinds (None: it names no kinds)."""
    text_config = config.get_text_config(decoder=True)
    for name in ("layer_types", "layers_block_type"):
        kinds = getattr(text_config, name, None)
        if isinstance(kinds, (list, tuple)) and kinds:
            return sum(1 for kind in kinds if "attention" in str(kind) and "linear" not in str(kind))
    return None


def _refuse_losing_all_attention(config: Any, new_config: Any, pruned: list[int]) -> None:
    """Raise for a plan that removes every attention block of a hybrid (Mamba, convolution or linear
    attention blocks besides): transformers' caches of these families need one to generate."""
    if _attention_blocks(config) and _attention_blocks(new_config) == 0:
        raise PlanRefusedError(
            f"cannot prune blocks {pruned} of this {config.model_type} model: they are all its attention blocks "
            "(per config.layer_types), and a hybrid left with none cannot generate with transformers' cache. Keep one"
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


def _pruned_config(
    config: Any, architecture: Architecture, plan_or_blocks: Any, num_layers: int, compensate: Mapping[int, float] | None = None
) -> tuple[list[int], Any]:
    """The blocks to remove (current numbering, ascending) and the checked pruned copy of ``config``,
    for a model of ``num_layers`` blocks; raises before returning anything for what cannot be pruned.
    ``compensate``: the factors by block, checked, which the record then lists."""
    pruned, step = _read_request(plan_or_blocks, num_layers)
    if compensate is not None:
        step["compensation"] = compensation.check_factors(compensate, pruned, num_layers)
    _refuse_what_cannot_be_made_right(config, architecture, num_layers)
    kept = [i for i in range(num_layers) if i not in set(pruned)]
    record = _composed_record(config, num_layers, pruned, step)
    _refuse_lost_kv_producers(config, kept)
    new_config = _checked_pruned_config(config, architecture, kept, record, num_layers)
    _check_structure(config, new_config, architecture, kept)
    _refuse_losing_all_attention(config, new_config, pruned)
    return pruned, new_config


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


def _edit_config(config: Any, architecture: Architecture, kept: list[int], num_layers: int) -> None:
    """Make ``config``, of a stack of ``num_layers`` blocks, describe the stack of the ``kept``
    blocks (original indices, ascending)."""
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
    for name in architecture.tail_count_fields:
        count = vars(config).get(name)
        if count:
            setattr(config, name, sum(1 for i in kept if i >= num_layers - count))
    spec = vars(config).get(HETEROGENEITY)
    if spec is not None:  # per_layer_config: the overrides of the kept blocks, under their new numbers
        config.per_layer_config = {
            new_index[i]: dict(overrides) for i, overrides in spec.per_layer_overrides.items() if i in new_index
        }


def _checked_pruned_config(config: Any, architecture: Architecture, kept: list[int], record: dict, num_layers: int) -> Any:
    """Edit a copy of ``config``, run what save_pretrained checks, round-trip it through JSON; return the copy."""
    config = copy.deepcopy(config)
    text_config = config.get_text_config(decoder=True)
    _edit_config(text_config, architecture, kept, num_layers)
    setattr(config, RECORD_ATTRIBUTE, record)
    where = f"the ARCHITECTURES entry for model_type={config.model_type!r} in lorp_lightning/architectures.py"
    try:
        for c in {id(c): c for c in (config, text_config)}.values():
            if hasattr(c, "validate"):
                c.validate()  # what save_pretrained runs before it writes config.json
        reloaded = type(config).from_dict(_from_json(config.to_json_string(use_diff=True)))
    except Exception as error:
        raise NotImplementedError(
            f"pruning blocks {record['steps'][-1]['pruned_layers']} (original numbering) would leave an invalid "
            f"config ({type(error).__name__}: {error}); {where} probably misses a per-block or block-index field"
        ) from error
    reloaded_text = reloaded.get_text_config(decoder=True)
    for name in _edited_fields(architecture):
        before, after = _saved_value(text_config, name), _saved_value(reloaded_text, name)
        if after != before and name in architecture.per_layer_fields and isinstance(after, list) and len(after) == len(before):
            raise PlanRefusedError(  # the family's config rewrites the list on load (Gemma 4: the last block attends to everything)
                f"cannot prune blocks {record['steps'][-1]['pruned_layers']} (original numbering) of this "
                f"{config.model_type} model: its config would say {name}={before!r}, which this family's config "
                f"rewrites to {after!r} when it is loaded, so the pruned model would not reload as it is. Keep blocks "
                f"whose {name} this family accepts (for one, keep its last block)"
            )
        if after != before:
            raise NotImplementedError(
                f"after pruning, config.{name}={before!r} does not survive saving and loading (it comes back as "
                f"{after!r}); see {where}"
            )
    if getattr(reloaded, RECORD_ATTRIBUTE, None) != record:
        raise NotImplementedError(f"config.{RECORD_ATTRIBUTE} does not survive saving and loading with this transformers version")
    return config


def _from_json(text: str) -> dict:
    """The dict of a config's JSON text, as ``from_pretrained`` reads it (transformers writes an
    infinite float as ``{"__float__": "Infinity"}``)."""
    from transformers import PreTrainedConfig

    return PreTrainedConfig._decode_special_floats(json.loads(text))


def _saved_value(config: Any, name: str) -> Any:
    """What ``config`` holds as ``name``, as it would be saved (the per_layer_config's overrides for its spec)."""
    value = vars(config).get(name)
    return value.per_layer_overrides if name == HETEROGENEITY and value is not None else value


# --------------------------------------------------------------------------- structure


def _check_structure(config: Any, new_config: Any, architecture: Architecture, kept: list[int]) -> None:
    """Raise unless ``new_config`` builds every kept block as ``config`` built it, and everything
    outside the blocks alike: the same modules, parameter shapes and settings (``layer_idx`` aside).

    This is what catches a family that places block kinds by index arithmetic (an MoE every
    second block, attention every eighth), a per-block list the table misses, and weights outside
    the blocks sized by the depth. Both sides are built on the meta device, without weights.
    A config that ``AutoModelForCausalLM`` cannot build has nothing to compare, and passes.
    """
    dense = _structure(config.to_json_string(use_diff=False), architecture.layers_path)
    if dense is None:
        return
    pruned = _structure(new_config.to_json_string(use_diff=False), architecture.layers_path)
    removed = [i for i in range(len(dense[0])) if i not in set(kept)]
    text_config = config.get_text_config(decoder=True)
    fields = [f"{name}={vars(text_config).get(name)!r}" for name in architecture.placement_fields if name in vars(text_config)]
    why = (
        f"the config places blocks by their index ({', '.join(fields)})"
        if fields
        else "something in the config ties a block to its index"
    )
    head = f"cannot prune blocks {removed} of this {config.model_type} model"
    if pruned is None:
        raise NotImplementedError(f"{head}: the pruned config cannot build a model; {why}")
    if len(pruned[0]) != len(kept):
        raise PlanRefusedError(
            f"{head}: its config's depth ({', '.join(architecture.depth_fields)}) does not count the blocks at "
            f"{architecture.layers_path}: the pruned config builds {len(pruned[0])} of them, not {len(kept)}. The model is unchanged"
        )
    owner = architecture.layers_path.rpartition(".")[0]
    sliced = {f"{owner}.{path}" if owner else path: dim for path, dim in architecture.per_block_slices}
    expected = tuple(
        (name, tuple(size * len(kept) // len(dense[0]) if i == sliced.get(name) else size for i, size in enumerate(shape)))
        for name, shape in dense[1]
    )
    if pruned[1] != expected:
        name, before, after = _tensor_difference(dense[1], pruned[1])
        raise PlanRefusedError(
            f"{head}: the weights outside the blocks depend on the depth ({name}: {before} in the dense model, "
            f"{after} after pruning), so pruning would have to cut them; {why}. The model is unchanged"
        )
    for new, old in enumerate(kept):
        before_block, after_block = (_without(d, architecture.free_settings) for d in (dense[0][old], pruned[0][new]))
        if after_block != before_block:
            name, before, after = _first_difference(before_block, after_block)
            raise PlanRefusedError(
                f"{head}: after pruning, the config would build block {old} (block {new} of the pruned model) otherwise "
                f"than it is ({name}: {before} now, {after} after pruning); {why}. Choose blocks that keep the pattern, "
                "or leave this family unpruned. The model is unchanged"
            )


@functools.lru_cache(maxsize=32)
def _structure(config_json: str, layers_path: str) -> tuple[tuple, tuple] | None:
    """(per block, its description; the parameters outside the blocks) of the model a config
    builds, or None when ``AutoModelForCausalLM`` cannot build it."""
    from transformers import AutoConfig

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = skeleton(AutoConfig.for_model(**_from_json(config_json)))
        blocks = model.get_submodule(layers_path)
    except Exception:
        return None
    outside = tuple((name, tuple(p.shape)) for name, p in model.named_parameters() if not name.startswith(layers_path + "."))
    return tuple(_description(block) for block in blocks), outside


_SETTING_TYPES = (bool, int, float, str, type(None))


def _description(block: nn.Module) -> tuple:
    """A block's modules (name, class, settings), parameters and buffers (name, shape)."""
    modules = tuple(
        (
            name,
            type(module).__name__,
            tuple(
                sorted(
                    (key, value)
                    for key, value in vars(module).items()
                    if not key.startswith("_") and key not in ("layer_idx", "training") and isinstance(value, _SETTING_TYPES)
                )
            ),
        )
        for name, module in block.named_modules()
    )
    tensors = tuple((name, tuple(t.shape)) for name, t in (*block.named_parameters(), *block.named_buffers()))
    return modules, tensors


def _without(description: tuple, settings: tuple[str, ...]) -> tuple:
    """A block description without the named module settings."""
    if not settings:
        return description
    modules = tuple((name, kind, tuple((k, v) for k, v in values if k not in settings)) for name, kind, values in description[0])
    return modules, description[1]


def _first_difference(before: tuple, after: tuple) -> tuple[str, Any, Any]:
    """Where two block descriptions first differ: (what, its value before, after)."""
    for (name, kind, settings), (other_name, other_kind, other_settings) in zip(before[0], after[0], strict=False):
        if (name, kind) != (other_name, other_kind):
            return f"the class of {name or 'the block'}", kind, other_kind
        if settings != other_settings:
            old, new = dict(settings), dict(other_settings)
            key = next(k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
            return f"{name}.{key}" if name else key, old.get(key), new.get(key)
    if len(before[0]) != len(after[0]):
        return "its modules", f"{len(before[0])} modules", f"{len(after[0])} modules"
    return _tensor_difference(before[1], after[1])


def _tensor_difference(before: tuple, after: tuple) -> tuple[str, Any, Any]:
    """Where two lists of (tensor name, shape) first differ: (name, shape before, after)."""
    old, new = dict(before), dict(after)
    name = next(k for k in [*old, *new] if old.get(k) != new.get(k))
    return name, old.get(name, "absent"), new.get(name, "absent")


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
    entry = {"method": step["method"], "pruned_layers": step_pruned, "rls": step["rls"], "num_clusters": step["num_clusters"]}
    if "compensation" in step:  # the stream's factor at each gap, by the kept block after it (original numbering)
        entry["compensation"] = [{"block": original_index[b], "factor": f} for b, f in sorted(step["compensation"].items())]
    record = copy.deepcopy(previous) if previous is not None else {}  # what else it holds (the healings) stays
    record.update(
        {
            "original_num_layers": original_num_layers,
            "pruned_layers": sorted(already_pruned + step_pruned),
            "steps": steps + [entry],
        }
    )
    return record


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
            index, _, rest = key[len(prefix) :].partition(".")
            if index.isdigit():
                if int(index) not in new_index:
                    continue
                key = prefix + str(new_index[int(index)]) + ("." + rest if rest else "")
        renamed[key] = device
    model.hf_device_map = renamed

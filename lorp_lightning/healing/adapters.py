"""What trains in a healing: LoRA adapters on the blocks' linear layers, or the blocks next to the
removed ones; how it goes in (``start``) and how it comes out (``merge``).

``start`` freezes the model and adds what trains, and returns a ``Healing`` that says what it
changed; ``merge`` merges the adapters into the weights and makes the parameters train as they
did before, so that the model is again a plain Hugging Face model. The record of the healing is
``record.add_entry``'s.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lorp_lightning.architectures import architecture_of, decoder_layers
from lorp_lightning.healing.record import checked_record
from lorp_lightning.healing.settings import HealingSettings, peft

__all__ = ["Healing", "blocks_next_to_removed", "check_model", "check_settings", "lora_targets", "merge", "start"]

_ADAPTER = "default"


def blocks_next_to_removed(original_num_layers: int, pruned_layers: Sequence[int]) -> list[int]:
    """The kept blocks next to a removed block, in the pruned model's numbering.

    For each removed block (original numbering), the nearest kept block below it and the nearest
    kept block above it, where they exist. A run of removed blocks has one neighbour on each side.

    Example: 10 blocks with blocks 2, 3 and 7 removed keep 0 1 4 5 6 8 9; the neighbours are the
    original blocks 1, 4, 6 and 8, which are blocks ``[1, 2, 4, 5]`` of the pruned model.
    """
    removed = set(int(i) for i in pruned_layers)
    kept = [i for i in range(int(original_num_layers)) if i not in removed]
    neighbours: set[int] = set()
    for block in removed:
        below = [i for i in kept if i < block]
        above = [i for i in kept if i > block]
        if below:
            neighbours.add(below[-1])
        if above:
            neighbours.add(above[0])
    return sorted(kept.index(i) for i in neighbours)


def _linear_layers_of_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Full name -> module of every linear layer inside the decoder blocks (``nn.Linear`` or GPT-2's ``Conv1D``)."""
    from transformers.pytorch_utils import Conv1D

    prefix = architecture_of(model).layers_path
    layers = {}
    for index, block in enumerate(decoder_layers(model)):
        for name, module in block.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)):
                layers[f"{prefix}.{index}.{name}"] = module
    return layers


def _features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    rows, columns = module.weight.shape  # transformers' Conv1D stores (in, out)
    return rows, columns


def lora_targets(model: nn.Module, settings: HealingSettings) -> dict[str, nn.Module]:
    """The linear layers LoRA adapts, checked against ``target_modules`` and the rank."""
    layers = _linear_layers_of_blocks(model)
    leaf_names = sorted({name.rpartition(".")[2] for name in layers})
    if settings.target_modules is None:
        targets = layers
    else:
        unknown = [t for t in settings.target_modules if t not in leaf_names]
        if unknown:
            raise ValueError(
                f"target_modules={list(settings.target_modules)!r} names {unknown[0]!r}, which is not a linear layer "
                f"of the decoder blocks; the blocks' linear layers are {leaf_names}"
            )
        wanted = set(settings.target_modules)
        targets = {name: m for name, m in layers.items() if name.rpartition(".")[2] in wanted}
    if not targets:
        raise ValueError(f"the decoder blocks of this {model.config.model_type} model have no linear layer for LoRA")
    narrowest = min(targets, key=lambda name: min(_features(targets[name])))
    fan_in, fan_out = _features(targets[narrowest])
    if settings.rank > min(fan_in, fan_out):
        raise ValueError(
            f"rank={settings.rank} does not fit: the target module {narrowest.rpartition('.')[2]!r} maps {fan_in} to "
            f"{fan_out} features, so a LoRA update of it has rank at most {min(fan_in, fan_out)}; pass "
            f"rank <= {min(fan_in, fan_out)}, or leave that module out of target_modules"
        )
    return targets


def _final_norms(model: nn.Module) -> dict[str, nn.Module]:
    """The normalisation layers that follow the blocks: children of the module holding them, named for a norm."""
    owner_path = architecture_of(model).layers_path.rpartition(".")[0]
    owner = model.get_submodule(owner_path)
    return {
        f"{owner_path}.{name}": module
        for name, module in owner.named_children()
        if "norm" in type(module).__name__.lower() or "norm" in name.lower() or name in ("ln_f",)
    }


def check_dtype(model: nn.Module, settings: HealingSettings) -> None:
    if settings.mode == "adjacent":
        low = sorted({str(p.dtype) for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)})
        if low:
            raise ValueError(
                f"mode='adjacent' trains the block weights themselves, which are {', '.join(low)} here: AdamW updates "
                "smaller than their precision would be lost. Heal a float32 model (model.float()), or use mode='lora' "
                "(float32 adapters on a frozen low-precision model)"
            )


@dataclass
class Healing:
    """What one healing changed in the model, to undo the freezing and merge the adapters at the end."""

    settings: HealingSettings
    requires_grad: dict[str, bool]
    trainable: list[str]
    target_modules: list[str] | None
    trained_blocks: list[int] | None
    num_trainable_parameters: int
    start_step: int
    tuner: Any = None
    distillation: dict | None = None
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def check_settings(model: nn.Module, settings: HealingSettings) -> None:
    """The checks of the settings against the model that need no pruning record: the dtype (``"adjacent"``), the
    LoRA targets and rank, and peft (``"lora"``)."""
    check_dtype(model, settings)
    if settings.mode == "lora":
        lora_targets(model, settings)
        peft()


def check_model(model: nn.Module, settings: HealingSettings) -> dict:
    """Every check that needs the model, before anything changes; returns the pruning record."""
    record = checked_record(model)
    check_settings(model, settings)
    return record


def start(model: nn.Module, settings: HealingSettings, start_step: int) -> Healing:
    """Freeze the model and add what trains: LoRA adapters, or the blocks next to the removed ones."""
    record = check_model(model, settings)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    tuner, targets, trained_blocks = None, None, None
    if settings.mode == "lora":
        targets = lora_targets(model, settings)
        config = settings.lora_config(targets)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's notes on the config it fills in
            torch.manual_seed(settings.seed)  # the adapters' random initialisation
            tuner = peft().LoraModel(model, config, _ADAPTER)  # injects into `model` itself and freezes the rest
        tuner._cast_adapter_dtype(_ADAPTER, autocast_adapter_dtype=True)  # float32 adapters on a bf16/fp16 model
    else:
        trained_blocks = blocks_next_to_removed(record["original_num_layers"], record["pruned_layers"])
        prefix = architecture_of(model).layers_path
        modules = [f"{prefix}.{i}" for i in trained_blocks] + list(_final_norms(model))
        trainable_ids = {id(p) for path in modules for p in model.get_submodule(path).parameters()}
        head = model.get_output_embeddings()
        if head is not None:
            trainable_ids |= {id(p) for p in head.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable_ids)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    count = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    leaf_names = None if targets is None else sorted({name.rpartition(".")[2] for name in targets})
    return Healing(settings, requires_grad, trainable, leaf_names, trained_blocks, count, start_step, tuner)


def merge(model: nn.Module, healing: Healing) -> None:
    """Merge the adapters (LoRA) into the weights, and make the parameters train as they did before ``start``."""
    if healing.tuner is not None:
        with torch.no_grad():
            healing.tuner.merge_and_unload(safe_merge=True)
    for name, p in model.named_parameters():
        p.requires_grad_(healing.requires_grad.get(name, True))

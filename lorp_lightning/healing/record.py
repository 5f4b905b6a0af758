"""The record of a healing: one entry appended to the pruning record, ``config.lorp_pruning["healing"]``.

A healed model stays a plain Hugging Face model, and what was done to it travels in its config:
each healing adds one entry (the settings, what trained, the steps and tokens, the training loss
at the start and at the end, the time, the data and the teacher), written once, when the healing
ends (``add_entry``). ``healing_records`` reads them back.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

from torch import nn

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.surgery import RECORD_ATTRIBUTE, pruning_record

if TYPE_CHECKING:
    from lorp_lightning.healing.adapters import Healing

__all__ = ["HEALING_KEY", "add_entry", "checked_record", "healing_records"]

HEALING_KEY = "healing"
"""Key of the list of healing entries inside the pruning record (``config.lorp_pruning``)."""


def healing_records(model_or_config: Any) -> list[dict]:
    """The healing entries of a model's pruning record (oldest first); empty for a model never healed."""
    record = pruning_record(model_or_config) or {}
    return copy.deepcopy(list(record.get(HEALING_KEY, [])))


def checked_record(model: nn.Module) -> dict:
    """The model's pruning record, checked to be one and to match the model's depth (what healing needs)."""
    record = pruning_record(model)
    if record is None:
        raise ValueError(
            "healing recovers what pruning lost, but this model has no pruning record (config.lorp_pruning): prune it "
            "first (prune_layers, LoRPPruneCallback or `lorp prune`); for plain fine-tuning, fit a LoRPModule"
        )
    try:
        original = int(record["original_num_layers"])
        pruned = [int(i) for i in record["pruned_layers"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"config.{RECORD_ATTRIBUTE}={record!r} is not a pruning record written by lorp_lightning") from error
    if original - len(pruned) != len(decoder_layers(model)):
        raise ValueError(
            f"config.{RECORD_ATTRIBUTE} says {original} - {len(pruned)} blocks remain, but the model has "
            f"{len(decoder_layers(model))}; the record is stale"
        )
    return record


def add_entry(model: nn.Module, healing: Healing, num_steps: int, completed: bool, run: dict[str, Any] | None = None) -> dict:
    """Add the healing to the model's pruning record, and return the entry."""
    losses = healing.losses
    tenth = max(1, len(losses) // 10)
    settings = healing.settings
    entry = {
        "mode": settings.mode,
        "rank": settings.rank,
        "alpha": settings.alpha,
        "dropout": settings.dropout,
        "target_modules": healing.target_modules,
        "lora_options": settings.lora_options(),  # the other options of a LoraConfig given as lora=..., or None
        "trained_blocks": healing.trained_blocks,
        "num_trainable_parameters": healing.num_trainable_parameters,
        "num_steps": int(num_steps),
        "tokens": healing.tokens,
        "initial_loss": sum(losses[:tenth]) / tenth if losses else None,
        "final_loss": sum(losses[-tenth:]) / tenth if losses else None,
        "seconds": time.perf_counter() - healing.started,
        "completed": bool(completed),
        "seed": settings.seed,
        "distillation": copy.deepcopy(healing.distillation),
        **copy.deepcopy(run or {}),  # what heal() adds about its run: the data and the optimizer's settings
    }
    record = copy.deepcopy(pruning_record(model))
    record[HEALING_KEY] = list(record.get(HEALING_KEY, [])) + [entry]
    setattr(model.config, RECORD_ATTRIBUTE, record)
    return entry

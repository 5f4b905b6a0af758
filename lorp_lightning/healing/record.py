"""The record of a healing: one entry appended to the pruning record, ``config.lorp_pruning["healing"]``.

A healed model stays a plain Hugging Face model, and what was done to it travels in its config:
each healing adds one entry (the settings, what trained, the steps and tokens, the training loss
at the start and at the end, the time, the data and the teacher), written once, when the healing
ends (``add_entry``). ``healing_records`` reads them back.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import nn

from lorp_lightning.surgery import RECORD_ATTRIBUTE, pruning_record

if TYPE_CHECKING:
    from lorp_lightning.healing.adapters import Healing

__all__ = ["HEALING_KEY", "add_entry", "healing_records"]

HEALING_KEY = "healing"
"""Key of the list of healing entries inside the pruning record (``config.lorp_pruning``)."""


def healing_records(model_or_config: Any) -> list[dict]:
    """The healing entries of a model's pruning record (oldest first); empty for a model never healed."""
    record = pruning_record(model_or_config) or {}
    return copy.deepcopy(list(record.get(HEALING_KEY, [])))


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
        "seconds": healing.seconds,
        "completed": bool(completed),
        "resumed_at": list(healing.resumed_at),  # the global steps of the checkpoints it was resumed from, if any
        "seed": settings.seed,
        "distillation": copy.deepcopy(healing.distillation),
        **copy.deepcopy(run or {}),  # what heal() adds about its run: the data and the optimizer's settings
    }
    record = copy.deepcopy(pruning_record(model))
    record[HEALING_KEY] = list(record.get(HEALING_KEY, [])) + [entry]
    setattr(model.config, RECORD_ATTRIBUTE, record)
    return entry

"""Healing: a short training run that recovers part of the quality a pruned model lost.

Pruning removes blocks without training; healing trains the pruned model a little on the
**calibration** split of a text (never the held-out split, which measures perplexity), in one of
two ways (``mode``):

- ``"lora"`` (default): LoRA adapters (through peft) on the linear layers of every decoder
  block; everything else is frozen. At the end the adapters are merged into the weights. The
  adapters' settings are ``rank``, ``alpha``, ``dropout`` and ``target_modules``, or a peft
  ``LoraConfig`` (``lora=``).
- ``"adjacent"``: the weights of the blocks next to each removed block (the nearest kept block
  below and above it, in the original numbering), of the final normalisation and of the
  language-model head are trained; everything else is frozen. (A head tied to the input
  embeddings trains them too.)

The training loss is the next-token loss on that text, or, with a ``teacher``, distillation:
the KL divergence between the teacher's and the student's next-token distributions, as Minitron
heals pruned models (see ``lorp_lightning.distillation``). The teacher is the dense model, or
with the callback the student itself with its removed blocks put back and its adapters off.

Either way, the healed model is again a plain Hugging Face model: no adapter modules or peft
attributes are left, ``save_pretrained`` writes an ordinary checkpoint, and plain
``AutoModelForCausalLM.from_pretrained`` reloads it. ``config.lorp_pruning`` keeps its pruning
record, and each healing adds an entry to its ``"healing"`` list.

Two entry points:

- ``LoRPHealCallback`` (``lorp_lightning/callbacks/heal.py``), for a Lightning user: added to the
  Trainer after ``LoRPPruneCallback``, it heals the pruned model while ``Trainer.fit`` trains it
  (the module's ``training_step`` and optimizer; ``LoRPModule`` has both).
- ``heal`` (``lorp_lightning/recipes/heal.py``), a function that runs that ``fit`` itself: the
  calibration windows, a Trainer with ``max_steps``, AdamW with warm-up and cosine decay.

This package holds the parts, one file per concern: ``settings.py`` (the checked arguments,
``HealingSettings``), ``adapters.py`` (what trains, put in and merged), ``record.py`` (the entry in
the pruning record, written once), ``schedule.py`` (the learning-rate schedule). The parts import
neither the callbacks nor the recipes. The drivers that wire them are recipes: ``heal`` and
``prune_and_heal`` (pruning in rounds, each healed before the next), in ``lorp_lightning/recipes/``;
the clock of ``max_seconds`` is a callback, ``lorp_lightning/callbacks/time_budget.py``. This file
names the callback and the recipes too, lazily, so that one import of ``healing`` gives them all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DEFAULT_LR": "settings",
    "MODES": "settings",
    "HealingSettings": "settings",
    "DistillationSettings": "settings",
    "TrainingSettings": "settings",
    "blocks_next_to_removed": "adapters",
    "healing_records": "record",
    "learning_rate_factor": "schedule",
}
# Named here too, for one import of healing: the callback lives with the other callbacks, the drivers with the recipes.
_ABOVE = {
    "LoRPHealCallback": "lorp_lightning.callbacks.heal",
    "LossCurve": "lorp_lightning.callbacks.heal",
    "heal": "lorp_lightning.recipes.heal",
    "prune_and_heal": "lorp_lightning.recipes.prune_and_heal",
}

if TYPE_CHECKING:
    from lorp_lightning.callbacks.heal import LoRPHealCallback, LossCurve
    from lorp_lightning.healing.adapters import blocks_next_to_removed
    from lorp_lightning.healing.record import healing_records
    from lorp_lightning.healing.schedule import learning_rate_factor
    from lorp_lightning.healing.settings import DEFAULT_LR, MODES, DistillationSettings, HealingSettings, TrainingSettings
    from lorp_lightning.recipes.heal import heal
    from lorp_lightning.recipes.prune_and_heal import prune_and_heal


def __getattr__(name: str) -> Any:
    # Lazy, as the package's own __init__: the callback and the recipes import healing's parts, so
    # nothing here is imported before it is asked for.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lorp_lightning.healing.{_EXPORTS[name]}"), name)
    if name in _ABOVE:
        return getattr(importlib.import_module(_ABOVE[name]), name)
    raise AttributeError(f"module 'lorp_lightning.healing' has no attribute {name!r}")


__all__ = [
    "DEFAULT_LR",
    "MODES",
    "DistillationSettings",
    "HealingSettings",
    "TrainingSettings",
    "LoRPHealCallback",
    "LossCurve",
    "blocks_next_to_removed",
    "heal",
    "healing_records",
    "learning_rate_factor",
    "prune_and_heal",
]

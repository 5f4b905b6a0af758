"""lorp_lightning: training-free depth pruning of causal LMs with LoRP, for PyTorch Lightning.

The pieces, each in one module:

- ``assets``: the bundled models and texts (``load_model``, ``load_text``).
- ``precision``: ``dtype="auto"``, bf16 where the CPU runs it natively, float32 elsewhere
  (``choose_dtype``).
- ``stats``: layer statistics from one calibration pass (``LayerSimilarity``, ``LayerStats``,
  ``collect_layer_stats``).
- ``locality``: the locality analysis (RLS, granularity, clustering, allocation), pure maths.
- ``methods``: the table of every method, and the entry points (``select_layers``, ``METHODS``,
  ``DEFAULT_METHOD``; ``select_checked``, ``lorp_checked`` as one function); ``selection``: the plan and
  the budget rule (``PruningPlan``); ``baselines``: the rules of the baselines that read the statistics.
- ``search``: methods that try plans on the model with the calibration loss: the default
  ``lorp_search``, ``sleb`` and ``ppl`` (``PlanLoss``), and LoRP's candidate plans they start from.
- ``surgery``: removing blocks so the result is a normal Hugging Face model (``prune_layers``).
- ``checkpoint``: the same, on a checkpoint on disk, tensor by tensor, without loading it
  (``prune_checkpoint``).
- ``architectures``: the model specifics, one table entry per architecture.
- ``evaluation``: held-out perplexity, size, speed and memory.
- ``next_token``: the next-token loss, the one rule that perplexity, training and the plan
  checks build on.
- ``module``, ``data``, ``callbacks``: the Lightning glue (``LoRPModule``, ``TextDataModule``,
  ``LayerStatsCallback``, ``LoRPPruneCallback``, ``LoRPHealCallback``).
- ``healing``: optional healing after pruning, LoRA adapters or the blocks next to the removed
  ones (``heal``, ``healing_records``; LoRA needs the ``heal`` extra, peft);
  ``distillation``: healing with a teacher, the dense model (``distillation_loss``).
- ``cli``: the ``lorp`` command line.
"""

import importlib
from typing import TYPE_CHECKING, Any

from lorp_lightning._versions import __version__

# Names are imported when first used (PEP 562), so that importing the pure modules (``locality``,
# ``selection``, ``stats``, ``surgery``) does not import Lightning.
_EXPORTS = {
    "list_models": "assets",
    "list_texts": "assets",
    "load_model": "assets",
    "load_text": "assets",
    "LayerStatsCallback": "callbacks",
    "LoRPPruneCallback": "callbacks",
    "select_checked": "methods",
    "prune_checkpoint": "checkpoint",
    "TextDataModule": "data",
    "LoRPHealCallback": "callbacks",
    "heal": "healing",
    "healing_records": "healing",
    "clusters_for_rls": "locality",
    "representation_locality_score": "locality",
    "DEFAULT_METHOD": "methods",
    "METHODS": "methods",
    "SelectionContext": "methods",
    "PruneSettings": "methods",
    "select_layers": "methods",
    "LoRPModule": "module",
    "PruningPlan": "selection",
    "LayerSimilarity": "stats",
    "LayerStats": "stats",
    "collect_layer_stats": "stats",
    "Stability": "stability",
    "plan_stability": "stability",
    "PlanRefusedError": "surgery",
    "ParameterError": "_validation",
    "prune_layers": "surgery",
    "pruning_record": "surgery",
}

if TYPE_CHECKING:
    from lorp_lightning._validation import ParameterError
    from lorp_lightning.assets import list_models, list_texts, load_model, load_text
    from lorp_lightning.callbacks import LayerStatsCallback, LoRPHealCallback, LoRPPruneCallback
    from lorp_lightning.checkpoint import prune_checkpoint
    from lorp_lightning.data import TextDataModule
    from lorp_lightning.healing import heal, healing_records
    from lorp_lightning.locality import clusters_for_rls, representation_locality_score
    from lorp_lightning.methods import DEFAULT_METHOD, METHODS, PruneSettings, SelectionContext, select_checked, select_layers
    from lorp_lightning.module import LoRPModule
    from lorp_lightning.selection import PruningPlan
    from lorp_lightning.stability import Stability, plan_stability
    from lorp_lightning.stats import LayerSimilarity, LayerStats, collect_layer_stats
    from lorp_lightning.surgery import PlanRefusedError, prune_layers, pruning_record


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"lorp_lightning.{_EXPORTS[name]}"), name)
    elif name.startswith("_"):
        raise AttributeError(f"module 'lorp_lightning' has no attribute {name!r}")
    else:
        try:  # a submodule, e.g. ``lorp_lightning.healing`` after a plain ``import lorp_lightning``
            value = importlib.import_module(f"lorp_lightning.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"lorp_lightning.{name}":
                raise
            raise AttributeError(f"module 'lorp_lightning' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "LayerSimilarity",
    "LayerStats",
    "LayerStatsCallback",
    "LoRPHealCallback",
    "LoRPModule",
    "LoRPPruneCallback",
    "ParameterError",
    "PlanRefusedError",
    "PruneSettings",
    "PruningPlan",
    "SelectionContext",
    "Stability",
    "TextDataModule",
    "__version__",
    "clusters_for_rls",
    "collect_layer_stats",
    "heal",
    "healing_records",
    "list_models",
    "list_texts",
    "load_model",
    "load_text",
    "plan_stability",
    "prune_checkpoint",
    "prune_layers",
    "pruning_record",
    "representation_locality_score",
    "select_checked",
    "select_layers",
]

"""Lightning callbacks: gather layer statistics while a loop runs, and prune with LoRP.

One file per callback: ``statistics`` (``LayerStatsCallback``), ``prune``
(``LoRPPruneCallback``), ``heal`` (``LoRPHealCallback``, whose settings, adapters and record are
in ``lorp_lightning.healing``), ``time_budget`` (``TimeBudget``, the clock of a healing's
``max_seconds``); ``location`` says where a callback finds the causal LM and holds
what they do to the Trainer around it.

The statistics and prune callbacks listen to the decoder blocks of a Hugging Face causal LM inside the
LightningModule: ``pl_module.model`` by default (``LoRPModule`` keeps
it there), or where their ``model`` argument says (an attribute name, or a callable; see
``get_causal_lm``). They feed ``LayerSimilarity``, whose sum
states are synchronised across processes when computed, so statistics gathered under DDP or FSDP
equal those of one process over all the batches. Batches are read by one rule,
``model_inputs``. The selection is
``select_layers`` and the surgery
``prune_layers``; nothing here computes anything itself.
"""

from lorp_lightning.callbacks.heal import LoRPHealCallback, LossCurve
from lorp_lightning.callbacks.location import ModelLocation, check_model_location, get_causal_lm, rebuild_optimizers
from lorp_lightning.callbacks.prune import LoRPPruneCallback
from lorp_lightning.callbacks.statistics import LayerStatsCallback
from lorp_lightning.callbacks.time_budget import TimeBudget

__all__ = [
    "LayerStatsCallback",
    "LoRPHealCallback",
    "LoRPPruneCallback",
    "LossCurve",
    "ModelLocation",
    "check_model_location",
    "TimeBudget",
    "get_causal_lm",
    "rebuild_optimizers",
]

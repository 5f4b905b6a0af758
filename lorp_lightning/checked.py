"""``lorp_checked``: plans from LoRP's locality analysis, checked against the calibration loss.

The faithful method (``select_layers(stats, k, method="lorp")``) trusts cosine redundancy to say
which blocks a model can spare. On small models that fails: early blocks look redundant (their
inputs are all alike) yet removing them is ruinous further down (docs/results.md). This method
keeps what drives LoRP, the locality analysis, and adds the check the paper names as future
work:

    1. one calibration pass gives the statistics (the same pass as the faithful method);
    2. the RLS, the clusters and the redundancy within them give a handful of candidate plans:
       the faithful allocation, the same allocation ranked by influence, one plan sparing each
       cluster, one spending the budget within each cluster, one run of adjacent blocks from
       each cluster (`candidate_plans`);
    3. each candidate is applied to the model temporarily (no weights copied) and its mean
       next-token loss measured on the first ``check_windows`` calibration windows;
    4. the plan with the lowest loss wins (ties: the earlier candidate).

Its successor, ``lorp_search`` (the default, `lorp_lightning.methods`), goes on from the
winner one block at a time. Only calibration windows are ever read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from lorp_lightning.search import as_windows, calibration_loss
from lorp_lightning.selection import PruningPlan
from lorp_lightning.stats import LayerStats, collect_layer_stats

__all__ = ["METHOD", "calibration_loss", "select_checked"]

METHOD = "lorp_checked"


def select_checked(
    model: nn.Module,
    windows: Any,
    num_prune: int | float,
    *,
    stats: LayerStats | None = None,
    check_windows: int = 4,
    protect: Iterable[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> PruningPlan:
    """Choose the blocks to prune with ``lorp_checked`` (see the module docs).

    Args:
        model: a Hugging Face causal LM (any architecture in ``lorp_lightning.architectures``).
            Each candidate is tried by pruning it temporarily; the model is left exactly as it was.
        windows: the calibration windows, a (B, T) tensor of token ids (or a list of 1-D tensors
            of one length); the first ``check_windows`` of them are the loss checks.
        num_prune: (6) an int, the number of blocks, or a float in (0, 1), a fraction of N
            rounded down.
        stats: the [`LayerStats`][lorp_lightning.stats.LayerStats] of ``model`` on ``windows`` if
            already collected (e.g. shared with other methods); collected here if None.
        check_windows: calibration windows per loss check (default 4), between 1 and B. Every
            predicted token of a window is scored.
        protect: block indices never pruned (default None: {0, N-1}).
        seed: the spectral clustering's ``random_state`` (default 0).
        progress: show a progress bar over the candidates.

    Returns:
        A [`PruningPlan`][lorp_lightning.selection.PruningPlan] with ``method="lorp_checked"``, the
        RLS, K and clusters of the analysis, ``candidates`` (every candidate's rule, blocks and
        loss; the chosen one is ``pruned``) and ``cost``.
    """
    from lorp_lightning.methods import select_layers

    batch = as_windows(windows)
    if stats is None:
        stats = collect_layer_stats(model, batch.split(1), progress=progress)
    return select_layers(stats, num_prune, METHOD, protect=protect, seed=seed, model=model, windows=batch,
                         check_windows=check_windows, check_tokens=None, score_last=None, progress=progress)

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
       each cluster (:func:`~lorp_lightning.selection.candidate_plans`);
    3. each candidate is applied to the model temporarily (no weights copied) and its mean
       next-token loss measured on the first ``check_windows`` calibration windows;
    4. the plan with the lowest loss wins (ties: the earlier candidate).

Cost: the faithful pass over the B calibration windows through the blocks, plus, per candidate,
``check_windows`` windows through the pruned model and its head. With 4 check windows and at
most 2 + 3K candidates (K <= 4) that is at most 56 window passes; the plan's ``cost`` records
what was run, and ``benchmarks/quality_study.py`` measures it in seconds. Only calibration
windows are ever read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.locality import is_integer
from lorp_lightning.selection import PruningPlan, candidate_plans, select_layers
from lorp_lightning.stats import LayerStats, collect_layer_stats
from lorp_lightning.surgery import temporarily_pruned

__all__ = ["METHOD", "calibration_loss", "select_checked"]

METHOD = "lorp_checked"


def _as_windows(windows: Any) -> Tensor:
    if isinstance(windows, (list, tuple)) and windows and all(isinstance(w, Tensor) for w in windows):
        if len({w.numel() for w in windows}) != 1:
            raise ValueError(f"windows must all have the same length, got lengths {sorted({w.numel() for w in windows})}")
        windows = torch.stack([w.reshape(-1) for w in windows])
    if not isinstance(windows, Tensor):
        raise ValueError(f"windows must be a (B, T) tensor of token ids or a list of 1-D tensors of one length, got {type(windows).__name__}")
    if windows.dim() == 1:
        windows = windows.unsqueeze(0)
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"windows must be a (B, T) tensor of integer token ids with T >= 2, got shape {tuple(windows.shape)} "
            f"and dtype {windows.dtype}"
        )
    return windows


@torch.no_grad()
def calibration_loss(model: nn.Module, windows: Tensor) -> float:
    """Mean next-token loss (nats) of ``model`` over token ``windows``, one window per forward pass."""
    windows = _as_windows(windows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        losses = [float(model(input_ids=w.unsqueeze(0).to(device), labels=w.unsqueeze(0).to(device), use_cache=False).loss)
                  for w in windows]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses)


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
        stats: the :class:`~lorp_lightning.stats.LayerStats` of ``model`` on ``windows`` if
            already collected (e.g. shared with other methods); collected here if None.
        check_windows: calibration windows per loss check (default 4), between 1 and B.
        protect: block indices never pruned (default None: {0, N-1}).
        seed: the spectral clustering's ``random_state`` (default 0).
        progress: show a progress bar over the candidates.

    Returns:
        A :class:`~lorp_lightning.selection.PruningPlan` with ``method="lorp_checked"``, the
        RLS, K and clusters of the analysis, ``candidates`` (every candidate's rule, blocks and
        loss; the chosen one is ``pruned``) and ``cost`` (window passes run, and seconds).
    """
    from tqdm.auto import tqdm

    batch = _as_windows(windows)
    if not is_integer(check_windows) or not 1 <= check_windows <= batch.shape[0]:
        raise ValueError(f"check_windows must be an int between 1 and the {batch.shape[0]} windows given, got {check_windows!r}")
    N = len(decoder_layers(model))
    start = time.perf_counter()
    if stats is None:
        stats = collect_layer_stats(model, batch.split(1), progress=progress)
    if stats.num_layers != N:
        raise ValueError(f"stats describe {stats.num_layers} blocks but the model has {N}; collect them on this model")
    analysis = select_layers(stats, num_prune, method="lorp", protect=protect, seed=seed)  # validates the rest
    candidates = candidate_plans(stats, num_prune, protect=protect, seed=seed)
    checks = batch[:check_windows]
    for candidate in tqdm(candidates, desc="lorp_checked", unit="plan", disable=not progress):
        with temporarily_pruned(model, candidate["pruned"]):
            loss = calibration_loss(model, checks)
        candidate["loss"] = loss if math.isfinite(loss) else math.inf
    best = min(candidates, key=lambda c: c["loss"])  # min() keeps the first of ties
    cost = {
        "calibration_windows": int(batch.shape[0]),  # the statistics pass, as for the faithful method
        "check_windows": len(candidates) * int(check_windows),  # window passes through candidate models and head
        "seconds": time.perf_counter() - start,
    }
    return PruningPlan(
        method=METHOD, num_layers=N, pruned=best["pruned"], kept=[l for l in range(N) if l not in set(best["pruned"])],
        protected=analysis.protected, rls=analysis.rls, num_clusters=analysis.num_clusters, labels=analysis.labels,
        scores=None, seed=int(seed), candidates=candidates, cost=cost,
    )

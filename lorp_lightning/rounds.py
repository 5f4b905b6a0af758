"""Pruning in rounds: the budget removed a part at a time, the statistics measured again between parts.

    plan = select_layers(stats, 0.25, method="lorp_search", model=model, windows=windows, rounds=2, compensate=True)

One-shot selection reads statistics of the dense model, though after the first blocks go the
others sit in another stream: what was redundant next to a removed block may no longer be.
Iterative pruning (Prune&Comp, Chen et al., AAAI 2026; the LoRP paper's first item of future
work) removes a part of the budget, measures again on the partly pruned model, and goes on.

Round r (``round_sizes``: the budget split as evenly as possible, the larger parts first)
selects its blocks with the method on the model the rounds before it left: pruned of their
blocks, each round's compensation folded in (``compensation``), with statistics collected again
over the same calibration windows. The rounds change the given model in place and put it back
exactly as it was when they end: its stack by ``surgery.save_stack``, the stream writers a fold
changed from copies taken before the fold. The result is one plan in the original numbering
(``compose_rounds``): the union of the rounds' blocks, and the factors whose single fold gives
the weights the rounds' folds gave one after another.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lorp_lightning import compensation
from lorp_lightning.architectures import architecture_of, decoder_layers

__all__ = ["STATISTICS_BATCH", "compose_rounds", "round_sizes", "select_in_rounds"]

STATISTICS_BATCH = 4  # windows per forward pass when a round collects the statistics again


# --------------------------------------------------------------------------- the mathematics


def round_sizes(num_prune: int, rounds: int) -> list[int]:
    """The blocks each round removes: ``num_prune`` split as evenly as possible, the larger parts first.

        >>> round_sizes(7, 3)
        [3, 2, 2]
    """
    if not 1 <= rounds <= num_prune:
        raise ValueError(f"rounds must be between 1 and the {num_prune} blocks to prune, got rounds={rounds!r}")
    whole, rest = divmod(num_prune, rounds)
    return [whole + 1] * rest + [whole] * (rounds - rest)


def compose_rounds(num_layers: int, rounds: Sequence[tuple[Sequence[int], Mapping[int, float]]]) -> tuple[list[int], dict[int, float]]:
    """The one plan, in the original numbering, that prunes as the rounds did one after another.

    Args:
        num_layers: N, the blocks of the unpruned model.
        rounds: per round, the blocks it removed and its compensation factors (by the kept block
            after each gap), both in the numbering of the model that round pruned.

    Returns:
        The blocks removed and the factors by block, for one ``prune_layers`` of the unpruned model.
        A fold divides what every block from b on writes into the stream by b's factor, so a factor
        whose block a later round removes moves to the next kept block (the blocks between are
        removed: no kept block's weights change), and one with no kept block after it is dropped
        (the final norm ignores the stream's scale). Factors on one block multiply.

        >>> compose_rounds(6, [([2], {3: 2.0}), ([2], {3: 1.5})])   # round 2 removes block 3, then at 4
        ([2, 3], {4: 3.0})
    """
    alive = list(range(num_layers))  # the original number of each block of the model a round prunes
    removed: list[int] = []
    placed: dict[int, float] = {}
    for blocks, factors in rounds:
        for block, factor in factors.items():
            placed[alive[block]] = placed.get(alive[block], 1.0) * float(factor)
        gone = {alive[b] for b in blocks}
        removed += sorted(gone)
        alive = [b for b in alive if b not in gone]
    composed: dict[int, float] = {}
    for block, factor in sorted(placed.items()):
        after = next((b for b in alive if b >= block), None)
        if after is not None:
            composed[after] = composed.get(after, 1.0) * factor
    return sorted(removed), composed


# --------------------------------------------------------------------------- the model


@contextmanager
def pruned_in_rounds(model: nn.Module) -> Iterator[Callable[[Any], None]]:
    """Inside the ``with`` block, ``prune(plan)`` prunes ``model`` in place (the plan in its current
    numbering, its compensation folded in); on leaving it, the model is exactly as it was."""
    from lorp_lightning.surgery import _prune, _put_back, save_stack

    saved = save_stack(model)
    originals: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}  # id -> (the writer, its values before any fold)

    def prune(plan: Any) -> None:
        if plan.compensation is not None:
            layers = decoder_layers(model)
            kept = [i for i in range(len(layers)) if i not in set(plan.pruned)]
            factors = {f["block"]: f["factor"] for f in plan.compensation["factors"]}
            architecture = architecture_of(model)
            for index, scale in zip(kept, compensation.writer_scales(kept, factors), strict=True):
                if scale != 1.0:
                    for parameter in compensation.writers(layers[index], architecture):
                        originals.setdefault(id(parameter), (parameter, parameter.detach().clone()))
        _prune(model, plan, inplace=True, check_cache=False)

    try:
        yield prune
    finally:
        _put_back(model, saved)
        with torch.no_grad():
            for parameter, values in originals.values():
                parameter.copy_(values)


def select_in_rounds(model: nn.Module, windows: torch.Tensor, stats: Any, sizes: Sequence[int], protected: Sequence[int],
                     select_round: Callable[[Any, int, list[int], bool], Any], *, collect: bool,
                     progress: bool = False) -> dict[str, Any]:
    """Select in rounds of ``sizes`` blocks (see the module docs).

    Args:
        model: the model; changed in place while the rounds run, then put back as it was.
        windows: the calibration windows (B, T); each round after the first collects the
            statistics on all of them again when ``collect`` is set.
        stats: the statistics of the unpruned model (the first round's).
        sizes: the blocks each round removes (``round_sizes``).
        protected: the blocks never pruned, in the original numbering.
        select_round: ``(stats, size, protected, first) -> PruningPlan`` on the model as it is
            (current numbering; ``first``: the first round, which may share checks).
        collect: collect the statistics again between rounds (the method reads them, or
            compensation reads their norms); else later rounds get None.
        progress: show the progress of the statistics passes.

    Returns:
        ``pruned`` and ``factors`` (``compose_rounds``), ``rounds`` (one record per round: its
        blocks in the original numbering and what its plan chose) and the summed ``cost``.
    """
    from lorp_lightning.stats import collect_layer_stats

    num_layers = len(decoder_layers(model))
    alive = list(range(num_layers))
    steps: list[tuple[list[int], dict[int, float]]] = []
    records: list[dict[str, Any]] = []
    cost = {"statistics_windows": 0, "check_windows": 0, "plans_checked": 0, "seconds": 0.0}
    with pruned_in_rounds(model) as prune:
        for r, size in enumerate(sizes):
            start = time.perf_counter()
            passes = 0
            if r and collect:
                stats = collect_layer_stats(model, windows.split(STATISTICS_BATCH), progress=progress)
                passes = len(windows)
            elif r:
                stats = None
            seconds = time.perf_counter() - start
            plan = select_round(stats, size, [i for i, b in enumerate(alive) if b in set(protected)], r == 0)
            factors = {} if plan.compensation is None else {f["block"]: f["factor"] for f in plan.compensation["factors"]}
            steps.append((plan.pruned, factors))
            records.append({
                "pruned": [alive[b] for b in plan.pruned], "num_layers": len(alive), "rls": plan.rls,
                "num_clusters": plan.num_clusters,
                "compensation": None if plan.compensation is None else
                {"strength": plan.compensation["strength"], "tried": plan.compensation["tried"]},
            })
            round_cost = dict(plan.cost)
            round_cost["statistics_windows"] = (round_cost.get("statistics_windows") or 0) if r == 0 else passes
            for key in ("statistics_windows", "check_windows", "plans_checked"):
                cost[key] += round_cost.get(key) or 0
            cost["seconds"] += seconds + round_cost["seconds"]
            if r + 1 < len(sizes):
                prune(plan)
                alive = [b for i, b in enumerate(alive) if i not in set(plan.pruned)]
    pruned, factors = compose_rounds(num_layers, steps)
    return {"pruned": pruned, "factors": factors, "rounds": records, "cost": cost}

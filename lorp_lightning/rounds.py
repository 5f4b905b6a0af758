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
from lorp_lightning._validation import ParameterError, is_integer
from lorp_lightning.architectures import architecture_of, decoder_layers
from lorp_lightning.selection import PruningPlan

__all__ = ["PruningSchedule", "STATISTICS_BATCH", "compose_plans", "compose_rounds", "round_sizes", "select_in_rounds"]

STATISTICS_BATCH = 4  # windows per forward pass when a round collects the statistics again


# --------------------------------------------------------------------------- the mathematics


def round_sizes(num_prune: int, rounds: int) -> list[int]:
    """The blocks each round removes: ``num_prune`` split as evenly as possible, the larger parts first.

    >>> round_sizes(7, 3)
    [3, 2, 2]
    """
    if not 1 <= rounds <= num_prune:
        raise ParameterError("rounds", f"rounds must be between 1 and the {num_prune} blocks to prune, got rounds={rounds!r}")
    whole, rest = divmod(num_prune, rounds)
    return [whole + 1] * rest + [whole] * (rounds - rest)


def compose_rounds(
    num_layers: int, rounds: Sequence[tuple[Sequence[int], Mapping[int, float]]]
) -> tuple[list[int], dict[int, float]]:
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
            factors = plan.factors
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


def compose_plans(plans: Sequence[PruningPlan], protected: Sequence[int]) -> PruningPlan:
    """The one plan, in the original numbering, of ``plans`` applied one after another, each to the model the
    ones before it left (its own numbering): the union of their blocks, their factors composed
    (``compose_rounds``), and ``rounds``, one record per plan. One plan is returned as it is.

    ``protected``: the blocks never pruned, in the original numbering. The cost is the caller's to add.
    """
    if len(plans) == 1:
        return plans[0]
    num_layers = plans[0].num_layers
    alive = list(range(num_layers))
    steps: list[tuple[list[int], dict[int, float]]] = []
    records: list[dict[str, Any]] = []
    for plan in plans:
        if plan.num_layers != len(alive):
            raise ValueError(f"a plan for {plan.num_layers} blocks cannot follow plans that left {len(alive)}")
        steps.append((plan.pruned, plan.factors))
        records.append(
            {
                "pruned": [alive[b] for b in plan.pruned],
                "num_layers": plan.num_layers,
                "rls": plan.rls,
                "num_clusters": plan.num_clusters,
                "compensation": None
                if plan.compensation is None
                else {"strength": plan.compensation["strength"], "tried": plan.compensation["tried"]},
            }
        )
        alive = [b for i, b in enumerate(alive) if i not in set(plan.pruned)]
    pruned, factors = compose_rounds(num_layers, steps)
    composed = PruningPlan(
        method=plans[0].method,
        num_layers=num_layers,
        pruned=pruned,
        kept=[b for b in range(num_layers) if b not in set(pruned)],
        protected=sorted(protected),
        rounds=records,
    )
    if any(plan.compensation is not None for plan in plans):
        composed.compensation = {
            "strength": None,
            "factors": [{"block": b, "factor": f} for b, f in sorted(factors.items())],
            "tried": [],
            "check_windows": 0,
        }
    return composed


def add_round_cost(cost: dict[str, Any], plan: PruningPlan, first: bool) -> None:
    """Add a round's selection cost to ``cost``: its checks, plans checked and seconds, and for the first
    round the statistics pass it read (a later round's own pass is counted where it runs)."""
    if first:
        cost["statistics_windows"] += plan.cost.get("statistics_windows") or 0
    for key in ("check_windows", "plans_checked", "seconds"):
        cost[key] += plan.cost.get(key) or 0


def select_in_rounds(
    model: nn.Module,
    windows: torch.Tensor,
    stats: Any,
    sizes: Sequence[int],
    protected: Sequence[int],
    select_round: Callable[[Any, int, list[int], bool], PruningPlan],
    *,
    collect: bool,
    progress: bool = False,
) -> PruningPlan:
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
        The plans composed (``compose_plans``), with the rounds' costs summed: window passes of
        checks and of the statistics collected again, plans checked, and seconds.
    """
    from lorp_lightning.stats import collect_layer_stats

    alive = list(range(len(decoder_layers(model))))
    plans: list[PruningPlan] = []
    cost = {"statistics_windows": 0, "check_windows": 0, "plans_checked": 0, "seconds": 0.0}
    with pruned_in_rounds(model) as prune:
        for r, size in enumerate(sizes):
            start = time.perf_counter()
            if r:
                stats = collect_layer_stats(model, windows.split(STATISTICS_BATCH), progress=progress) if collect else None
                cost["statistics_windows"] += len(windows) if collect else 0
            cost["seconds"] += time.perf_counter() - start
            plan = select_round(stats, size, [i for i, b in enumerate(alive) if b in set(protected)], r == 0)
            plans.append(plan)
            add_round_cost(cost, plan, first=r == 0)
            if r + 1 < len(sizes):
                prune(plan)
                alive = [b for i, b in enumerate(alive) if i not in set(plan.pruned)]
    composed = compose_plans(plans, protected)
    composed.cost = cost
    return composed


# --------------------------------------------------------------------------- a schedule, for pruning during training


class PruningSchedule:
    """When a progressive pruning has removed how many blocks, as Lightning's ``ModelPruning`` takes it.

        PruningSchedule([(0, 2), (100, 4), (200, 0.25)])   # 2 blocks by step 0, 4 by step 100, a quarter by 200
        PruningSchedule(lambda epoch: 2 * (epoch + 1))      # a callable of the epoch

    Each amount is the total removed by then, of the unpruned model's blocks: a count (an int >= 1)
    or a fraction (a float in (0, 1), rounded down), the budget rule of ``select_layers``. A list
    gives (optimizer step, amount) pairs, the steps strictly increasing; the pair applies from the
    first pruning point at or after its step. A callable of the epoch may return 0 for nothing yet.
    The amounts must grow by at least one block from one entry to the next and stay within the
    unprotected blocks (``blocks``): anything else is refused with a ValueError naming the schedule.
    """

    def __init__(self, schedule: Sequence[tuple[int, int | float]] | Callable[[int], int | float]) -> None:
        from lorp_lightning.selection import is_budget

        self.schedule = schedule
        if callable(schedule):
            self.entries = None
            return
        if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence) or not schedule:
            raise ValueError(
                f"a schedule must be a non-empty list of (step, amount) pairs or a callable of the epoch, got {schedule!r}"
            )
        entries = []
        for entry in schedule:
            if not (
                isinstance(entry, Sequence) and len(entry) == 2 and is_integer(entry[0]) and entry[0] >= 0 and is_budget(entry[1])
            ):
                raise ValueError(
                    f"the schedule {schedule!r} holds {entry!r}, which is not a pair (step, amount) of an "
                    "optimizer step (an int >= 0) and an amount (a count >= 1 or a fraction in (0, 1))"
                )
            entries.append((int(entry[0]), int(entry[1]) if is_integer(entry[1]) else float(entry[1])))
        steps = [step for step, _ in entries]
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"the steps of the schedule {schedule!r} must strictly increase, got {steps}")
        self.entries = entries

    def __repr__(self) -> str:
        return repr(self.schedule) if self.entries is not None else getattr(self.schedule, "__name__", repr(self.schedule))

    def blocks(self, num_layers: int, num_unprotected: int) -> list[int] | None:
        """The total blocks removed after each entry of a list (None for a callable), checked: growing by at
        least one block each, and within the ``num_unprotected`` blocks of a model of ``num_layers``."""
        if self.entries is None:
            return None
        totals = [self._resolve(amount, num_layers, num_unprotected, f"step {step}") for step, amount in self.entries]
        if any(b <= a for a, b in zip(totals, totals[1:], strict=False)):
            raise ValueError(
                f"the schedule {self!r} removes {totals} blocks of {num_layers} at its steps: each entry must "
                "remove at least one block more than the one before (amounts that decrease, or fractions "
                "that round down to the same whole number of blocks, are not a schedule)"
            )
        return totals

    def due(self, step: int, epoch: int, num_layers: int, num_unprotected: int) -> int:
        """The total blocks removed by optimizer step ``step`` in epoch ``epoch`` (0 before the first entry)."""
        if self.entries is not None:
            totals = self.blocks(num_layers, num_unprotected)
            reached = [total for (at, _), total in zip(self.entries, totals, strict=True) if at <= step]
            return reached[-1] if reached else 0
        amount = self.schedule(epoch)
        if is_integer(amount) and amount == 0:
            return 0
        return self._resolve(amount, num_layers, num_unprotected, f"epoch {epoch}")

    def _resolve(self, amount: Any, num_layers: int, num_unprotected: int, when: str) -> int:
        from lorp_lightning.selection import resolve_budget

        try:
            return resolve_budget(amount, num_layers, num_unprotected)
        except ValueError as error:
            raise ValueError(f"the schedule {self!r} asks at {when} for amount={amount!r}: {error}") from error

"""Progressive prune-heal in one call: the budget removed in rounds, each round healed before the next is selected.

    plan = prune_and_heal(model, tokenizer, stats, 0.25, rounds=3, steps=300, windows=calibration)

Round r removes its part of the budget (``rounds.round_sizes``), selected with ``method`` on the model
as the rounds before it left it (its statistics collected again on ``windows``), then heals for its part of
the ``steps`` (``heal``: LoRA by default, merged into the weights before the next round looks at the model).
The same optimizer steps in all as one pruning followed by ``heal(..., steps=steps)``, spent between the
rounds. In a Lightning project the same is ``LoRPPruneCallback`` given a schedule with a
``LoRPHealCallback`` after it; this function is what ``lorp prune --rounds R --heal-steps N`` runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lorp_lightning._validation import ParameterError, check_int
from lorp_lightning.architectures import decoder_layers
from lorp_lightning.methods import DEFAULT_METHOD, select_layers
from lorp_lightning.recipes.heal import heal
from lorp_lightning.rounds import STATISTICS_BATCH, add_round_cost, compose_plans, round_sizes
from lorp_lightning.selection import PruningPlan, protected_blocks, resolve_budget
from lorp_lightning.stats import collect_layer_stats
from lorp_lightning.surgery import prune_layers

__all__ = ["prune_and_heal"]


def prune_and_heal(
    model: nn.Module,
    tokenizer: Any,
    stats: Any,
    amount: int | float,
    *,
    rounds: int,
    steps: int,
    windows: torch.Tensor,
    method: str = DEFAULT_METHOD,
    num_clusters: int | None = None,
    protect: Iterable[int] | None = None,
    seed: int = 0,
    compensate: bool = False,
    progress: bool = False,
    **heal_options: Any,
) -> PruningPlan:
    """Prune ``model`` in place in ``rounds`` rounds, healing after each; return the plan of all rounds.

    Args:
        model: a Hugging Face causal LM of a family ``prune_layers`` knows; pruned and healed in place.
        tokenizer: its tokenizer (for ``heal``).
        stats: the statistics of ``model`` as given (the first round's).
        amount: the budget, a count or a fraction of the blocks (``select_layers``' rule).
        rounds: the rounds (an int from 1 to the blocks of the budget).
        steps: optimizer steps of healing in all, split over the rounds as evenly as possible (the
            earlier rounds take the extra steps); at least one per round.
        windows: the calibration windows (B, T) the selections check plans on and the later rounds
            collect their statistics on.
        method: the selection method of every round (``select_layers``; default ``DEFAULT_METHOD``).
        num_clusters: ``"lorp"`` only: each round's K forced.
        protect: the blocks never pruned, in the numbering of ``model`` as given (default: the
            first and the last).
        seed: the selections' seed; round r (from 0) heals with ``seed + r``, so that each round draws its own
            order of the healing windows (with one seed, every round would train on the first round's first
            batches again).
        compensate: each round's compensation chosen and folded (``select_layers(..., compensate=True)``).
        progress: show progress bars.
        heal_options: the other arguments of ``heal`` (``text``, ``mode``, ``lr``, ``window``,
            ``batch_size``, ``teacher``, ...); each round heals with them.

    Returns:
        The plans of the rounds composed in the original numbering (``rounds.compose_plans``),
        with their summed ``cost`` (window passes of statistics and checks, plans checked, and the
        seconds of selection; healing's are in each healing's record).
    """
    rounds = check_int(rounds, "rounds")
    steps = check_int(steps, "steps")
    num_layers = len(decoder_layers(model))
    protected = protected_blocks(protect, num_layers)
    sizes = round_sizes(resolve_budget(amount, num_layers, num_layers - len(protected)), rounds)
    if steps < rounds:
        raise ParameterError(
            "steps", f"steps={steps} heals fewer steps than the {rounds} rounds: give each round at least one (steps >= {rounds})"
        )
    heal_steps = round_sizes(steps, rounds)
    alive = list(range(num_layers))
    plans: list[PruningPlan] = []
    cost = {"statistics_windows": 0, "check_windows": 0, "plans_checked": 0, "seconds": 0.0}
    for r, (size, round_steps) in enumerate(zip(sizes, heal_steps, strict=True)):
        if r:
            start = time.perf_counter()
            stats = collect_layer_stats(model, windows.split(STATISTICS_BATCH), progress=progress)
            cost["seconds"] += time.perf_counter() - start
            cost["statistics_windows"] += len(windows)
        plan = select_layers(
            stats,
            size,
            method=method,
            num_clusters=num_clusters,
            protect=[i for i, b in enumerate(alive) if b in protected],
            seed=seed,
            model=model,
            windows=windows,
            compensate=compensate,
            progress=progress,
        )
        add_round_cost(cost, plan, first=r == 0)
        prune_layers(model, plan)
        heal(model, tokenizer, steps=round_steps, seed=seed + r, progress=progress, **heal_options)
        plans.append(plan)
        alive = [b for i, b in enumerate(alive) if i not in set(plan.pruned)]
    composed = compose_plans(plans, sorted(protected))
    composed.cost = cost
    return composed

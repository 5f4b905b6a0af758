"""Plan stability: would the method choose the same blocks on another draw of the calibration windows?

A bootstrap over windows. Resample b draws W of the W calibration windows with replacement
(``resample_counts``: c_bw, how many times window w is drawn). Every statistic is a sum over
windows, so the resample's statistics are ``stats.per_window.combine(c_b)``,

    S_b = (sum_w c_bw G_w) / (sum_w c_bw n_w),

and no forward pass is needed for a method that reads the statistics alone. A method that tries
plans on the model (``lorp_search``, ``sleb``, ``ppl``, ...) also checks them on a bootstrap of its
check windows: resample b weighs window w's loss by how often it is drawn (``ResampledPlanLoss``).
Every plan is run once on the check windows and its window losses are shared by all resamples, so
the resamples cost the window passes of the plans that no earlier resample (nor the full-data
selection) checked; the report states them.

The report (`Stability`) gives each block's removal frequency, how often the plan equals the
full-data plan (``agreement``), the mean share of the full-data plan's blocks a resample keeps
choosing (``mean_overlap``), and for ``lorp``-based methods the RLS and K of every resample.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lorp_lightning._validation import ParameterError, is_integer
from lorp_lightning.methods import CHECK_TOKENS, SCORE_LAST, _checks, get_method, select_layers
from lorp_lightning.search import PlanLoss, ResampledPlanLoss
from lorp_lightning.selection import PruningPlan
from lorp_lightning.stats import LayerStats

__all__ = ["MAX_RESAMPLES", "Stability", "check_resamples", "plan_stability", "resample_counts"]

MAX_RESAMPLES = 10_000


def check_resamples(resamples: Any, name: str = "resamples") -> int:
    """``resamples`` as an int in 1..MAX_RESAMPLES, else a ParameterError naming the value."""
    if not is_integer(resamples) or not 1 <= int(resamples) <= MAX_RESAMPLES:
        raise ParameterError(name, f"{name} must be an int from 1 to {MAX_RESAMPLES:,}, got {resamples!r}")
    return int(resamples)


def resample_counts(num_windows: int, resamples: int, seed: int = 0) -> Tensor:
    """(resamples, num_windows) int64: row b counts how many times each window is drawn in resample b,
    num_windows draws with replacement from a ``torch.Generator`` seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(num_windows, (resamples, num_windows), generator=generator)
    return torch.zeros(resamples, num_windows, dtype=torch.int64).scatter_add_(1, draws, torch.ones_like(draws))


@dataclass
class Stability:
    """How stable one method's plan is against its calibration windows.

    Attributes:
        method: the method's name.
        num_layers: N.
        num_prune: k, the blocks each plan removes.
        plan: the full-data plan's blocks.
        plans: the blocks each resample's plan removes, one list per resample.
        rls: the RLS of each resample's statistics (methods built on LoRP's analysis), else None.
        num_clusters: the K of each resample, likewise.
        window_passes: the window passes the resamples ran on the model, for the plans no earlier
            selection had checked (0 for a method that reads the statistics alone).
        seconds: the resamples' selection time (the full-data plan's not included).
        resample_seed: the seed of the resample draws.
    """

    method: str
    num_layers: int
    num_prune: int
    plan: list[int]
    plans: list[list[int]]
    rls: list[float] | None = None
    num_clusters: list[int] | None = None
    window_passes: int = 0
    seconds: float = field(default=0.0, compare=False)
    resample_seed: int = 0

    @property
    def resamples(self) -> int:
        return len(self.plans)

    @property
    def removal_frequency(self) -> list[float]:
        """For each block, the share of resamples whose plan removes it."""
        counts = Counter(block for plan in self.plans for block in plan)
        return [counts[block] / self.resamples for block in range(self.num_layers)]

    @property
    def agreement(self) -> float:
        """The share of resamples whose plan is the full-data plan."""
        return sum(plan == self.plan for plan in self.plans) / self.resamples

    @property
    def mean_overlap(self) -> float:
        """The mean, over resamples, of the share of the full-data plan's blocks the resample's plan also removes."""
        full = set(self.plan)
        return sum(len(full.intersection(plan)) for plan in self.plans) / (self.resamples * len(full))

    def summary(self) -> dict[str, Any]:
        """The report as plain values (what ``report.json`` stores)."""
        spread = {}
        if self.rls is not None:
            spread["rls"] = {
                "mean": statistics.fmean(self.rls),
                "sd": statistics.pstdev(self.rls),
                "min": min(self.rls),
                "max": max(self.rls),
            }
        if self.num_clusters is not None:
            spread["num_clusters"] = {str(k): n for k, n in sorted(Counter(self.num_clusters).items())}
        distinct = Counter(tuple(plan) for plan in self.plans).most_common()
        return {
            "method": self.method,
            "num_prune": self.num_prune,
            "resamples": self.resamples,
            "resample_seed": self.resample_seed,
            "plan": self.plan,
            "agreement": self.agreement,
            "mean_overlap": self.mean_overlap,
            "removal_frequency": self.removal_frequency,
            "plans": [{"pruned": list(plan), "resamples": n} for plan, n in distinct],
            **spread,
            "cost": {"check_windows": self.window_passes, "seconds": self.seconds},
        }

    def describe(self) -> str:
        """Two lines for a terminal: agreement and overlap, and the blocks not always chosen alike."""
        frequency = self.removal_frequency
        unsure = [f"{b}: {f:.0%}" for b, f in enumerate(frequency) if 0 < f < 1]
        line = (
            f"{self.method} over {self.resamples} resamples: the plan {self.plan} in {self.agreement:.0%}, "
            f"mean overlap {self.mean_overlap:.0%}"
        )
        if self.rls is not None:
            line += f"; RLS {min(self.rls):.3f}-{max(self.rls):.3f}, K {sorted(set(self.num_clusters or []))}"
        return line + ("\n  removed in some resamples only: " + ", ".join(unsure) if unsure else "")


def plan_stability(
    stats: LayerStats,
    num_prune: int | float,
    method: str = "lorp",
    resamples: int = 20,
    resample_seed: int = 0,
    *,
    plan: PruningPlan | None = None,
    model: Any = None,
    windows: Any = None,
    check_windows: int | None = None,
    shared_checks: PlanLoss | None = None,
    transform: Callable[[LayerStats], Any] | None = None,
    progress: bool = False,
    **options: Any,
) -> Stability:
    """Select with ``method`` on ``resamples`` bootstrap resamples of the calibration windows.

    Args:
        stats: statistics collected with ``per_window=True`` (``collect_layer_stats``, or ``lorp
            analyze``'s ``stats.pt``), whose per-window sums the resamples reweight.
        num_prune: the budget, as ``select_layers`` takes it.
        method: a name of ``METHODS`` (default ``"lorp"``).
        resamples: B, from 1 to ``MAX_RESAMPLES``.
        resample_seed: the seed of the draws (the method's own seed is ``seed``, among ``options``).
        plan: the full-data plan, if already chosen (else it is selected here, and not counted in
            the cost).
        model: for a method that tries plans on the model, the model, as ``select_layers`` takes it.
        windows: for such a method, the calibration windows; each resample checks its plans on a
            bootstrap of the first ``check_windows`` of them.
        check_windows: how many of ``windows`` the checks resample (default ``CHECK_WINDOWS``).
        shared_checks: instead of ``model``, ``windows`` and ``check_windows``, the ``PlanLoss`` whose windows the
            checks resample, e.g. the one the full-data ``plan`` was chosen with: the plans it has run cost the
            resamples nothing.
        transform: a function of each resample's statistics (and of ``stats``, for the full-data plan when
            ``plan`` is not given) whose result the method selects on instead: another locality metric, say
            (``locality.angular_similarity``); default None, the statistics themselves.
        progress: a progress bar over the resamples.
        **options: further ``select_layers`` arguments (``protect``, ``num_clusters``, ``seed``, ...).
            Plans in rounds are not resampled: ``rounds`` must be 1.
    """
    from tqdm.auto import tqdm

    resamples = check_resamples(resamples)
    if not is_integer(resample_seed) or resample_seed < 0:
        raise ParameterError("resample_seed", f"resample_seed must be an int >= 0, got {resample_seed!r}")
    if options.get("rounds", 1) not in (None, 1):
        raise ParameterError("rounds", f"plan stability resamples one-shot plans; got rounds={options['rounds']!r}")
    if not isinstance(stats, LayerStats) or stats.per_window is None:
        raise ParameterError(
            "stats",
            "plan stability needs statistics with per-window sums: collect them with "
            "collect_layer_stats(..., per_window=True) (lorp analyze --stability writes them to stats.pt)",
        )
    entry = get_method(method)
    transform = transform or (lambda given: given)
    base = None  # the check windows' PlanLoss, whose plan losses every resample reweights
    if entry.reads_model:
        base = shared_checks if shared_checks is not None else _check_loss(method, model, windows, check_windows, options)
    if plan is None:
        plan = select_layers(transform(stats), num_prune, method=method, shared_checks=base, **options)
    counts = resample_counts(stats.per_window.num_windows, resamples, resample_seed)
    check_counts = None
    if base is not None:  # the check windows' draws: resample_counts again, with the next seed
        check_counts = resample_counts(len(base.windows), resamples, resample_seed + 1)
        passes_before = base.passes_run
    plans, rls, clusters = [], [], []
    start = time.perf_counter()
    for b in tqdm(range(resamples), desc=f"stability of {method}", unit="resample", disable=not progress):
        resampled = transform(stats.per_window.combine(counts[b]))
        checks = ResampledPlanLoss(base, check_counts[b]) if base is not None else None
        chosen = select_layers(resampled, len(plan.pruned), method=method, shared_checks=checks, **options)
        plans.append(list(chosen.pruned))
        rls.append(chosen.rls)
        clusters.append(chosen.num_clusters)
    passes = base.passes_run - passes_before if base is not None else 0  # the plans no earlier selection had run
    return Stability(
        method=plan.method,
        num_layers=plan.num_layers,
        num_prune=len(plan.pruned),
        plan=list(plan.pruned),
        plans=plans,
        rls=None if None in rls else [float(x) for x in rls],
        num_clusters=None if None in clusters else [int(k) for k in clusters],
        window_passes=passes,
        seconds=time.perf_counter() - start,
        resample_seed=resample_seed,
    )


def _check_loss(method: str, model: Any, windows: Any, check_windows: int | None, options: dict[str, Any]) -> PlanLoss:
    """The ``PlanLoss`` that ``select_layers`` would check ``method``'s plans with (the first ``check_windows`` of
    ``windows``, cut to ``check_tokens`` and scored on ``score_last``, both taken out of ``options``), checked alike."""
    model, windows, check_windows, check_tokens, score_last = _checks(
        method,
        model,
        windows,
        check_windows,
        options.pop("check_tokens", CHECK_TOKENS),
        options.pop("score_last", SCORE_LAST),
        None,
    )
    return PlanLoss(model, windows[:check_windows, :check_tokens], score_last=score_last)

"""The method registry: every way of choosing blocks to prune, by name, in one table.

    plan = select_layers(stats, 0.25)                                   # LoRP as published
    plan = select_layers(stats, 7, method="shortgpt")                   # a baseline; reads the statistics only
    plan = select_layers(stats, 0.25, method="lorp_search", model=model, windows=windows)  # the default of
                                                                        # the callback and the CLI: tries plans

Each entry of ``REGISTRY`` is a ``Method``: a selector, a function of one
``SelectionContext`` that returns the blocks to prune (or a whole
``PruningPlan``), and what it reads: the statistics, the model
and calibration windows, or both. ``select_layers`` resolves the budget and the protected
set, calls the selector, checks its plan, and records the plan's cost (window passes and
seconds). A plain function with the selector's signature can stand in for a name wherever a
method is taken (``select_layers``, ``LoRPPruneCallback(method=...)``).

Adding a method means adding one entry here.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from lorp_lightning import baselines
from lorp_lightning._validation import ParameterError, check_choice, check_int, is_integer, option, with_keywords
from lorp_lightning.architectures import decoder_layers
from lorp_lightning.locality import (
    Similarities,
    allocate_lorp,
    block_redundancy,
    cluster_layers,
    clusters_for_rls,
    read_similarities,
    representation_locality_score,
)
from lorp_lightning.search import as_windows, candidate_plans
from lorp_lightning.selection import PruningPlan, is_budget, parse_budget, protected_blocks, resolve_budget
from lorp_lightning.stats import LayerStats, collect_layer_stats

__all__ = [
    "CHECK_WINDOWS",
    "DEFAULT_METHOD",
    "METHODS",
    "Method",
    "PruneSettings",
    "REGISTRY",
    "CHECK_TOKENS",
    "SCORE_LAST",
    "SEARCH_RUNS",
    "SelectionContext",
    "STATS_METHODS",
    "get_method",
    "select_checked",
    "select_layers",
]

DEFAULT_METHOD = "lorp_search"  # of LoRPPruneCallback and `lorp prune`
CHECK_WINDOWS = 8  # calibration windows each loss check runs (the first ones given)
CHECK_TOKENS = 256  # tokens of each check window (its first ones)
SCORE_LAST = 128  # predicted tokens scored per check window (the last ones)
SEARCH_RUNS = 6  # lorp_search: the runs of k blocks it checks beside LoRP's candidates (docs/method.md)


@dataclass(frozen=True)
class PruneSettings:
    """The checked settings of one pruning: how much, by which method, and how. ``select_layers``,
    ``LoRPPruneCallback`` and ``lorp prune`` build one from their arguments and check it once, or take it whole
    (``settings=``), an argument given as well replacing its own.

        settings = PruneSettings(0.25, method="lorp_search", compensate=True)
        plan = select_layers(stats, settings=settings, model=model, windows=windows)
        LoRPPruneCallback(settings=settings)

    The checks here need no model; those that need its depth (the budget against the unprotected blocks, ``protect``
    and ``num_clusters`` against N, ``rounds`` against the blocks to prune) come when the model is known.

    Attributes:
        amount: an int (a count of blocks) or a float in (0, 1) (a fraction of them, rounded down); None only where a
            schedule gives the amounts (``LoRPPruneCallback``).
        method: a name of ``METHODS``, or a callable taking a ``SelectionContext`` and returning the blocks to prune.
        num_clusters: ``"lorp"`` only: force K instead of deriving it from the RLS.
        protect: block indices never pruned (default None: the first and the last block; ``()``: none).
        seed: the seed of the clustering (``"lorp"``) or of the draw (``"random"``).
        compensate: also choose the compensation of the plan (``lorp_lightning.compensation``).
        rounds: select the budget in this many rounds (``lorp_lightning.rounds``).
    """

    amount: int | float | None = option(0.25, "fraction of the blocks in (0, 1), or a block count", parse=parse_budget)
    method: str | Callable = option(
        DEFAULT_METHOD,
        f"{DEFAULT_METHOD} (the default: the locality analysis's candidate plans checked and improved on "
        "the calibration loss of the first 8 calibration windows), lorp (the paper's method, as published), "
        "lorp_checked, sleb, ppl, shortgpt, streamline, angular, random or last",
    )
    num_clusters: int | None = option(None, "lorp: force K instead of deriving it from the RLS")
    protect: tuple[int, ...] | None = None
    seed: int = option(0, "clustering / random seed")
    compensate: bool = option(
        False,
        "fold a training-free correction of the stream's scale at each gap into the kept "
        "weights, its strength chosen on the calibration loss of the first 8 calibration "
        "windows (docs/method.md, Compensation)",
    )
    rounds: int = option(
        1,
        "select the budget in R rounds, the statistics collected again on the partly pruned (and, "
        "with compensation, compensated) model between rounds (docs/method.md, Rounds; 1: one shot)",
    )

    def __post_init__(self) -> None:
        amount = self.amount
        if amount is not None and not is_budget(amount):  # the one budget rule; the message says what was wrong
            if is_integer(amount):
                what = f"amount={amount!r} prunes no block: pass a count >= 1 or a fraction in (0, 1)"
            elif isinstance(amount, numbers.Real) and not isinstance(amount, bool):
                what = (
                    f"amount={float(amount)!r} is not a fraction in (0, 1): pass e.g. 0.25 for a quarter of the blocks, "
                    "or an int count"
                )
            else:
                what = (
                    f"amount must be an int (a number of blocks) or a float in (0, 1) (a fraction of them), got amount={amount!r}"
                )
            raise ParameterError("amount", what)
        entry = get_method(self.method)  # a ParameterError naming the methods for an unknown name
        if self.num_clusters is not None:
            if entry.name != "lorp":
                raise ParameterError(
                    "num_clusters",
                    f"num_clusters applies only to method='lorp', got "
                    f"num_clusters={self.num_clusters!r} with method={entry.name!r}",
                )
            check_int(self.num_clusters, "num_clusters", what="a positive int or None")
        protect = self.protect
        if protect is not None:
            if isinstance(protect, (str, bytes)) or not isinstance(protect, Iterable):
                raise ParameterError("protect", f"protect must be a list of block indices or None, got protect={protect!r}")
            protect = tuple(protect)
            for p in protect:
                if not (is_integer(p) and p >= 0):
                    raise ParameterError("protect", f"protect holds {p!r}, which is not a block index (an int >= 0)")
            protect = tuple(int(p) for p in protect)
        if not isinstance(self.compensate, bool):
            raise ParameterError("compensate", f"compensate must be True or False, got compensate={self.compensate!r}")
        checked = dict(
            amount=None if amount is None else int(amount) if is_integer(amount) else float(amount),
            num_clusters=None if self.num_clusters is None else int(self.num_clusters),
            protect=protect,
            seed=check_int(self.seed, "seed", low=0),
            rounds=check_int(self.rounds, "rounds"),
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def entry(self) -> Method:
        """The method's entry of the table (``get_method``)."""
        return get_method(self.method)

    @classmethod
    def of(
        cls,
        settings: PruneSettings | None,
        amount: Any = None,
        method: Any = None,
        num_clusters: Any = None,
        protect: Any = None,
        seed: Any = None,
        compensate: Any = None,
        rounds: Any = None,
    ) -> PruneSettings:
        """``settings`` with the arguments given (those not None) in place of its own, or the settings of the
        arguments alone: how ``select_layers``, the callback and the CLI take ``settings=`` as well as arguments."""
        arguments = dict(
            amount=amount,
            method=method,
            num_clusters=num_clusters,
            protect=protect,
            seed=seed,
            compensate=compensate,
            rounds=rounds,
        )
        return with_keywords(cls, settings, arguments)


@dataclass(frozen=True)
class SelectionContext:
    """What a selector may read.

    Attributes:
        method: the method's name (a callable's ``__name__``).
        stats: the ``LayerStats`` or plain N x N similarity given,
            or None for a method that reads only the model.
        num_layers: N, the blocks of the model.
        num_prune: k, the blocks to prune (the budget already resolved).
        protected: the blocks never pruned, ascending.
        seed: the seed (clustering for ``lorp``, draw for ``random``).
        num_clusters: ``lorp``: K forced, else None.
        model: the model, for methods that try plans on it (else None). A selector must leave it
            as it was (``temporarily_pruned`` does).
        windows: the calibration windows, a (B, T) tensor of token ids, or None.
        check_windows, check_tokens, score_last: the loss checks' settings (``CHECK_WINDOWS``,
            ``CHECK_TOKENS``, ``SCORE_LAST``).
        progress: show progress bars.
        shared_checks: a PlanLoss shared by several selections (see ``select_layers``), or None.
        cost: a selector adds what it ran here (e.g. ``check_windows``: window passes of loss checks).
    """

    method: str
    stats: Any
    num_layers: int
    num_prune: int
    protected: tuple[int, ...]
    seed: int = 0
    num_clusters: int | None = None
    model: Any = None
    windows: Any = None
    check_windows: int = CHECK_WINDOWS
    check_tokens: int | None = CHECK_TOKENS
    score_last: int | None = SCORE_LAST
    progress: bool = False
    cost: dict[str, Any] = field(default_factory=dict)

    shared_checks: Any = None
    checks: list[Any] = field(default_factory=list)

    def plan_loss(self):
        """The ``PlanLoss`` over the first ``check_windows`` calibration windows."""
        from lorp_lightning.search import PlanLoss

        loss = (
            self.shared_checks.start()
            if self.shared_checks is not None
            else PlanLoss(self.model, self.windows[: self.check_windows, : self.check_tokens], score_last=self.score_last)
        )
        self.checks.append(loss)  # select_layers reads the cost of the checks from it
        return loss


@dataclass(frozen=True)
class Method:
    """One entry of the registry: a selector and what it reads."""

    name: str
    select: Callable[[SelectionContext], Sequence[int] | PruningPlan]
    summary: str
    reads_stats: bool = True
    reads_model: bool = False


# --------------------------------------------------------------------------------------------
# selectors that read the statistics only (the mathematics is in locality.py and baselines.py)


def _inputs(ctx: SelectionContext) -> Similarities:
    return read_similarities(ctx.stats, ctx.method)


def _lorp(ctx: SelectionContext) -> PruningPlan:
    S = _inputs(ctx).blocks
    rls = representation_locality_score(S)  # (2)
    K = ctx.num_clusters if ctx.num_clusters is not None else min(clusters_for_rls(rls), ctx.num_layers)  # (3)
    labels = cluster_layers(S, K, seed=ctx.seed)  # (4)
    pruned = allocate_lorp(S, labels, ctx.num_prune, set(ctx.protected))  # (5)
    return _plan(ctx, pruned, rls=rls, num_clusters=K, labels=labels, scores=block_redundancy(S, labels), seed=ctx.seed)


def _scored(rule: Callable) -> Callable[[SelectionContext], PruningPlan]:
    def select(ctx: SelectionContext) -> PruningPlan:
        pruned, scores = rule(_inputs(ctx), ctx.num_prune, set(ctx.protected))
        return _plan(ctx, pruned, scores=scores)

    return select


def _random(ctx: SelectionContext) -> PruningPlan:
    return _plan(ctx, baselines.random_blocks(ctx.num_layers, ctx.num_prune, set(ctx.protected), ctx.seed), seed=ctx.seed)


def _last(ctx: SelectionContext) -> list[int]:
    return baselines.last_blocks(ctx.num_layers, ctx.num_prune, set(ctx.protected))


# --------------------------------------------------------------------------------------------
# selectors that try plans on the model (the searches are in search.py)


def _analysis(ctx: SelectionContext) -> dict[str, Any]:
    """The faithful analysis's RLS, K and clusters, recorded on the plans built on it."""
    plan = _lorp(ctx)
    return dict(rls=plan.rls, num_clusters=plan.num_clusters, labels=plan.labels, seed=ctx.seed)


def _lorp_checked(ctx: SelectionContext) -> PruningPlan:
    loss = ctx.plan_loss()
    candidates = candidate_plans(ctx.stats, ctx.num_prune, protect=ctx.protected, seed=ctx.seed)
    return _searched(ctx, loss, candidates, max_checks=0)


def _lorp_search(ctx: SelectionContext) -> PruningPlan:
    from lorp_lightning.search import ranked_runs, sleb_checks

    loss = ctx.plan_loss()
    candidates = candidate_plans(ctx.stats, ctx.num_prune, protect=ctx.protected, seed=ctx.seed)
    known = [c["pruned"] for c in candidates]
    runs = [run for run in ranked_runs(_inputs(ctx).full, ctx.num_prune, set(ctx.protected)) if run not in known]
    candidates += [{"rule": f"run {run[0]}-{run[-1]}", "pruned": run} for run in runs[:SEARCH_RUNS]]
    third = sleb_checks(ctx.num_layers - len(ctx.protected), ctx.num_prune) // 3  # decided in docs/method.md
    return _searched(ctx, loss, candidates, max_checks=third)


def _searched(ctx: SelectionContext, loss, candidates: list[dict[str, Any]], max_checks: int) -> PruningPlan:
    """Check ``candidates``, then move from the best while it helps, checking at most ``max_checks`` more plans."""
    from tqdm.auto import tqdm

    from lorp_lightning.search import finite_best, local_search

    for candidate in tqdm(candidates, desc=ctx.method, unit="plan", disable=not ctx.progress):
        candidate["loss"] = loss(candidate["pruned"])
    best = finite_best(
        {i: c["loss"] for i, c in enumerate(candidates)},
        f"{ctx.method}'s candidate plans",
        lambda i: loss.refusal(candidates[i]["pruned"]),
    )
    moves = local_search(loss, candidates[best]["pruned"], ctx.num_layers, set(ctx.protected), max_checks) if max_checks else []
    candidates += [dict(rule=f"move {i + 1}", **move) for i, move in enumerate(moves)]
    chosen = moves[-1]["pruned"] if moves else candidates[best]["pruned"]
    return _plan(ctx, chosen, candidates=candidates, **_analysis(ctx))


def _sleb(ctx: SelectionContext) -> PruningPlan:
    from lorp_lightning.search import sleb_order

    loss = ctx.plan_loss()
    steps = sleb_order(loss, ctx.num_prune, set(ctx.protected), progress=ctx.progress)
    removed = [step["block"] for step in steps]
    candidates = [
        {"rule": f"step {i + 1}", "pruned": sorted(removed[: i + 1]), "loss": step["loss"]} for i, step in enumerate(steps)
    ]
    return _plan(ctx, removed, candidates=candidates)


def _ppl(ctx: SelectionContext) -> PruningPlan:
    from lorp_lightning.search import finite_best, one_shot_losses

    loss = ctx.plan_loss()
    alone = one_shot_losses(loss, set(ctx.protected), progress=ctx.progress)
    finite_best(alone, "ppl", lambda b: loss.refusal([b]))  # the error when no block's loss is finite
    ranked = sorted((b for b in alone if math.isfinite(alone[b])), key=lambda b: alone[b])  # stable: ties by index
    if len(ranked) < ctx.num_prune:
        raise FloatingPointError(
            f"ppl: only {len(ranked)} blocks have a finite loss when removed alone, fewer than the {ctx.num_prune} to prune"
        )
    scores = [alone.get(b) for b in range(ctx.num_layers)]
    return _plan(ctx, ranked[: ctx.num_prune], scores=scores)


# --------------------------------------------------------------------------------------------
# the table


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "lorp_search",
            _lorp_search,
            "LoRP's candidate plans and the 6 runs of k blocks most alike across the run checked on the calibration "
            "loss, the best then improved one block at a time with a third of SLEB's checks (the default)",
            reads_model=True,
        ),
        Method("lorp", _lorp, "LoRP as published: RLS, clusters, two-stage allocation (equations (2)-(5))"),
        Method(
            "lorp_checked",
            _lorp_checked,
            "LoRP's candidate plans checked on the calibration loss; the lowest wins",
            reads_model=True,
        ),
        Method(
            "sleb",
            _sleb,
            "SLEB: greedy, each step removes the block whose removal gives the lowest calibration loss",
            reads_stats=False,
            reads_model=True,
        ),
        Method(
            "ppl",
            _ppl,
            "one-shot perplexity (Shortened LLaMA): the k blocks whose removal alone hurts least",
            reads_stats=False,
            reads_model=True,
        ),
        Method("shortgpt", _scored(baselines.shortgpt), "ShortGPT: the k blocks of lowest Block Influence 1 - S[l, l+1]"),
        Method("streamline", _scored(baselines.streamline), "LLM-Streamline: the run of k blocks maximising S[s, s+k]"),
        Method("angular", _scored(baselines.angular), "Gromov et al.: the run of k blocks of least last-token angular distance"),
        Method("random", _random, "k unprotected blocks drawn with the seed (a floor)"),
        Method("last", _last, "the k unprotected blocks nearest the output (a floor)"),
    )
}
METHODS: tuple[str, ...] = tuple(REGISTRY)
STATS_METHODS: tuple[str, ...] = tuple(name for name, m in REGISTRY.items() if not m.reads_model)


def get_method(method: str | Callable) -> Method:
    """The registry entry of a name, or an entry for a callable (a selector of one's own)."""
    if callable(method) and not isinstance(method, str):
        name = getattr(method, "__name__", type(method).__name__)
        return Method(name, method, "a callable given by the user", reads_stats=True, reads_model=True)
    return REGISTRY[check_choice(method, "method", METHODS, also=" or a callable")]


# --------------------------------------------------------------------------------------------
# the entry point


def select_layers(
    stats_or_similarity: Any,
    num_prune: int | float | None = None,
    method: str | Callable | None = None,
    num_clusters: int | None = None,
    protect: Iterable[int] | None = None,
    seed: int | None = None,
    *,
    settings: PruneSettings | None = None,
    model: Any = None,
    windows: Any = None,
    check_windows: int | None = None,
    check_tokens: int | None = CHECK_TOKENS,
    score_last: int | None = SCORE_LAST,
    progress: bool = False,
    shared_checks: Any = None,
    compensate: bool | None = None,
    rounds: int | None = None,
) -> PruningPlan:
    """Choose the decoder blocks to prune.

    Args:
        stats_or_similarity: a ``LayerStats``, or a plain N x N
            block-input similarity (NumPy array or torch tensor), read as N x N over the block
            inputs, never as the (N+1) x (N+1) S (see ``lorp_lightning.selection``). May be
            None for ``sleb`` and ``ppl``, which read only the model.
        num_prune: (6) an int, the number of blocks, or a float in (0, 1), a fraction of N
            rounded down. Must come to >= 1 and <= the number of unprotected blocks. Needed unless
            ``settings`` gives it.
        method: a name of ``METHODS`` or a callable taking a ``SelectionContext`` and
            returning the blocks to prune. Default ``"lorp"``, the paper's method, which reads
            the statistics alone; ``DEFAULT_METHOD`` (``"lorp_search"``, the default of
            ``LoRPPruneCallback`` and ``lorp prune``) also needs ``model`` and ``windows``.
        num_clusters: ``lorp`` only: force K (an int, 1 <= K <= N) instead of (3).
        protect: block indices never pruned. Default None: {0, N-1}. Pass ``()`` to protect none.
        seed: an int >= 0 (default 0): the spectral clustering's ``random_state``, the draw for
            ``random``; methods without randomness ignore it.
        settings: ``num_prune`` (as ``amount``), ``method``, ``num_clusters``, ``protect``, ``seed``,
            ``compensate`` and ``rounds`` as one ``PruneSettings``; an argument given as well replaces its
            own. Without it, the arguments' defaults are those written here (``method="lorp"``).
        model: the model the statistics describe, for methods that try plans on it
            (``lorp_search``, ``lorp_checked``, ``sleb``, ``ppl``); it is left as it was.
        windows: the calibration windows for those methods, a (B, T) tensor of token ids (or a
            list of 1-D tensors of one length); only the first ``check_windows`` are checked.
        check_windows: calibration windows per loss check, the first ones (default None: the
            first ``CHECK_WINDOWS``, or all of them when fewer are given).
        check_tokens: tokens of each check window, its first ones (default ``CHECK_TOKENS``;
            None: the whole window).
        score_last: predicted tokens scored per check window, the last ones (default
            ``SCORE_LAST``; None scores all).
        progress: show progress bars for methods that try plans.
        shared_checks: a ``PlanLoss`` to check plans with instead of
            a new one over ``windows[:check_windows]`` (which it replaces): a study of several
            methods and budgets computes each plan's loss once. The plan's cost still counts
            what this selection asked for, as if run alone. With ``rounds``, it serves the first
            round; the later ones check on the first windows of ``windows`` in its shape.
        compensate: also choose the compensation of the plan (default False; ``lorp_lightning.compensation``):
            the strength of ``STRENGTHS`` whose factors give the plan the lowest loss on the check
            windows, recorded in ``plan.compensation`` for ``prune_layers`` to fold in. Needs
            ``model`` and ``windows`` (for any method) and a ``LayerStats`` with ``norms``.
        rounds: prune in this many rounds (an int from 1, one shot, the default, to the budget):
            each round selects its part of the budget (``rounds.round_sizes``) with ``method`` on
            the model the rounds before it pruned (and compensated), its statistics collected
            again on all of ``windows`` (``lorp_lightning.rounds``). Needs ``model`` and
            ``windows``; the model is put back as it was. The plan lists its ``rounds``.

    Returns:
        A ``PruningPlan`` whose ``cost`` records the window
        passes (``statistics_windows`` of the calibration pass, for methods that read the
        statistics, and ``check_windows`` of loss checks) and the selection's ``seconds``
        (the calibration pass not included).
    """
    settings = _prune_settings(settings, num_prune, method, num_clusters, protect, seed, compensate, rounds)
    entry, name = settings.entry, settings.entry.name
    if settings.compensate:
        _check_compensation(
            stats_or_similarity,
            model if shared_checks is None else shared_checks.model,
            windows if shared_checks is None else shared_checks.windows,
        )
    if settings.rounds > 1 and (model is None or windows is None):
        raise ParameterError(
            "rounds",
            f"rounds={settings.rounds} collects the statistics again on the partly pruned model: pass model= and "
            "windows= (all the calibration windows)",
        )
    statistics_windows = windows  # all of them, for the statistics of later rounds (before shared_checks replaces them)
    N = None
    if entry.reads_model or settings.compensate or settings.rounds > 1:  # runs the model
        model, windows, check_windows, check_tokens, score_last = _checks(
            name, model, windows, check_windows, check_tokens, score_last, shared_checks
        )
        N = len(decoder_layers(model))
    N = _depth(stats_or_similarity, entry, N)
    protected = protected_blocks(settings.protect, N)
    k = resolve_budget(settings.amount, N, N - len(protected))
    if settings.num_clusters is not None and not settings.num_clusters <= N:
        raise ParameterError(
            "num_clusters",
            f"num_clusters must be an int between 1 and the number of blocks N={N}, got {settings.num_clusters!r}",
        )
    if settings.rounds > 1:
        options = dict(
            method=settings.method,
            num_clusters=settings.num_clusters,
            seed=settings.seed,
            model=model,
            windows=statistics_windows,
            check_windows=check_windows,
            check_tokens=check_tokens,
            score_last=score_last,
            progress=progress,
            compensate=settings.compensate,
        )
        return _in_rounds(entry, stats_or_similarity, k, settings.rounds, protected, options, shared_checks)
    ctx = SelectionContext(
        method=name,
        stats=stats_or_similarity,
        num_layers=N,
        num_prune=k,
        protected=tuple(sorted(protected)),
        seed=settings.seed,
        num_clusters=settings.num_clusters,
        model=model,
        windows=windows,
        check_windows=int(check_windows or CHECK_WINDOWS),
        check_tokens=check_tokens,
        score_last=score_last,
        progress=progress,
        shared_checks=shared_checks,
    )
    return _select_once(entry, ctx, settings.compensate)


def _prune_settings(
    settings: PruneSettings | None,
    num_prune: Any,
    method: Any,
    num_clusters: Any,
    protect: Any,
    seed: Any,
    compensate: Any,
    rounds: Any,
) -> PruneSettings:
    """``select_layers``' arguments as one ``PruneSettings`` (every check that needs no model, once)."""
    if settings is None and num_prune is None:
        raise TypeError("select_layers() needs the budget: num_prune, or settings=PruneSettings(amount, ...)")
    if num_prune is not None and not is_budget(num_prune):  # the budget rule, under this function's name for it
        raise ParameterError(
            "num_prune",
            f"num_prune must be an int >= 1 (a count of blocks) or a float in (0, 1) (a "
            f"fraction of them), got num_prune={num_prune!r}",
        )
    base = settings if settings is not None else PruneSettings(method="lorp")
    settings = PruneSettings.of(base, num_prune, method, num_clusters, protect, seed, compensate, rounds)
    if settings.amount is None:
        raise ParameterError("num_prune", "select_layers() needs the budget: num_prune, or settings with an amount")
    return settings


def _checks(
    name: str, model: Any, windows: Any, check_windows: Any, check_tokens: Any, score_last: Any, shared_checks: Any
) -> tuple[Any, Tensor, Any, Any, Any]:
    """The model, windows and checks' shape of a selection that runs the model, checked (``shared_checks``: those of
    a ``PlanLoss`` shared by several selections)."""
    if shared_checks is not None:
        model, windows, check_windows, check_tokens, score_last = (
            shared_checks.model,
            shared_checks.windows,
            len(shared_checks.windows),
            shared_checks.windows.shape[1],
            shared_checks.score_last,
        )  # the checks' shape, which later rounds take from all the windows given
    if model is None or windows is None:
        raise ParameterError(
            "method", f"method={name!r} tries plans on the model: pass model= and windows= (calibration windows)"
        )
    windows = as_windows(windows)
    if check_windows is None:
        check_windows = min(CHECK_WINDOWS, windows.shape[0])
    if not is_integer(check_windows) or not 1 <= check_windows <= windows.shape[0]:
        raise ParameterError(
            "check_windows",
            f"check_windows must be an int between 1 and the {windows.shape[0]} windows given, got {check_windows!r}",
        )
    if check_tokens is not None and (not is_integer(check_tokens) or check_tokens < 2):
        raise ParameterError("check_tokens", f"check_tokens must be an int >= 2 or None, got {check_tokens!r}")
    return model, windows, check_windows, check_tokens, score_last


def _depth(stats_or_similarity: Any, entry: Method, model_depth: int | None) -> int:
    """N, the blocks the statistics describe (checked against the model's, ``model_depth``, where there is one)."""
    if stats_or_similarity is None:
        if entry.reads_stats:
            raise ParameterError(
                "method", f"method={entry.name!r} reads the layer statistics: pass a LayerStats or a similarity matrix"
            )
        return model_depth
    N = read_similarities(stats_or_similarity, entry.name if entry.name in REGISTRY else "lorp").N
    if model_depth is not None and N != model_depth:
        raise ValueError(f"stats describe {N} blocks but the model has {model_depth}; collect them on this model")
    return N


def _select_once(entry: Method, ctx: SelectionContext, compensate: bool) -> PruningPlan:
    """One selection: the method's plan, checked, with its compensation when asked, and its cost."""
    start = time.perf_counter()
    chosen = entry.select(ctx)
    seconds = time.perf_counter() - start
    _check_plan(entry.name, chosen.pruned if isinstance(chosen, PruningPlan) else chosen, ctx)  # before any conversion
    plan = chosen if isinstance(chosen, PruningPlan) else _plan(ctx, chosen)
    if compensate:
        plan.compensation = _compensation(ctx, plan.pruned)
    for loss in ctx.checks:
        ctx.cost.update(check_windows=loss.window_passes, plans_checked=loss.plans_checked)
    statistics = getattr(ctx.stats, "num_sequences", None) if entry.reads_stats else 0
    plan.cost = {
        "statistics_windows": statistics,
        "check_windows": ctx.cost.get("check_windows", 0),
        **ctx.cost,
        "seconds": seconds,
    }
    return plan


def _in_rounds(
    entry: Method, stats: Any, k: int, rounds: int, protected: set[int], options: dict[str, Any], shared_checks: Any
) -> PruningPlan:
    """``select_layers(..., rounds=rounds)``: each round a one-shot selection (``options``: its arguments) on the
    partly pruned model."""
    from lorp_lightning.rounds import round_sizes, select_in_rounds
    from lorp_lightning.search import as_windows

    def select_round(stats: Any, size: int, protect: list[int], first: bool) -> PruningPlan:
        return select_layers(stats, size, protect=protect, shared_checks=shared_checks if first else None, **options)

    plan = select_in_rounds(
        options["model"],
        as_windows(options["windows"]),
        stats,
        round_sizes(k, rounds),
        sorted(protected),
        select_round,
        collect=entry.reads_stats or options["compensate"],
        progress=options["progress"],
    )
    if options["compensate"]:
        _keep_if_lower(plan, options, shared_checks)
    return plan


def _keep_if_lower(plan: PruningPlan, options: dict[str, Any], shared_checks: Any) -> None:
    """Rounds with compensation: keep the composed factors only if they give the plan a lower check loss on the
    unpruned model than no factors (else all 1), as one-shot compensation never raises the loss it was chosen on;
    each round fitted its strength on that round alone. Two checks, counted in the plan's cost."""
    from lorp_lightning.search import PlanLoss, as_windows

    if shared_checks is not None:
        loss = shared_checks.start()
    else:
        windows = as_windows(options["windows"])
        count = options["check_windows"] or min(CHECK_WINDOWS, windows.shape[0])
        loss = PlanLoss(options["model"], windows[:count, : options["check_tokens"]], score_last=options["score_last"])
    compensated, plain = loss.compensated(plan.pruned, plan.factors), loss(plan.pruned)
    plan.compensation["check"] = {"compensated": compensated, "plain": plain}
    plan.compensation["composed"] = list(plan.compensation["factors"])  # as the rounds folded them
    if not compensated < plain:
        plan.compensation["factors"] = [{"block": f["block"], "factor": 1.0} for f in plan.compensation["factors"]]
    plan.compensation["check_windows"] = loss.window_passes
    plan.cost["check_windows"] += loss.window_passes
    plan.cost["plans_checked"] += loss.plans_checked


def _check_compensation(stats: Any, model: Any, windows: Any) -> None:
    """What ``compensate=True`` needs, refused before any selection work."""
    from lorp_lightning.compensation import check_compensable

    if getattr(stats, "norms", None) is None:
        raise ParameterError(
            "compensate",
            "compensate=True reads the stream's norms of the statistics: pass the LayerStats of "
            "collect_layer_stats (statistics saved before norms were recorded have none: collect them again)",
        )
    if model is None or windows is None:
        raise ParameterError(
            "compensate", "compensate=True chooses its strength on the calibration loss: pass model= and windows="
        )
    check_compensable(model)  # a family where no fold is exact is refused by name


def _compensation(ctx: SelectionContext, pruned: list[int]) -> dict[str, Any]:
    """The plan's compensation, its strength chosen on the checks the selection ran (or new ones)."""
    from lorp_lightning.compensation import fit_strength

    loss = ctx.checks[-1] if ctx.checks else ctx.plan_loss()  # the selection's own checks go on counting
    before = loss.window_passes
    strength, factors, tried = fit_strength(loss, pruned, ctx.stats.norms.tolist())
    return {
        "strength": strength,
        "factors": [{"block": b, "factor": f} for b, f in sorted(factors.items())],
        "tried": [{"strength": s, "loss": value} for s, value in tried.items()],
        "check_windows": loss.window_passes - before,
    }


def select_checked(
    model: nn.Module,
    windows: Any,
    num_prune: int | float,
    *,
    stats: LayerStats | None = None,
    check_windows: int | None = None,
    check_tokens: int | None = CHECK_TOKENS,
    score_last: int | None = SCORE_LAST,
    protect: Iterable[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> PruningPlan:
    """Choose the blocks to prune with ``lorp_checked``, the statistics collected here if not given.

    ``lorp_checked`` checks the plans of LoRP's locality analysis (``search.candidate_plans``) on the calibration
    loss, each applied to the model temporarily, and keeps the lowest (ties: the earlier candidate); see
    docs/method.md. It is ``select_layers(stats, num_prune, "lorp_checked", model=model, windows=windows)``.

    Args:
        model: a Hugging Face causal LM (any architecture in ``lorp_lightning.architectures``).
            Each candidate is tried by pruning it temporarily; the model is left exactly as it was.
        windows: the calibration windows, a (B, T) tensor of token ids (or a list of 1-D tensors
            of one length); the first ``check_windows`` of them are the loss checks.
        num_prune: (6) an int, the number of blocks, or a float in (0, 1), a fraction of N
            rounded down.
        stats: the [`LayerStats`][lorp_lightning.stats.LayerStats] of ``model`` on ``windows`` if
            already collected (e.g. shared with other methods); collected here if None.
        check_windows: calibration windows per loss check, the first ones (default None: ``CHECK_WINDOWS`` = 8, or
            all when fewer are given), as for ``select_layers``.
        check_tokens: tokens of each check window, its first ones (default ``CHECK_TOKENS`` = 256; None: all).
        score_last: predicted tokens scored per check window, the last ones (default ``SCORE_LAST`` = 128; None: all).
        protect: block indices never pruned (default None: {0, N-1}).
        seed: the spectral clustering's ``random_state`` (default 0).
        progress: show a progress bar over the candidates.

    Returns:
        A [`PruningPlan`][lorp_lightning.selection.PruningPlan] with ``method="lorp_checked"``, the
        RLS, K and clusters of the analysis, ``candidates`` (every candidate's rule, blocks and
        loss; the chosen one is ``pruned``) and ``cost``.
    """
    batch = as_windows(windows)
    if stats is None:
        stats = collect_layer_stats(model, batch.split(1), progress=progress)
    return select_layers(
        stats,
        num_prune,
        "lorp_checked",
        protect=protect,
        seed=seed,
        model=model,
        windows=batch,
        check_windows=check_windows,
        check_tokens=check_tokens,
        score_last=score_last,
        progress=progress,
    )


def _plan(ctx: SelectionContext, pruned: Sequence[int], **fields: Any) -> PruningPlan:
    """The plan of ``pruned`` (checked by select_layers, which every plan passes through)."""
    chosen = sorted(int(b) for b in pruned)
    return PruningPlan(
        method=ctx.method,
        num_layers=ctx.num_layers,
        pruned=chosen,
        kept=[b for b in range(ctx.num_layers) if b not in set(chosen)],
        protected=list(ctx.protected),
        **fields,
    )


def _check_plan(method: str, pruned: Any, ctx: SelectionContext) -> None:
    """A selector's plan: k distinct, unprotected block indices of the model."""
    blocks = list(pruned) if isinstance(pruned, Iterable) and not isinstance(pruned, (str, bytes)) else None
    problem = None
    if blocks is None:
        problem = "is not a list of block indices"
    elif not all(is_integer(b) for b in blocks):
        problem = "holds something other than block indices (ints)"
    elif len(blocks) != ctx.num_prune:
        problem = f"has {len(blocks)} blocks, not the {ctx.num_prune} asked for"
    elif len(set(map(int, blocks))) != len(blocks):
        problem = "lists a block twice"
    elif any(not 0 <= b < ctx.num_layers for b in blocks):
        problem = f"holds blocks outside 0..{ctx.num_layers - 1}"
    elif set(map(int, blocks)) & set(ctx.protected):
        problem = f"holds protected blocks {sorted(set(map(int, blocks)) & set(ctx.protected))}"
    if problem:
        raise ParameterError(
            "method", f"method {method!r} returned the plan {pruned!r}, which {problem}; the model was not changed"
        )

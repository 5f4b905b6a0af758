"""Methods that try plans on the model: the calibration loss of a plan, and the searches built on it.

    sleb         Song et al. 2024 (arXiv 2402.09025): greedy; at each step remove the block whose
                 removal gives the lowest calibration loss, then look again.
    ppl          Kim et al. 2024 (arXiv 2402.02834), the one-shot perplexity criterion: remove each
                 block alone, and drop the k whose removal hurts the calibration loss least.
    lorp_search  the locality analysis proposes, the calibration loss decides: the candidate plans
                 of LoRP's clusters (``candidate_plans``) and the six other runs of k consecutive
                 blocks most alike across the run (``ranked_runs``) are checked, then the best
                 is improved by swaps around its removed blocks (one removed block kept, a block
                 next to the removed ones removed instead), while that lowers the loss, with a
                 third of SLEB's checks to spend on the swaps in full; past them, the rest of a
                 neighbourhood is checked each plan only until it cannot win (``PlanLoss.below``),
                 so that the plan chosen is a local optimum: no single swap lowers its loss.

Every check goes through ``PlanLoss``: the plan is applied with
``temporarily_pruned`` (no weights copied; the model is left as it
was) and its mean next-token loss measured on calibration windows only. Three things make a check
cheaper without changing its value:

- *the dense prefix is computed once.* Blocks before a plan's first removed block b see exactly
  what they see in the dense model, so the inputs of every block are recorded once, on the
  dense model, and a plan's pass starts at block b from the recorded input of block b;
- *only the last* ``score_last`` *positions of a window are scored,* so the head (a large share of
  the cost for models with big vocabularies) runs on those positions alone;
- *windows run together,* ``batch_windows`` of them per forward pass (default: as many as keep
  their scored logits within ``LOGITS_BYTES``), which spends less time per window than one
  window per pass on a small vocabulary (``python benchmarks/performance/selection_cost.py --batching``)
  and, on a large one, only memory: Qwen2.5's 151,936 tokens take 3 windows per pass, Gemma 3's
  262,144 one (``benchmarks/performance/check_batch.py``). Each window's loss is still its own; on
  the CPUs measured (AVX2 in float32, AVX-512-BF16 in bf16) it equals the one-window pass bit for
  bit, though another CPU's matrix kernels may round a batch's last bits differently.

A plan the model's family cannot take exactly (``PlanRefusedError``: Jamba's period broken, a
block whose keys and values a kept block reads removed) has an infinite loss, so the searches
skip it. A family outside the table of ``lorp_lightning.architectures`` proves each plan on the
spot and does without the dense prefix.

All three methods share the protected set (default {0, N-1}: SLEB's rule that the first and the
last block are never candidates) and exclude a candidate whose loss is not finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lorp_lightning import compensation
from lorp_lightning._validation import check_int
from lorp_lightning.architectures import architecture_of, decoder_layers
from lorp_lightning.baselines import contiguous_runs
from lorp_lightning.locality import (
    allocate_lorp,
    cluster_layers,
    clusters_for_rls,
    read_similarities,
    representation_locality_score,
)
from lorp_lightning.next_token import next_token_loss
from lorp_lightning.selection import protected_blocks, resolve_budget
from lorp_lightning.surgery import PlanRefusedError, pruned_config, temporarily_pruned

__all__ = [
    "LOGITS_BYTES",
    "PlanLoss",
    "ResampledPlanLoss",
    "as_windows",
    "calibration_loss",
    "candidate_plans",
    "finite_best",
    "local_search",
    "neighbours",
    "one_shot_losses",
    "ranked_runs",
    "sleb_checks",
    "sleb_order",
]


def as_windows(windows: Any) -> Tensor:
    """``windows`` as a (B, T) tensor of token ids: a (B, T) or (T,) tensor, or a list of 1-D tensors of one length."""
    if isinstance(windows, (list, tuple)) and windows and all(isinstance(w, Tensor) for w in windows):
        if len({w.numel() for w in windows}) != 1:
            raise ValueError(f"windows must all have the same length, got lengths {sorted({w.numel() for w in windows})}")
        windows = torch.stack([w.reshape(-1) for w in windows])
    if not isinstance(windows, Tensor):
        raise ValueError(
            f"windows must be a (B, T) tensor of token ids or a list of 1-D tensors of one length, got {type(windows).__name__}"
        )
    if windows.dim() == 1:
        windows = windows.unsqueeze(0)
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"windows must be a (B, T) tensor of integer token ids with T >= 2, got shape {tuple(windows.shape)} "
            f"and dtype {windows.dtype}"
        )
    return windows


def _scored(T: int, score_last: int | None) -> int:
    """How many next-token predictions of a window of T tokens are scored."""
    return T - 1 if score_last is None else min(int(score_last), T - 1)


def _window_losses(model: nn.Module, ids: Tensor, scored: int) -> list[float]:
    """Mean next-token cross-entropy of the last ``scored`` tokens of each window of the (B, T) ``ids``."""
    # The logits at positions T-scored-1 .. T-2 predict tokens T-scored .. T-1. Models that know
    # ``logits_to_keep`` run their head on those positions only; the slice serves the others.
    logits = model(input_ids=ids, use_cache=False, logits_to_keep=scored + 1).logits[:, -(scored + 1) :]
    return next_token_loss(logits, ids, per_window=True).tolist()


# The most scored logits, counted in float32, that one batched check pass may hold (see PlanLoss's batch_windows).
# 256 MiB: SmolLM2's 49,152-token head still runs all 8 check windows together, where batching saves time; a
# larger vocabulary runs fewer, where batching saved no time and cost memory (benchmarks/results/check_batch.txt:
# at 1.5B, 3 windows per pass against 8 took 0.96x the time, and the checks' peak growth fell from 769 to 490 MB).
LOGITS_BYTES = 2**28


def _batch_windows(model: nn.Module, scored: int, num_windows: int) -> int:
    """Windows per forward pass such that their scored logits stay within ``LOGITS_BYTES``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        return 1
    return _windows_per_pass(int(vocab), scored, num_windows)


def _windows_per_pass(vocab: int, scored: int, num_windows: int, logits_bytes: int | None = None) -> int:
    """Windows per forward pass such that their ``scored + 1`` logits each over ``vocab`` tokens, counted in float32,
    stay within ``logits_bytes`` (default ``LOGITS_BYTES``); at least one, at most ``num_windows``."""
    budget = LOGITS_BYTES if logits_bytes is None else logits_bytes
    return max(1, min(num_windows, budget // (4 * (scored + 1) * vocab)))


@torch.no_grad()
def calibration_loss(model: nn.Module, windows: Any, score_last: int | None = None) -> float:
    """Mean next-token loss (nats) of ``model`` over token ``windows``, one window per forward pass.

    ``score_last``: score only the last this many predicted tokens of each window (default None:
    all T - 1 of them, which is Hugging Face's ``model(input_ids, labels=input_ids).loss``).
    """
    windows = as_windows(windows)
    device = next(model.parameters()).device
    scored = _scored(windows.shape[1], score_last)
    was_training = model.training
    model.eval()
    try:
        losses = [loss for w in windows for loss in _window_losses(model, w.unsqueeze(0).to(device), scored)]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses)


def sleb_checks(num_unprotected: int, num_prune: int) -> int:
    """The plans SLEB checks to remove ``num_prune`` of ``num_unprotected`` candidate blocks: U + (U-1) + ... ."""
    return sum(num_unprotected - step for step in range(num_prune))


class PlanLoss:
    """The calibration loss of pruning plans on one model and one set of calibration windows.

        loss = PlanLoss(model, windows, score_last=256)
        loss([12, 13, 14])     # mean next-token loss with blocks 12-14 removed; the model is unchanged
        loss.window_passes     # windows run through the model so far (the dense prefix included)

    A plan's loss is computed once and remembered. A loss that is not finite is returned as
    ``math.inf``, so that a search excludes that plan. See the module docs for the dense prefix
    (``reuse_prefix``), ``score_last`` and ``batch_windows``.

    One PlanLoss may serve several selections on the same model and windows (a study of many
    methods and budgets): ``start`` begins a selection's count, and ``plans_checked`` and
    ``window_passes`` then count what that selection asked for, as if run alone, while the
    losses remembered from earlier selections are not computed again.
    """

    def __init__(
        self,
        model: nn.Module,
        windows: Any,
        score_last: int | None = None,
        reuse_prefix: bool = True,
        batch_windows: int | None = None,
    ) -> None:
        self.model = model
        self.windows = as_windows(windows)
        self.score_last = score_last = check_int(score_last, "score_last", none_ok=True)
        self.scored = _scored(self.windows.shape[1], score_last)
        self.num_layers = len(decoder_layers(model))
        self.reuse_prefix = bool(reuse_prefix)
        # a family outside the table proves each pruning on the spot: on the plan itself, not with the prefix
        self._generic = architecture_of(model).generic
        if batch_windows is None:
            batch_windows = _batch_windows(model, self.scored, len(self.windows))
        else:
            batch_windows = check_int(batch_windows, "batch_windows", none_ok=True)
        self.batch_windows = batch_windows
        self._batches = list(self.windows.split(batch_windows))  # each one forward pass
        self.losses: dict[tuple[int, ...], float] = {}
        self.window_losses: dict[tuple[int, ...], list[float]] = {}  # per window, for paired statistics
        self.asked: set[tuple[int, ...]] = set()
        self.refused: dict[tuple[int, ...], str] = {}  # plan -> why the model's family refuses it
        self._settled: dict[tuple[int, ...], int] = {}  # plan settled early by below() -> the windows it ran
        self._settled_bound: dict[tuple[int, ...], float] = {}  # ... and the bound it was settled against
        self._prefix_asked = False
        self._inputs: list[Tensor] | None = None  # per batch: the (N, B, T, H) inputs of blocks 0..N-1 in the dense model

    def start(self) -> PlanLoss:
        """Begin counting a new selection (the remembered losses are kept)."""
        self.asked, self._prefix_asked = set(), False
        return self

    @property
    def plans_checked(self) -> int:
        """Distinct plans asked for since ``start``."""
        return len(self.asked)

    @property
    def window_passes(self) -> int:
        """Window passes those plans cost when run alone: one per window and plan (a plan settled
        early by ``below``: the windows it ran), and the dense prefix's."""
        settled = [key for key in self.asked if key in self._settled and key not in self.losses]
        return len(self.windows) * (len(self.asked) - len(settled) + self._prefix_asked) + sum(
            self._settled[key] for key in settled
        )

    @property
    def passes_run(self) -> int:
        """Window passes actually run, over every selection this PlanLoss served: the plans run in full,
        the windows of those settled early by ``below``, and the dense prefix once recorded."""
        partial = sum(n for key, n in self._settled.items() if key not in self.window_losses)
        return len(self.windows) * (len(self.window_losses) + (self._inputs is not None)) + partial

    def __call__(self, pruned: Iterable[int]) -> float:
        key = self._ask(self.key(pruned))
        if key not in self.losses:
            self._remember(key, self._losses(list(key)))
        return self.losses[key]

    def below(self, pruned: Iterable[int], bound: float) -> bool:
        """Whether the plan's loss is below ``bound``, running its windows only until that is certain.

        A window's loss is never negative, so once the windows run so far add up to ``bound``
        times the number of windows, the plan's mean loss cannot be below ``bound``: the rest are
        not run, and only the windows run count in ``window_passes``. The answer is exact. A plan
        found below ``bound`` has run every window, and its loss is remembered.
        """
        key = self._ask(self.key(pruned))
        if key in self.losses:
            return self.losses[key] < bound
        if key in self._settled:  # settled against a bound before; run it again only for a higher one
            if bound <= self._settled_bound[key]:
                return False
        losses = self._losses(list(key), bound)
        if len(losses) < len(self.windows):
            self._settled[key], self._settled_bound[key] = len(losses), bound
            return False
        self._remember(key, losses)
        return self.losses[key] < bound

    def compensated(self, pruned: Iterable[int], factors: Mapping[int, float]) -> float:
        """The calibration loss of the plan with the stream entering each block of ``factors`` (the
        kept block after a gap, in this model's numbering) multiplied by its factor: the loss of
        ``prune_layers(model, pruned, compensate=factors)``, without a weight changed. Remembered and
        counted as a plan of its own (factors all 1: the plan's own loss)."""
        entry = self.key(pruned, factors)
        if entry[:1] != ("compensated",):  # factors all 1 (an empty plan's key is empty)
            return self(entry)
        _, key, scales = self._ask(entry)
        if entry not in self.losses:
            self._remember(entry, self._losses(list(key), factors=dict(scales)))
        return self.losses[entry]

    @staticmethod
    def key(pruned: Iterable[int], factors: Mapping[int, float] | None = None) -> tuple:
        """The key of a plan (with ``factors``, compensated) in ``losses`` and ``window_losses``: the
        sorted blocks, or ``("compensated", blocks, ((block, factor), ...))`` for factors other than 1."""
        blocks = tuple(sorted(int(b) for b in pruned))
        scales = tuple(sorted((int(b), float(f)) for b, f in (factors or {}).items() if float(f) != 1.0))
        return ("compensated", blocks, scales) if scales else blocks

    def _ask(self, entry: tuple) -> tuple:
        """Count ``entry`` (a ``key``) as asked for in this selection, and the dense prefix its pass starts from."""
        self.asked.add(entry)
        self._prefix_asked |= self._after_prefix(entry[1] if entry[:1] == ("compensated",) else entry)
        return entry

    def _remember(self, key: tuple, losses: list[float]) -> None:
        self.window_losses[key] = losses
        loss = sum(losses) / len(self.windows)
        self.losses[key] = loss if math.isfinite(loss) else math.inf

    def refusal(self, pruned: Iterable[int]) -> str | None:
        """Why the model's family refused this plan (its loss is then infinite), or None."""
        return self.refused.get(self.key(pruned))

    def _after_prefix(self, pruned: Sequence[int]) -> bool:
        """Whether the plan's pass starts from the recorded dense prefix: its first removed block
        is not block 0, and some block is left after the prefix and the plan."""
        return (
            self.reuse_prefix
            and not self._generic
            and bool(pruned)
            and min(pruned) > 0
            and min(pruned) + len(pruned) < self.num_layers
        )

    @torch.no_grad()
    def _losses(self, pruned: list[int], bound: float | None = None, factors: Mapping[int, float] | None = None) -> list[float]:
        """The plan's window losses; with ``bound``, only until their sum reaches ``bound`` times the
        number of windows (then the plan's loss cannot be below ``bound``), batch by batch; with
        ``factors``, the stream entering those blocks multiplied (``compensated``)."""
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        factors = dict(factors or {})
        layers = list(decoder_layers(model))  # the blocks as objects: the hooks follow them through the pruning

        def settled(losses: list[float]) -> bool:  # window losses are never negative: the mean can only grow
            return bound is not None and sum(losses) >= bound * len(self.windows)

        try:
            if self._after_prefix(pruned):
                first = min(pruned)
                inputs = self._dense_inputs(device)
                try:
                    pruned_config(model.config, pruned)  # the plan itself, which the prefix and the plan do not check
                    after_first_gap = compensation.gaps(pruned, self.num_layers)[0][1]  # the first block run
                    scaled = {layers[b]: f for b, f in factors.items() if b != after_first_gap}
                    with temporarily_pruned(model, list(range(first)) + pruned), compensation.stream_scaled(scaled):
                        losses: list[float] = []
                        for i, ids in enumerate(self._batches):
                            hidden = inputs[i][first]
                            if after_first_gap in factors:
                                hidden = hidden * factors[after_first_gap]
                            losses += self._losses_from(model, ids.to(device), hidden)
                            if settled(losses):
                                break
                        return losses
                except PlanRefusedError:  # the plan itself is refused (below, at once), or only with the prefix
                    pass  # removed too (Jamba's period): a plain pass
            try:
                with (
                    temporarily_pruned(model, pruned) if pruned else nullcontext(),
                    compensation.stream_scaled({layers[b]: f for b, f in factors.items()}),
                ):
                    losses = []
                    for ids in self._batches:
                        losses += _window_losses(model, ids.to(device), self.scored)
                        if settled(losses):
                            break
                    return losses
            except PlanRefusedError as error:
                self.refused[tuple(pruned)] = str(error)
                return [math.inf] * len(self.windows)  # a plan the family cannot take has no loss: searches skip it
        finally:
            model.train(was_training)

    def _losses_from(self, model: nn.Module, ids: Tensor, hidden: Tensor) -> list[float]:
        """The losses of the windows ``ids`` with the input of the model's first (remaining) block replaced by ``hidden``."""

        def replace(module: nn.Module, args: tuple, kwargs: dict):
            if args:
                return (hidden,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = decoder_layers(model)[0].register_forward_pre_hook(replace, with_kwargs=True)
        try:
            return _window_losses(model, ids, self.scored)
        finally:
            handle.remove()

    def _dense_inputs(self, device: torch.device) -> list[Tensor]:
        """The input of every block of the dense model, per window (one dense pass, counted)."""
        if self._inputs is None:
            layers = decoder_layers(self.model)
            store: list[Tensor] = []

            def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
                store.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

            handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
            inputs = []
            try:
                for ids in self._batches:
                    store.clear()
                    self.model(input_ids=ids.to(device), use_cache=False, logits_to_keep=1)
                    inputs.append(torch.stack(store))
            finally:
                for handle in handles:
                    handle.remove()
            self._inputs = inputs
        return self._inputs


class ResampledPlanLoss:
    """A ``PlanLoss`` on a bootstrap resample of its windows: window w counts ``counts[w]`` times.

        base = PlanLoss(model, windows)
        loss = ResampledPlanLoss(base, counts)   # counts: how often each of base's windows is drawn
        loss([12, 13, 14])                       # sum_w counts[w] * loss_w / sum_w counts[w]

    Each plan is run once on all of the base's windows (``base.window_losses``); every resample of
    the same base then reweights those window losses, so a plan that several resamples check costs
    one pass of the windows, not one per resample (``lorp_lightning.stability``). It answers as a
    ``PlanLoss`` on the repeated windows would, and counts its own selection (``start``,
    ``plans_checked``, ``asked``) as if run alone; ``window_passes`` counts the passes as if run
    alone too, while ``base.window_losses`` says which plans were actually run.
    """

    def __init__(self, base: PlanLoss, counts: Any) -> None:
        weights = [float(c) for c in counts]
        if len(weights) != len(base.windows) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"counts must give each of the {len(base.windows)} windows a count >= 0, not all 0; got {counts!r}")
        self.base, self.weights = base, weights
        self.model, self.windows, self.score_last = base.model, base.windows, base.score_last
        self.num_layers = base.num_layers
        self.asked: set[tuple] = set()

    def start(self) -> ResampledPlanLoss:
        self.asked = set()
        return self

    @property
    def plans_checked(self) -> int:
        return len(self.asked)

    @property
    def window_passes(self) -> int:
        return len(self.windows) * len(self.asked)

    def __call__(self, pruned: Iterable[int]) -> float:
        key = self.base.key(pruned)
        self.asked.add(key)
        self.base(key)
        return self._weighted(self.base.window_losses[key])

    def below(self, pruned: Iterable[int], bound: float) -> bool:
        return self(pruned) < bound

    def compensated(self, pruned: Iterable[int], factors: Mapping[int, float]) -> float:
        entry = self.base.key(pruned, factors)
        if entry[:1] != ("compensated",):
            return self(entry)
        self.asked.add(entry)
        self.base.compensated(pruned, factors)
        return self._weighted(self.base.window_losses[entry])

    key = staticmethod(PlanLoss.key)

    def refusal(self, pruned: Iterable[int]) -> str | None:
        return self.base.refusal(pruned)

    def _weighted(self, losses: list[float]) -> float:
        if not all(math.isfinite(x) for x in losses):
            return math.inf
        return sum(w * x for w, x in zip(self.weights, losses, strict=True)) / sum(self.weights)


def finite_best(losses: dict[Any, float], what: str, refusal: Callable[[Any], str | None] | None = None) -> Any:
    """The key with the lowest finite loss (ties: the first); a clear error when none is finite.

    ``refusal``: the key's plan -> why the model's family refuses it (``PlanLoss.refusal``), or None.
    """
    finite = {key: loss for key, loss in losses.items() if math.isfinite(loss)}
    reasons = [refusal(key) for key in losses] if refusal is not None else []
    if not finite and reasons and all(reasons):
        raise PlanRefusedError(
            f"{what}: this model's family refuses every one of the {len(losses)} candidate plans, for one: {reasons[0]} "
            "A method that removes one block at a time (sleb, ppl) has no first step on such a family; "
            "method='lorp_search' checks whole plans"
        )
    if not finite:
        raise FloatingPointError(
            f"{what}: the calibration loss is not finite for any of the {len(losses)} candidates; "
            "check the model and the calibration windows (try dtype=torch.float32)"
        )
    return min(finite, key=finite.__getitem__)  # min() keeps the first of ties


def sleb_order(loss: PlanLoss, num_prune: int, protected: set[int], progress: bool = False) -> list[dict[str, Any]]:
    """SLEB's greedy steps: ``[{"block": b, "loss": loss with the blocks so far removed, "tried": n}, ...]``."""
    from tqdm.auto import tqdm

    removed: list[int] = []
    steps = []
    for _ in tqdm(range(num_prune), desc="sleb", unit="block", disable=not progress):
        tried = {b: loss(removed + [b]) for b in range(loss.num_layers) if b not in protected and b not in removed}
        block = finite_best(
            tried,
            f"sleb, removing block {len(removed) + 1} of {num_prune}",
            lambda b, removed=removed: loss.refusal(removed + [b]),
        )
        removed.append(block)
        steps.append({"block": block, "loss": tried[block], "tried": len(tried)})
    return steps


def one_shot_losses(loss: PlanLoss, protected: set[int], progress: bool = False) -> dict[int, float]:
    """The calibration loss with each unprotected block removed alone."""
    from tqdm.auto import tqdm

    blocks = [b for b in range(loss.num_layers) if b not in protected]
    return {b: loss([b]) for b in tqdm(blocks, desc="ppl", unit="block", disable=not progress)}


def neighbours(plan: Sequence[int], num_layers: int, protected: set[int]) -> list[list[int]]:
    """The plans one swap away from ``plan`` around its removed blocks: one removed block kept
    instead, and one kept, unprotected block next to a removed block removed instead (a run
    [12, 18] may shift to [11, 17] or [13, 19], or give up block 15 for block 11 or 19)."""
    removed = set(plan)
    border = sorted(
        c for c in range(num_layers) if c not in removed and c not in protected and (c - 1 in removed or c + 1 in removed)
    )
    out, seen = [], set()
    for b in sorted(removed):
        for c in border:
            swapped = tuple(sorted((removed - {b}) | {c}))
            if swapped not in seen:
                seen.add(swapped)
                out.append(list(swapped))
    return out


def ranked_runs(similarity: Any, num_prune: int, protected: set[int]) -> list[list[int]]:
    """``contiguous_runs``, the most alike across the run first: by S[s, s+k] descending, the
    similarity of the run's input and output (LLM-Streamline's score; ties: the shallower run).

    ``similarity``: the full (N+1) x (N+1) S of a ``LayerStats`` (index N is the model's output).
    """
    N = similarity.shape[0] - 1
    return sorted(contiguous_runs(N, num_prune, protected), key=lambda run: -float(similarity[run[0], run[0] + num_prune]))


def local_search(loss: PlanLoss, start: list[int], num_layers: int, protected: set[int], max_checks: int) -> list[dict[str, Any]]:
    """Move to the best neighbour (``neighbours``) while it lowers the loss and checks remain, and
    end at a local optimum: a plan no neighbour of which has a lower loss.

    ``max_checks``: the plans this search may check in full beyond those ``loss`` has checked
    when it starts (a plan checked already costs nothing). When they run out, the best of the
    neighbourhood checked so far is taken, if it helps; if it does not, the rest of the
    neighbourhood is checked each only as far as it can still beat the current plan
    (``PlanLoss.below``), and the first that does is the next move.

    Returns the moves made: ``[{"pruned": plan, "loss": its loss}, ...]`` (empty if none helped).
    """
    end = loss.plans_checked + max(int(max_checks), 0)
    current, moves = sorted(start), []
    while True:
        around = neighbours(current, num_layers, protected)
        tried = [p for p in around if tuple(p) in loss.asked]
        untried = [p for p in around if tuple(p) not in loss.asked]
        budget = max(end - loss.plans_checked, 0)
        candidates = tried + untried[:budget]  # checked ones cost nothing
        best = min(candidates, key=loss) if candidates else None  # min() keeps the first of ties
        if best is None or not loss(best) < loss(current):
            # None of those is better. The rest of the neighbourhood, past the budget, is checked too, each
            # plan only until it cannot beat the current one (exact: PlanLoss.below), so that the plan
            # returned is a local optimum; the first better one is a move.
            best = next((p for p in untried[budget:] if loss.below(p, loss(current))), None)
            if best is None:
                return moves
        current = best
        moves.append({"pruned": best, "loss": loss(best)})


# --------------------------------------------------------------------------------------------
# LoRP's candidate plans: what lorp_checked and lorp_search check first


def candidate_plans(
    stats: Any,
    num_prune: int | float,
    protect: Iterable[int] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The plans ``lorp_checked`` checks against the calibration loss, all from one locality analysis.

    The RLS gives K (2)-(3), spectral clustering the clusters (4); then, with BI_l = 1 - S[l, l+1]
    the influence of block l (the similarity of its input and output, as in ``shortgpt``):

    - ``lorp``: the faithful two-stage allocation (5), blocks ranked by redundancy in their cluster;
    - ``lorp/influence``: the same allocation, blocks ranked by lowest influence in their cluster;
    - ``spare c`` for each cluster c: the faithful allocation over the other clusters, c kept whole
      (a small model may not be able to spare any block of some cluster);
    - ``within c`` for each cluster c with enough unprotected blocks: the k lowest-influence
      blocks of c (the whole budget spent where representations are most alike);
    - ``run from c`` for each cluster c: the run [s, s+k) of unprotected blocks with s in c
      maximising S[s, s+k] (the span over which the representation changes least).

    The rules are applied to the clustering of the RLS's K, then to the coarsest one, K = 1 (all
    blocks one cluster), whose rules reduce to the global ones: ``within 0 (K=1)`` is
    ShortGPT's plan and ``run from 0 (K=1)`` LLM-Streamline's. Each rule's name ends with its K.

    Args:
        stats: a [`LayerStats`][lorp_lightning.stats.LayerStats] (the full (N+1) x (N+1) S is needed
            for the influence of the last block and for runs that end at the output).
        num_prune, protect, seed: as for `select_layers`.

    Returns:
        ``[{"rule": str, "pruned": [blocks, ascending]}, ...]`` in the order above, identical
        plans listed once (under the first rule that made them).
    """
    similarities = read_similarities(stats, "lorp")
    if similarities.full is None:
        raise ValueError("candidate_plans needs a LayerStats (the full (N+1) x (N+1) similarity), not a plain matrix")
    N, S, full = similarities.N, similarities.blocks, similarities.full
    protected = protected_blocks(protect, N)
    k = resolve_budget(num_prune, N, N - len(protected))
    rls = representation_locality_score(S)  # (2)
    K = min(clusters_for_rls(rls), N)  # (3)
    labels = cluster_layers(S, K, seed=int(seed))  # (4)

    plans: list[tuple[str, list[int]]] = []
    for granularity in [labels, [0] * N] if K > 1 else [labels]:
        plans += _rule_plans(S, full, granularity, k, protected)

    out: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()
    for rule, pruned in plans:
        key = tuple(sorted(pruned))
        if key not in seen:
            seen.add(key)
            out.append({"rule": rule, "pruned": list(key)})
    return out


def _rule_plans(S: np.ndarray, full: np.ndarray, labels: list[int], k: int, protected: set[int]) -> list[tuple[str, list[int]]]:
    """The plans of `candidate_plans`' rules for one clustering ``labels``."""
    N, K = len(labels), max(labels) + 1
    tag = f" (K={K})"
    closeness = [float(full[l, l + 1]) for l in range(N)]  # 1 - BI_l: higher = less influence
    unprotected = [l for l in range(N) if l not in protected]
    plans = [
        ("lorp" + tag, allocate_lorp(S, labels, k, protected)),
        ("lorp/influence" + tag, allocate_lorp(S, labels, k, protected, ranking=closeness)),
    ]
    for c in range(K if K > 1 else 0):
        spared = protected | {l for l in range(N) if labels[l] == c}
        if N - len(spared) >= k:
            plans.append((f"spare {c}" + tag, allocate_lorp(S, labels, k, spared)))
    for c in range(K):
        members = [l for l in unprotected if labels[l] == c]
        if len(members) >= k:
            plans.append((f"within {c}" + tag, sorted(members, key=lambda l: -closeness[l])[:k]))
    for c in range(K):
        starts = [s for s in range(N - k + 1) if labels[s] == c and not any(l in protected for l in range(s, s + k))]
        if starts:
            best = max(starts, key=lambda s: float(full[s, s + k]))  # max() keeps the first of ties
            plans.append((f"run from {c}" + tag, list(range(best, best + k))))
    return plans

"""Specifications of the methods that try plans on the model: SLEB, the one-shot perplexity
criterion (``ppl``) and ``lorp_search``, and the loss check they share (``PlanLoss``).

They run on a tiny random Llama (8 blocks), where the exact answer is found by brute force: every
plan is applied to a deep copy of the model (``prune_layers(..., inplace=False)``) and its loss
computed from the logits, independently of the code under test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from hand_matrices import sym

from lorp_lightning import methods
from lorp_lightning.baselines import contiguous_runs
from lorp_lightning.methods import REGISTRY, SEARCH_RUNS, SelectionContext, select_layers
from lorp_lightning.search import PlanLoss, calibration_loss, candidate_plans, local_search, neighbours, ranked_runs, sleb_checks
from lorp_lightning.stats import collect_layer_stats
from lorp_lightning.surgery import prune_layers, pruning_record, temporarily_pruned

N = 8
SCORE_LAST = 6


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=N,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
    )  # large weights: every block matters, losses differ
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    windows = torch.randint(0, 96, (5, 12), generator=torch.Generator().manual_seed(1))
    stats = collect_layer_stats(model, windows.split(1), progress=False)
    return model, windows, stats


@torch.no_grad()
def brute_loss(model, blocks, windows, score_last=SCORE_LAST) -> float:
    """The reference: a pruned deep copy, the mean cross-entropy of the last ``score_last`` predictions."""
    copy = prune_layers(model, sorted(blocks), inplace=False) if blocks else model
    losses = []
    for w in windows:
        logits = copy(w.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        losses.append(float(F.cross_entropy(logits[-score_last:], w[1:][-score_last:])))
    return sum(losses) / len(losses)


def unprotected():
    return [b for b in range(N) if b not in (0, N - 1)]


# ------------------------------------------------------------------ the loss check


def test_a_plans_loss_is_that_of_the_pruned_copy_with_the_dense_prefix_reused(tiny):
    model, windows, _ = tiny
    loss = PlanLoss(model, windows, score_last=SCORE_LAST)
    for plan in ([3], [1, 2], [4, 5, 6], [2, 6], [0, 7]):
        assert loss(plan) == pytest.approx(brute_loss(model, plan, windows), abs=1e-6)
    plain = PlanLoss(model, windows, score_last=SCORE_LAST, reuse_prefix=False)
    assert plain([4, 5, 6]) == pytest.approx(loss([4, 5, 6]), abs=1e-6)


def test_windows_run_together_or_alone_give_each_windows_own_loss(tiny):
    model, windows, _ = tiny
    alone = PlanLoss(model, windows, score_last=SCORE_LAST, batch_windows=1)
    assert PlanLoss(model, windows).batch_windows == len(windows)  # tiny logits: all windows in one pass
    for batch in (2, 5):  # uneven (2 + 2 + 1) and all at once
        together = PlanLoss(model, windows, score_last=SCORE_LAST, batch_windows=batch)
        for plan in ([], [3], [4, 5, 6], [0, 7]):  # dense, after the prefix, and from the embeddings
            together(plan), alone(plan)
            assert together.window_losses[tuple(plan)] == pytest.approx(alone.window_losses[tuple(plan)], abs=1e-6)
        assert together.window_passes == alone.window_passes  # a pass is one window's, however they are batched


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_batch_size_is_refused_by_name(tiny, bad):
    model, windows, _ = tiny
    with pytest.raises(ValueError, match=r"batch_windows must be a positive int or None, got"):
        PlanLoss(model, windows, batch_windows=bad)


def test_each_plan_is_checked_once_and_the_window_passes_are_counted(tiny):
    model, windows, _ = tiny
    loss = PlanLoss(model, windows)
    loss([3]), loss([3]), loss([5, 6])
    assert loss.plans_checked == 2
    assert loss.window_passes == 3 * len(windows)  # the dense prefix once, then each plan once


def test_scoring_all_positions_is_hugging_faces_loss(tiny):
    model, windows, _ = tiny
    with torch.no_grad():
        expected = sum(float(model(w.unsqueeze(0), labels=w.unsqueeze(0)).loss) for w in windows) / len(windows)
    assert calibration_loss(model, windows) == pytest.approx(expected, abs=1e-6)


def test_the_model_is_left_as_it_was(tiny):
    model, windows, stats = tiny
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("sleb", "ppl", "lorp_search"):
        select_layers(stats, 3, method=method, model=model, windows=windows, check_windows=3, score_last=SCORE_LAST)
    assert pruning_record(model) is None and model.config.num_hidden_layers == N
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# ------------------------------------------------------------------ sleb


def test_sleb_removes_greedily_the_block_of_lowest_loss_and_looks_again(tiny):
    model, windows, stats = tiny
    for k in (1, 2, 3):
        removed = []
        for _ in range(k):
            losses = {b: brute_loss(model, removed + [b], windows[:4]) for b in unprotected() if b not in removed}
            removed.append(min(losses, key=losses.get))
        plan = select_layers(stats, k, method="sleb", model=model, windows=windows, check_windows=4, score_last=SCORE_LAST)
        assert plan.pruned == sorted(removed)
        assert [c["pruned"] for c in plan.candidates] == [sorted(removed[: i + 1]) for i in range(k)]
        assert plan.cost["plans_checked"] == sleb_checks(N - 2, k)
        assert plan.cost["statistics_windows"] == 0  # SLEB reads the model alone


def test_sleb_needs_no_statistics(tiny):
    model, windows, stats = tiny
    with_stats = select_layers(stats, 2, method="sleb", model=model, windows=windows, check_windows=2)
    without = select_layers(None, 2, method="sleb", model=model, windows=windows, check_windows=2)
    assert with_stats.pruned == without.pruned


# ------------------------------------------------------------------ ppl


def test_ppl_drops_the_k_blocks_whose_removal_alone_hurts_least(tiny):
    model, windows, stats = tiny
    alone = {b: brute_loss(model, [b], windows[:4]) for b in unprotected()}
    for k in (1, 3, 6):
        plan = select_layers(stats, k, method="ppl", model=model, windows=windows, check_windows=4, score_last=SCORE_LAST)
        assert plan.pruned == sorted(sorted(alone, key=alone.get)[:k])
        assert plan.cost["plans_checked"] == N - 2
    assert [s is None for s in plan.scores] == [True] + [False] * (N - 2) + [True]


# ------------------------------------------------------------------ lorp_search


@pytest.mark.parametrize("search_runs", [SEARCH_RUNS, 1])
def test_lorp_search_checks_the_locality_candidates_and_the_runs_most_alike_then_moves_while_the_loss_falls(
    tiny, search_runs, monkeypatch
):
    model, windows, stats = tiny
    k = 4  # two runs are not candidates here
    monkeypatch.setattr(methods, "SEARCH_RUNS", search_runs)
    plan = select_layers(stats, k, method="lorp_search", model=model, windows=windows, check_windows=4, score_last=SCORE_LAST)
    expected = candidate_plans(stats, k)
    others = [run for run in ranked_runs(stats.similarity, k, {0, N - 1}) if run not in [c["pruned"] for c in expected]]
    assert 1 < len(others) <= SEARCH_RUNS  # so that both settings are tried: some runs, and fewer than all
    expected += [{"pruned": run} for run in others[:search_runs]]
    tried = plan.candidates[: len(expected)]
    assert [c["pruned"] for c in tried] == [c["pruned"] for c in expected]
    for c in tried:
        assert c["loss"] == pytest.approx(brute_loss(model, c["pruned"], windows[:4]), abs=1e-6)
    moves = plan.candidates[len(expected) :]
    current = min(tried, key=lambda c: c["loss"])
    for move in moves:  # each move goes to a neighbour, and lowers the loss
        assert move["pruned"] in neighbours(current["pruned"], N, {0, N - 1}) and move["loss"] < current["loss"]
        current = move
    assert plan.pruned == current["pruned"]
    mine = brute_loss(model, plan.pruned, windows[:4])  # a local optimum: no swap is better
    assert all(brute_loss(model, other, windows[:4]) >= mine - 1e-6 for other in neighbours(plan.pruned, N, {0, N - 1}))
    sleb = select_layers(stats, k, method="sleb", model=model, windows=windows, check_windows=4, score_last=SCORE_LAST)
    assert plan.cost["check_windows"] < sleb.cost["check_windows"]  # fewer window passes than SLEB
    faithful = select_layers(stats, k, method="lorp")
    assert (plan.rls, plan.num_clusters, plan.labels) == (faithful.rls, faithful.num_clusters, faithful.labels)


def test_a_local_optimum_has_no_better_neighbour(tiny):
    model, windows, stats = tiny
    plan = select_layers(stats, 2, method="lorp_search", model=model, windows=windows, check_windows=4, score_last=SCORE_LAST)
    mine = brute_loss(model, plan.pruned, windows[:4])
    checked = {tuple(c["pruned"]) for c in plan.candidates}
    for other in neighbours(plan.pruned, N, {0, N - 1}):
        if tuple(other) in checked:
            assert brute_loss(model, other, windows[:4]) >= mine - 1e-6


def test_the_runs_are_every_span_of_k_consecutive_unprotected_blocks():
    assert contiguous_runs(8, 3, {0, 7}) == [[1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6]]
    assert contiguous_runs(8, 2, {0, 4, 7}) == [[1, 2], [2, 3], [5, 6]]
    assert contiguous_runs(8, 7, {0, 7}) == []


def test_ranked_runs_put_the_runs_most_alike_across_first():
    # N = 5 blocks, S is 6 x 6 (index 5 = output); runs of 2 with {0, 4} protected: [1, 2], [2, 3]
    # scored by S[1, 3] = 0.25 and S[2, 4] = 0.75; unprotected, [3, 4] too, by S[3, 5] = 0.75 (a tie
    # with [2, 3]: the shallower first)
    S = sym(6, {(1, 3): 0.25, (2, 4): 0.75, (3, 5): 0.75}, default=0.5)
    assert ranked_runs(S, 2, {0, 4}) == [[2, 3], [1, 2]]
    assert ranked_runs(S, 2, {0}) == [[2, 3], [3, 4], [1, 2]]


@pytest.mark.parametrize("cap", [0, 1, 3])
def test_local_search_ends_at_a_plan_no_neighbour_of_which_is_better_whatever_its_budget(tiny, cap):
    model, windows, _ = tiny
    loss = PlanLoss(model, windows[:4], score_last=SCORE_LAST, batch_windows=1)
    loss([1, 2]), loss([5, 6])  # checked before the search: they cost nothing
    moves = local_search(loss, [1, 2], N, {0, N - 1}, max_checks=cap)
    final = moves[-1]["pruned"] if moves else [1, 2]
    mine = brute_loss(model, final, windows[:4])
    assert all(brute_loss(model, other, windows[:4]) >= mine - 1e-6 for other in neighbours(final, N, {0, N - 1}))


class PlantedLoss:
    """A stand-in for PlanLoss whose losses are planted: ``planted`` for some plans, 10 for the rest."""

    def __init__(self, planted: dict[tuple[int, ...], float]) -> None:
        self.planted, self.asked = planted, set()

    @property
    def plans_checked(self) -> int:
        return len(self.asked)

    def __call__(self, pruned) -> float:
        key = tuple(sorted(pruned))
        self.asked.add(key)
        return self.planted.get(key, 10.0)

    def below(self, pruned, bound: float) -> bool:
        return self(pruned) < bound


def test_the_best_plan_one_swap_from_the_start_is_reached_when_the_budget_ends_before_it():
    # from [4, 5] (loss 5) the neighbours are, in order, [3, 5], [5, 6], [3, 4], [4, 6]; one check of budget
    # reaches [3, 5] only (loss 6, worse), so a search that stopped with its budget would end at [4, 5].
    # [3, 4] (loss 4) is one swap away: it is found past the budget, and no neighbour of it is better.
    loss = PlantedLoss({(4, 5): 5.0, (3, 5): 6.0, (3, 4): 4.0})
    moves = local_search(loss, [4, 5], 10, {0, 9}, max_checks=1)
    assert moves == [{"pruned": [3, 4], "loss": 4.0}]
    assert {(2, 4), (2, 3), (3, 5), (4, 5)} <= loss.asked  # the neighbourhood of [3, 4], all of it


@pytest.mark.parametrize("plan", [[1, 2], [3], [5, 6]])
def test_below_is_exact_and_runs_only_the_windows_it_needs(tiny, plan):
    model, windows, _ = tiny

    def fresh():
        return PlanLoss(model, windows, score_last=SCORE_LAST, batch_windows=1)

    full = fresh()
    exact = full(plan)
    for bound in (exact * 0.5, exact * 0.999, exact * 1.001, exact * 2):
        loss = fresh()
        assert loss.below(plan, bound) == (exact < bound)
        if bound == exact * 0.5:  # half the windows' worth of loss settles it: the other windows are not run
            assert loss.window_passes < full.window_passes
        if bound == exact * 2:  # never settled: every window ran, and the loss is remembered
            assert loss.window_passes == full.window_passes and loss(plan) == exact


def test_neighbours_swap_one_removed_block_for_a_kept_block_beside_the_removed_ones():
    assert neighbours([3, 4], 8, {0, 7}) == [[2, 4], [4, 5], [2, 3], [3, 5]]
    assert neighbours([2, 4], 8, {0, 7}) == [[1, 4], [3, 4], [4, 5], [1, 2], [2, 3], [2, 5]]
    assert neighbours([1], 8, {0, 7}) == [[2]]  # block 0 is protected
    assert neighbours([6], 8, {0, 7}) == [[5]]


# ------------------------------------------------------------------ the registry and bad input


def test_every_method_is_one_registry_entry_and_the_model_methods_say_so():
    assert list(REGISTRY) == [
        "lorp_search",
        "lorp",
        "lorp_checked",
        "sleb",
        "ppl",
        "shortgpt",
        "streamline",
        "angular",
        "random",
        "last",
    ]
    assert [m for m, e in REGISTRY.items() if e.reads_model] == ["lorp_search", "lorp_checked", "sleb", "ppl"]
    assert [m for m, e in REGISTRY.items() if not e.reads_stats] == ["sleb", "ppl"]


def test_a_callable_is_a_method(tiny):
    model, windows, stats = tiny

    def middle(ctx: SelectionContext):
        assert ctx.num_prune == 2 and ctx.protected == (0, N - 1) and ctx.model is model
        return [3, 4]

    plan = select_layers(stats, 2, method=middle, model=model, windows=windows)
    assert plan.method == "middle" and plan.pruned == [3, 4] and plan.kept == [0, 1, 2, 5, 6, 7]


@pytest.mark.parametrize(
    "bad, problem",
    [
        ([3], "has 1 blocks, not the 2 asked for"),
        ([3, 3], "lists a block twice"),
        ([0, 3], r"holds protected blocks \[0\]"),
        ([3, 8], "holds blocks outside 0..7"),
        ([3, "4"], r"holds something other than block indices \(ints\)"),
    ],
)
def test_a_callable_returning_a_bad_plan_is_refused_naming_the_method_and_the_plan(tiny, bad, problem):
    model, windows, stats = tiny

    def mine(ctx):
        return bad

    with pytest.raises(ValueError, match=rf"method 'mine' returned the plan .*, which {problem}; the model was not changed"):
        select_layers(stats, 2, method=mine, model=model, windows=windows)


def test_methods_that_try_plans_need_the_model_and_windows(tiny):
    model, windows, stats = tiny
    with pytest.raises(ValueError, match="method='sleb' tries plans on the model: pass model= and windows="):
        select_layers(stats, 2, method="sleb")
    with pytest.raises(ValueError, match="method='lorp' reads the layer statistics"):
        select_layers(None, 2, method="lorp")
    with pytest.raises(ValueError, match="check_windows must be an int between 1 and the 5 windows given, got 9"):
        select_layers(stats, 2, method="ppl", model=model, windows=windows, check_windows=9)


def test_a_candidate_with_a_non_finite_loss_is_excluded_and_all_non_finite_is_an_error(tiny, monkeypatch):
    model, windows, stats = tiny
    real = PlanLoss._losses

    def poisoned(self, pruned):  # removing block 3 makes the loss NaN
        return [math.nan] * len(self.windows) if 3 in pruned else real(self, pruned)

    monkeypatch.setattr(PlanLoss, "_losses", poisoned)
    for method in ("sleb", "ppl", "lorp_search"):
        plan = select_layers(stats, 2, method=method, model=model, windows=windows, check_windows=2)
        assert 3 not in plan.pruned
    monkeypatch.setattr(PlanLoss, "_losses", lambda self, pruned: [math.inf] * len(self.windows))
    for method in ("sleb", "ppl", "lorp_search"):
        with pytest.raises(FloatingPointError, match="the calibration loss is not finite for any of the"):
            select_layers(stats, 2, method=method, model=model, windows=windows, check_windows=2)


def test_brute_force_agrees_with_an_exhaustive_search_on_the_best_pair(tiny):
    """A sanity check of the reference itself: the best pair by brute force is the one SLEB
    would find if greedy were exact, or a pair at least as good as SLEB's."""
    model, windows, stats = tiny
    pairs = {p: brute_loss(model, list(p), windows[:4]) for p in itertools.combinations(unprotected(), 2)}
    sleb = select_layers(stats, 2, method="sleb", model=model, windows=windows, check_windows=4, score_last=SCORE_LAST)
    assert min(pairs.values()) <= pairs[tuple(sleb.pruned)]


# ------------------------------------------------------------------ every family


@pytest.mark.parametrize("family", sorted(__import__("test_surgery").FAMILIES))
def test_reusing_the_dense_prefix_changes_no_loss_in_any_family(family):
    from test_surgery import SEQ_LEN, VOCAB, build

    model = build(family)
    windows = torch.randint(3, VOCAB - 3, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    reused, plain = PlanLoss(model, windows, score_last=8), PlanLoss(model, windows, score_last=8, reuse_prefix=False)
    for plan in ([2, 3], [4], [1, 5]):
        assert reused(plan) == pytest.approx(plain(plan), abs=1e-6), plan


def test_a_shared_check_computes_each_plan_once_and_costs_each_selection_as_if_alone(tiny):
    model, windows, stats = tiny
    alone = {k: select_layers(stats, k, method="sleb", model=model, windows=windows, check_windows=3) for k in (1, 2)}
    shared = PlanLoss(model, windows[:3], score_last=alone[1].cost and 256)
    together = {k: select_layers(stats, k, method="sleb", shared_checks=shared) for k in (2, 1)}
    for k in (1, 2):
        assert together[k].pruned == alone[k].pruned
        assert together[k].cost["check_windows"] == alone[k].cost["check_windows"]
    assert len(shared.losses) == sleb_checks(N - 2, 2)  # the k=1 selection computed nothing new


def test_checks_read_the_first_check_tokens_of_the_first_check_windows(tiny):
    model, windows, stats = tiny
    alone = {b: brute_loss(model, [b], windows[:3, :8], score_last=4) for b in unprotected()}
    plan = select_layers(stats, 2, method="ppl", model=model, windows=windows, check_windows=3, check_tokens=8, score_last=4)
    assert plan.scores[1:-1] == pytest.approx([alone[b] for b in unprotected()], abs=1e-6)
    with pytest.raises(ValueError, match="check_tokens must be an int >= 2 or None, got 1"):
        select_layers(stats, 2, method="ppl", model=model, windows=windows, check_tokens=1)


def test_a_plan_the_family_cannot_take_has_an_infinite_loss_and_one_it_takes_without_the_prefix_is_checked_plainly():
    from test_surgery import SEQ_LEN, VOCAB, jamba

    model = jamba()  # attention in the odd blocks, MoE in the even ones (period 2)
    windows = torch.randint(3, VOCAB - 3, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    loss = PlanLoss(model, windows, score_last=8)
    assert loss([1]) == math.inf  # block 2 would become block 1, an attention block
    # [3, 4] keeps the period, but with the dense prefix [0, 1, 2] removed too block 5 would become block 0: checked plainly
    assert loss([3, 4]) == pytest.approx(PlanLoss(model, windows, score_last=8, reuse_prefix=False)([3, 4]), abs=1e-6)
    with temporarily_pruned(model, [3, 4]):
        assert loss([3, 4]) == pytest.approx(calibration_loss(model, windows, score_last=8), abs=1e-6)

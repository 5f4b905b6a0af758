"""Specifications of select_layers, the budget rule (6), the baselines and PruningPlan.

Expected plans are derived by hand in the comments; entries are dyadic fractions so that every
comparison is exact.
"""

import json
import math

import numpy as np
import pytest
import torch
from hand_matrices import sym

from lorp_lightning import locality
from lorp_lightning.methods import METHODS, STATS_METHODS, select_layers
from lorp_lightning.selection import PruningPlan, is_budget, resolve_budget
from lorp_lightning.stats import LayerStats


def stats_of(S, S_last=None):
    S = torch.as_tensor(S, dtype=torch.float64)
    return LayerStats(
        similarity=S,
        last_token_similarity=S.clone() if S_last is None else torch.as_tensor(S_last, dtype=torch.float64),
        num_tokens=100,
        num_sequences=4,
    )


# --------------------------------------------------------------------------------------------
# (6) budget


def test_the_budget_rule_is_a_count_or_a_fraction():
    for good in (1, 7, np.int64(3), 0.25, np.float32(0.5)):
        assert is_budget(good), good
    for bad in (0, -1, 3.0, 1.0, 0.0, float("nan"), True, np.bool_(True), "3", None):
        assert not is_budget(bad), bad


def test_budget_int_is_a_count():
    assert resolve_budget(7, 30, 28) == 7


def test_budget_fraction_rounds_down():
    assert resolve_budget(0.25, 30, 28) == 7  # 7.5 -> 7
    assert resolve_budget(0.33, 18, 16) == 5  # 5.94 -> 5
    assert resolve_budget(0.29, 100, 98) == 29  # 0.29 * 100 is 28.999999999999996 in floats
    assert resolve_budget(np.float64(0.5), 10, 8) == 5


def test_select_layers_fraction_of_30_prunes_7():
    S = sym(30, {}, default=0.5)
    assert len(select_layers(S, 0.25, method="last").pruned) == 7


def test_budget_below_one_names_both_numbers():
    with pytest.raises(ValueError, match=r"num_prune=0 .*fewer than 1"):
        resolve_budget(0, 30, 28)
    with pytest.raises(ValueError, match=r"0\.01 of 30 blocks rounds down to 0 blocks.*fewer than 1"):
        resolve_budget(0.01, 30, 28)


def test_budget_above_unprotected_names_both_numbers():
    with pytest.raises(ValueError, match=r"num_prune=29 exceeds the 28 unprotected blocks"):
        resolve_budget(29, 30, 28)
    with pytest.raises(ValueError, match=r"0\.99 of 30 blocks rounds down to 29 blocks.*28 unprotected"):
        resolve_budget(0.99, 30, 28)


@pytest.mark.parametrize("bad", [1.0, 0.0, -0.5, 1.5, float("nan")])
def test_budget_float_outside_open_unit_interval_names_the_value(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        resolve_budget(bad, 30, 28)


@pytest.mark.parametrize("bad", [True, False, "3", None])
def test_budget_bool_and_non_numbers_are_rejected(bad):
    with pytest.raises(ValueError, match=f"got {bad!r}"):
        resolve_budget(bad, 30, 28)


# --------------------------------------------------------------------------------------------
# select_layers: validation


def test_unknown_method_lists_the_methods():
    with pytest.raises(ValueError) as err:
        select_layers(sym(4, {}, 0.5), 1, method="magic")
    for m in METHODS:
        assert m in str(err.value)
    assert "'magic'" in str(err.value)


@pytest.mark.parametrize("bad", [6, -1, 2.5, True])
def test_protect_out_of_range_names_the_value(bad):
    with pytest.raises(ValueError, match=f"protect holds {bad!r}"):
        select_layers(sym(6, {}, 0.5), 1, protect=[1, bad])


def test_num_clusters_out_of_range_names_the_value():
    for bad in (0, 1.5):  # refused by the settings, before the similarity is read
        with pytest.raises(ValueError, match=f"num_clusters must be a positive int or None, got num_clusters={bad!r}"):
            select_layers(sym(6, {}, 0.5), 1, num_clusters=bad)
    with pytest.raises(ValueError, match="num_clusters.*N=6.*7"):  # against the model's depth
        select_layers(sym(6, {}, 0.5), 1, num_clusters=7)


def test_num_clusters_only_for_lorp():
    with pytest.raises(ValueError, match="num_clusters applies only to method='lorp'"):
        select_layers(sym(6, {}, 0.5), 1, method="last", num_clusters=2)


@pytest.mark.parametrize(
    "matrix, message",
    [
        (np.ones((3, 4)), "square"),
        (np.ones(4), "square"),
        (np.ones((1, 1)), "at least 2x2"),
        (sym(4, {(0, 1): np.nan}), "finite"),
        (sym(4, {(0, 1): 0.5}) + np.triu(np.full((4, 4), 0.1), 1), "symmetric"),
        (sym(4, {(0, 1): 1.5}), r"\[-1, 1\]"),
    ],
)
def test_bad_matrices_are_rejected_up_front(matrix, message):
    with pytest.raises(ValueError, match=message):
        select_layers(matrix, 1, method="last", protect=())


def test_bad_seed_names_the_value():
    with pytest.raises(ValueError, match="seed.*-1"):
        select_layers(sym(4, {}, 0.5), 1, seed=-1)


# --------------------------------------------------------------------------------------------
# select_layers: lorp end to end


# three pairs {0,1}, {2,3}, {4,5}: 0.875 inside, 0.5 across
# mean of the 15 pairs = (3 * 0.875 + 12 * 0.5) / 15 = 0.575 -> RLS = -log2(0.575) = 0.798 -> K = 3
# labels [0, 0, 1, 1, 2, 2]; redundancy 0.875 for every block
# protected {0, 5}: rankings [1], [2, 3] (tie, depth order), [4]
# stage 1: 1, 2, 4 -> plan [1, 2, 4]; then only cluster 1 has ranked blocks -> 3
PAIRS = sym(6, {(0, 1): 0.875, (2, 3): 0.875, (4, 5): 0.875}, default=0.5)


def test_lorp_end_to_end_on_three_pairs():
    plan = select_layers(PAIRS, 3)
    assert plan.method == "lorp"
    assert plan.rls == pytest.approx(0.7984, abs=1e-4)
    assert plan.num_clusters == 3
    assert plan.labels == [0, 0, 1, 1, 2, 2]
    assert plan.scores == [0.875] * 6
    assert plan.pruned == [1, 2, 4]
    assert plan.kept == [0, 3, 5]
    assert plan.protected == [0, 5]
    assert plan.seed == 0
    assert select_layers(PAIRS, 4).pruned == [1, 2, 3, 4]


def test_lorp_forced_single_cluster():
    # one cluster; redundancy of block l = mean of its row: r1 = r2 = r3 = r4 = (0.875 + 4*0.5)/5
    # ranking [1, 2, 3, 4] (ties) -> stage 1 prunes 1, stage 2 then 2
    plan = select_layers(PAIRS, 2, num_clusters=1)
    assert plan.num_clusters == 1
    assert plan.labels == [0] * 6
    assert plan.pruned == [1, 2]


def test_lorp_caps_k_at_the_number_of_blocks():
    # 3 blocks, pairs 0.875: RLS = 0.193 -> K = 4 > N = 3 -> K = 3, every block alone
    plan = select_layers(sym(3, {}, 0.875), 1, protect=[0])
    assert plan.num_clusters == 3
    assert plan.labels == [0, 1, 2]
    assert plan.pruned == [1]


def test_lorp_k_from_rls_at_exactly_1_is_2():
    # every pair 0.5: RLS = -log2(0.5) = 1.0 exactly -> K = 2
    plan = select_layers(sym(6, {}, 0.5), 1)
    assert plan.rls == 1.0
    assert plan.num_clusters == 2


def test_lorp_never_prunes_custom_protected_blocks():
    # PAIRS with protected {1, 4}: rankings [0], [2, 3], [5]; stage 1: 0, 2, 5; stage 2: only
    # cluster 1 has ranked blocks left -> 3
    plan = select_layers(PAIRS, 4, protect=[1, 4])
    assert plan.protected == [1, 4]
    assert not set(plan.pruned) & {1, 4}
    assert plan.pruned == [0, 2, 3, 5]


def test_lorp_from_layerstats_ignores_the_output_state():
    # the last row/column of S (the output of block N-1) is not part of LoRP
    full = np.full((7, 7), 0.0625)
    full[:6, :6] = PAIRS
    np.fill_diagonal(full, 1.0)
    plan = select_layers(stats_of(full), 3)
    assert plan == select_layers(PAIRS, 3)
    assert plan.num_layers == 6


def test_numpy_and_tensor_inputs_give_the_same_plan():
    for method in ("lorp", "shortgpt", "streamline", "random", "last"):
        a = select_layers(PAIRS, 2, method=method)
        b = select_layers(torch.from_numpy(PAIRS), 2, method=method)
        c = select_layers(torch.from_numpy(PAIRS).float(), 2, method=method)
        assert a == b == c, method


def test_same_input_same_plan():
    first = select_layers(PAIRS, 3)
    locality.clear_cluster_cache()
    assert select_layers(PAIRS, 3) == first
    assert select_layers(PAIRS.copy(), 3, seed=0) == first


# --------------------------------------------------------------------------------------------
# baselines


# N = 5 blocks, S is 6 x 6 (index 5 = output). Neighbour similarities:
#   S01 = 0.5, S12 = 0.9375, S23 = 0.75, S34 = 0.875, S45 = 0.96875
#   BI = 1 - S[l, l+1] = [0.5, 0.0625, 0.25, 0.125, 0.03125]
NEIGHBOURS = sym(6, {(0, 1): 0.5, (1, 2): 0.9375, (2, 3): 0.75, (3, 4): 0.875, (4, 5): 0.96875}, default=0.25)


def test_shortgpt_prunes_lowest_block_influence():
    plan = select_layers(stats_of(NEIGHBOURS), 2, method="shortgpt")
    assert plan.scores == [0.5, 0.0625, 0.25, 0.125, 0.03125]
    assert plan.pruned == [1, 3]  # protected {0, 4}; lowest BI among 1, 2, 3
    assert plan.rls is None and plan.labels is None and plan.seed is None


def test_shortgpt_scores_the_last_block_from_layerstats():
    plan = select_layers(stats_of(NEIGHBOURS), 1, method="shortgpt", protect=[0])
    assert plan.pruned == [4]  # BI_4 = 0.03125 is the lowest


def test_shortgpt_ties_keep_depth_order():
    S = sym(6, {(1, 2): 0.75, (2, 3): 0.75, (3, 4): 0.75}, default=0.25)  # BI 0.25 for 1, 2, 3
    assert select_layers(stats_of(S), 2, method="shortgpt").pruned == [1, 2]


def test_shortgpt_on_plain_matrix_needs_the_last_block_protected():
    plain = NEIGHBOURS[:5, :5]
    plan = select_layers(plain, 2, method="shortgpt")
    assert plan.pruned == [1, 3]
    assert plan.scores == [0.5, 0.0625, 0.25, 0.125, None]
    with pytest.raises(ValueError, match=r"S\[4, 5\].*LayerStats.*protect the last block"):
        select_layers(plain, 2, method="shortgpt", protect=[0])


# N = 6 blocks, protected {0, 5}. Runs of 2: s = 1 (S13), 2 (S24), 3 (S35); runs of 3: s = 1 (S14), 2 (S25)
#   S:      S13 = 0.5,   S24 = 0.75, S35 = 0.75, S14 = 0.625, S25 = 0.375
#   S_last: S13 = 0.875, S24 = 0.25, S35 = 0.5
RUNS = sym(7, {(1, 3): 0.5, (2, 4): 0.75, (3, 5): 0.75, (1, 4): 0.625, (2, 5): 0.375}, default=0.125)
RUNS_LAST = sym(7, {(1, 3): 0.875, (2, 4): 0.25, (3, 5): 0.5}, default=0.125)


def test_streamline_takes_the_run_with_highest_similarity_across_it():
    stats = stats_of(RUNS, RUNS_LAST)
    plan = select_layers(stats, 2, method="streamline")
    assert plan.pruned == [2, 3]  # S24 = S35 = 0.75: tie, the shallowest
    assert plan.scores == [None, 0.5, 0.75, 0.75, None, None]
    assert select_layers(stats, 3, method="streamline").pruned == [1, 2, 3]  # S14 = 0.625 > S25


def test_streamline_on_plain_matrix_matches_layerstats_when_last_block_protected():
    assert select_layers(RUNS[:6, :6], 2, method="streamline").pruned == [2, 3]
    with pytest.raises(ValueError, match=r"S\[4, 6\].*LayerStats"):
        select_layers(RUNS[:6, :6], 2, method="streamline", protect=[0])


def test_angular_uses_last_token_similarity_not_s():
    plan = select_layers(stats_of(RUNS, RUNS_LAST), 2, method="angular")
    assert plan.pruned == [1, 2]  # S_last13 = 0.875 is the smallest angle; S would give [2, 3]
    assert plan.scores[1] == pytest.approx(math.acos(0.875) / math.pi)
    assert plan.scores[0] is None


def test_angular_clamps_and_ties_go_shallowest():
    last = RUNS_LAST.copy()
    last[3, 5] = last[5, 3] = 1.000001  # rounding above 1: clamped, angle 0
    plan = select_layers(stats_of(RUNS, last), 2, method="angular")
    assert plan.pruned == [3, 4] and plan.scores[3] == 0.0
    tie = sym(7, {(1, 3): 0.5, (2, 4): 0.5, (3, 5): 0.5}, default=0.125)
    assert select_layers(stats_of(RUNS, tie), 2, method="angular").pruned == [1, 2]


def test_angular_needs_layerstats():
    with pytest.raises(ValueError, match="S_last.*LayerStats"):
        select_layers(RUNS[:6, :6], 2, method="angular")


def test_no_contiguous_run_is_an_error():
    # N = 6, protected {0, 2, 4, 5}: unprotected 1 and 3 are not adjacent
    for method in ("streamline", "angular"):
        with pytest.raises(ValueError, match="no contiguous run of 2 unprotected blocks"):
            select_layers(stats_of(RUNS, RUNS_LAST), 2, method=method, protect=[0, 2, 4, 5])


def test_random_is_seeded_sorted_and_unprotected():
    S = sym(12, {}, 0.5)
    plans = {seed: select_layers(S, 4, method="random", seed=seed) for seed in range(5)}
    for seed, plan in plans.items():
        assert plan == select_layers(S, 4, method="random", seed=seed)
        assert plan.pruned == sorted(plan.pruned) and len(set(plan.pruned)) == 4
        assert not set(plan.pruned) & {0, 11}
        assert plan.seed == seed
    assert len({tuple(p.pruned) for p in plans.values()}) > 1


def test_last_prunes_the_deepest_unprotected_blocks():
    S = sym(8, {}, 0.5)
    assert select_layers(S, 3, method="last").pruned == [4, 5, 6]
    assert select_layers(S, 2, method="last", protect=[0, 6, 7]).pruned == [4, 5]


# --------------------------------------------------------------------------------------------
# PruningPlan


def test_plan_json_round_trip_with_minus_inf_scores():
    # K = 2 on PAIRS-like data with a singleton cluster gives a -inf redundancy
    S = sym(5, {(0, 1): 0.875, (0, 2): 0.875, (1, 2): 0.875, (0, 3): 0.875, (1, 3): 0.875, (2, 3): 0.875}, default=-0.75)
    plan = select_layers(S, 2, num_clusters=2, protect=[0])
    assert plan.labels == [0, 0, 0, 0, 1]
    assert plan.scores[4] == -math.inf
    text = plan.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert PruningPlan.from_json(text) == plan


def test_plan_json_round_trip_of_every_method_and_infinite_rls():
    stats = stats_of(RUNS, RUNS_LAST)
    for method in STATS_METHODS:
        plan = select_layers(stats, 2, method=method)
        assert PruningPlan.from_json(plan.to_json(indent=2)) == plan, method
    odd = PruningPlan(
        "lorp", 3, [1], [0, 2], [0], rls=math.inf, num_clusters=2, labels=[0, 0, 1], scores=[0.5, 0.5, -math.inf], seed=0
    )
    assert PruningPlan.from_json(odd.to_json()) == odd


def test_plan_str_is_readable():
    text = str(select_layers(PAIRS, 3))
    assert text.startswith("lorp: prune 3 of 6 blocks [1, 2, 4]; RLS 0.798, K 3")
    assert "clusters [0]*2 + [1]*2 + [2]*2" in text
    assert str(select_layers(PAIRS, 2, method="last")) == "last: prune 2 of 6 blocks [3, 4]; protected [0, 5]"


def test_every_budget_from_one_layerstats():
    stats = stats_of(RUNS, RUNS_LAST)  # N = 6, 4 unprotected
    plans = [select_layers(stats, k) for k in range(1, 5)]
    assert [len(p.pruned) for p in plans] == [1, 2, 3, 4]
    for small, large in zip(plans, plans[1:], strict=False):
        assert set(small.pruned) <= set(large.pruned)  # the allocation order nests


# --------------------------------------------------------------------------------------------
# candidate plans of lorp_checked

# PAIRS with the output state appended: S[l, l+1] = 0.875, 0.5, 0.875, 0.5, 0.875, 0.5 (l = 0..5)
PAIRS_FULL = sym(7, {(0, 1): 0.875, (2, 3): 0.875, (4, 5): 0.875}, default=0.5)


def test_allocate_lorp_with_a_ranking_orders_blocks_within_clusters_by_it():
    labels = [0, 0, 1, 1, 2, 2]
    assert locality.allocate_lorp(PAIRS, labels, 4, protected={0, 5}) == [1, 2, 4, 3]
    # ranking 3 above 2 in cluster 1: stage 1 takes 3 there
    ranking = [0.0, 0.0, 0.25, 0.75, 0.0, 0.0]
    assert locality.allocate_lorp(PAIRS, labels, 4, protected={0, 5}, ranking=ranking) == [1, 3, 4, 2]
    with pytest.raises(ValueError, match="ranking must have one score per block"):
        locality.allocate_lorp(PAIRS, labels, 2, ranking=[0.0])


def test_candidate_plans_by_hand():
    # clusters {0,1} {2,3} {4,5} (as in test_lorp_end_to_end_on_three_pairs); k = 2, protected {0, 5}
    # lorp: stage 1 takes 1 (cluster 0), 2 (cluster 1)              -> [1, 2]
    # lorp/influence: in cluster 1, S[2,3] = 0.875 > S[3,4] = 0.5   -> [1, 2] again (listed once)
    # spare 0: clusters 1, 2 only -> 2, 4;  spare 1: -> 1, 4;  spare 2: -> 1, 2 (again)
    # within c: only cluster 1 has 2 unprotected blocks             -> [2, 3]
    # run from c: S[1,3] = S[2,4] = S[3,5] = 0.5, ties keep the shallowest start:
    #   from 0: [1, 2] (again), from 1: [2, 3] (again), from 2: none ([4, 5] holds protected 5)
    # K = 1: lorp: every block's redundancy is 3.5/5, depth order -> [1, 2] (again);
    #   influence S[l, l+1] ranks 2, 4 first -> lorp/influence and within 0: [2, 4] (again);
    #   run from 0: [1, 2] (again)
    from lorp_lightning.search import candidate_plans

    plans = candidate_plans(stats_of(PAIRS_FULL), 2)
    assert [(p["rule"], p["pruned"]) for p in plans] == [
        ("lorp (K=3)", [1, 2]),
        ("spare 0 (K=3)", [2, 4]),
        ("spare 1 (K=3)", [1, 4]),
        ("within 1 (K=3)", [2, 3]),
    ]


@pytest.mark.parametrize("seed", range(5))
def test_candidate_plans_hold_the_faithful_shortgpt_and_streamline_plans_and_respect_the_budget(seed):
    from lorp_lightning.search import candidate_plans

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(13, 8)).cumsum(axis=0)  # 12 blocks and the output, states drifting with depth
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    stats = stats_of(X @ X.T)
    for k in (1, 3, 5):
        plans = candidate_plans(stats, k)
        blocks = [tuple(p["pruned"]) for p in plans]
        assert blocks[0] == tuple(select_layers(stats, k).pruned)
        assert tuple(select_layers(stats, k, method="streamline").pruned) in blocks
        assert tuple(select_layers(stats, k, method="shortgpt").pruned) in blocks
        assert len(set(blocks)) == len(blocks)
        assert all(len(b) == k and 0 not in b and 11 not in b and list(b) == sorted(b) for b in blocks)


def test_candidate_plans_need_layerstats():
    from lorp_lightning.search import candidate_plans

    with pytest.raises(ValueError, match="needs a LayerStats"):
        candidate_plans(PAIRS, 2)


def test_the_prune_settings_select_as_the_same_arguments_and_an_argument_given_with_them_replaces_their_own():
    from lorp_lightning.methods import PruneSettings

    S = sym(10, {(4, 5): 0.99, (5, 6): 0.98}, default=0.5)
    settings = PruneSettings(3, method="shortgpt", protect=(0, 9))
    assert select_layers(S, settings=settings) == select_layers(S, 3, method="shortgpt", protect=(0, 9))
    assert select_layers(S, 2, settings=settings) == select_layers(S, 2, method="shortgpt", protect=(0, 9))
    assert select_layers(S, settings=settings, method="last").pruned == [6, 7, 8]


def test_a_bad_prune_setting_is_refused_when_the_settings_are_built_naming_its_parameter():
    from lorp_lightning import ParameterError
    from lorp_lightning.methods import PruneSettings

    for kwargs, parameter in (
        (dict(amount=1.5), "amount"),
        (dict(method="best"), "method"),
        (dict(rounds=0), "rounds"),
        (dict(num_clusters=2), "num_clusters"),
        (dict(protect=[-1]), "protect"),
        (dict(compensate=1), "compensate"),
        (dict(seed=-1), "seed"),
    ):
        with pytest.raises(ParameterError) as error:
            PruneSettings(**kwargs)
        assert error.value.parameter == parameter, kwargs

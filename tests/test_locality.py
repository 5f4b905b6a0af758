"""Specifications of the LoRP locality maths, (2)-(5), on hand-made matrices.

Every expected value below is derived by hand in the comments next to it. Matrix entries are
dyadic fractions (0.25, 0.625, ...) so sums and means are exact and ties are real ties.
"""

import functools
import math

import numpy as np
import pytest
import torch
from hand_matrices import sym

from lorp_lightning import locality
from lorp_lightning.locality import (
    allocate_lorp,
    block_redundancy,
    cluster_layers,
    clusters_for_rls,
    renumber_labels,
    representation_locality_score,
    residual_redundancy,
)

# --------------------------------------------------------------------------------------------
# (2) RLS


def test_rls_is_minus_log2_of_mean_upper_triangle():
    # pairs (0,1)=0.5, (0,2)=0.25, (1,2)=0.75: mean 0.5 -> RLS = -log2(0.5) = 1
    S = sym(3, {(0, 1): 0.5, (0, 2): 0.25, (1, 2): 0.75})
    assert representation_locality_score(S) == 1.0


def test_rls_reads_only_the_strict_upper_triangle():
    # 4 blocks, all six pairs 0.125: mean 1/8 -> RLS 3. The diagonal (here 0.5) is not read.
    S = np.full((4, 4), 0.125)
    np.fill_diagonal(S, 0.5)
    assert representation_locality_score(S) == 3.0


def test_rls_accepts_a_tensor():
    S = torch.full((4, 4), 0.25, dtype=torch.float64).fill_diagonal_(1.0)
    assert representation_locality_score(S) == 2.0


def test_rls_is_inf_when_mean_similarity_is_not_positive():
    # pairs 0.5, -0.5, 0: mean 0 -> the limit of -log2 is +inf
    S = sym(3, {(0, 1): 0.5, (0, 2): -0.5, (1, 2): 0.0})
    assert representation_locality_score(S) == math.inf


def test_rls_needs_at_least_two_blocks():
    with pytest.raises(ValueError, match="at least 2x2"):
        representation_locality_score(np.ones((1, 1)))


# --------------------------------------------------------------------------------------------
# (3) granularity


def test_k_is_2_at_rls_exactly_1():
    assert clusters_for_rls(1.0) == 2


def test_k_is_3_just_below_rls_1():
    assert clusters_for_rls(math.nextafter(1.0, 0.0)) == 3


def test_k_is_3_at_rls_exactly_0_7():
    assert clusters_for_rls(0.7) == 3


def test_k_is_4_just_below_rls_0_7():
    assert clusters_for_rls(math.nextafter(0.7, 0.0)) == 4


def test_k_at_extremes():
    assert clusters_for_rls(0.0) == 4
    assert clusters_for_rls(7.5) == 2
    assert clusters_for_rls(math.inf) == 2


def test_k_rejects_nan_naming_the_value():
    with pytest.raises(ValueError, match="nan"):
        clusters_for_rls(float("nan"))


# --------------------------------------------------------------------------------------------
# (4) clustering and renumbering


def test_renumber_labels_by_first_appearance():
    assert renumber_labels([1, 1, 0, 0, 2, 2]) == [0, 0, 1, 1, 2, 2]
    assert renumber_labels([2, 0, 2, 1]) == [0, 1, 0, 2]
    assert renumber_labels(np.array([3, 3, 3])) == [0, 0, 0]


def test_cluster_layers_renumbers_sklearn_labels_and_passes_the_affinity(monkeypatch):
    import sklearn.cluster

    seen = {}

    class FakeSpectralClustering:
        def __init__(self, **kwargs):
            seen["kwargs"] = kwargs

        def fit_predict(self, A):
            seen["A"] = A.copy()
            return np.array([1, 1, 0, 0, 2, 2])  # raw sklearn labels

    monkeypatch.setattr(sklearn.cluster, "SpectralClustering", FakeSpectralClustering)
    # unmemoised, so that scikit-learn is called and no fake result stays memoised
    monkeypatch.setattr(locality, "_spectral_labels", functools.lru_cache(maxsize=0)(locality._spectral_labels.__wrapped__))
    S = sym(6, {(0, 1): 0.5, (2, 3): 0.5, (4, 5): 0.5, (0, 5): -1.0}, default=0.0)
    np.fill_diagonal(S, 0.75)  # the affinity sets its own unit diagonal
    assert cluster_layers(S, 3, seed=7) == [0, 0, 1, 1, 2, 2]
    assert seen["kwargs"] == dict(n_clusters=3, affinity="precomputed", assign_labels="kmeans", random_state=7)
    # A = (S + 1) / 2, unit diagonal: 0.5 -> 0.75, 0 -> 0.5, -1 -> 0
    expected = np.full((6, 6), 0.5)
    for i, j in [(0, 1), (2, 3), (4, 5)]:
        expected[i, j] = expected[j, i] = 0.75
    expected[0, 5] = expected[5, 0] = 0.0
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_array_equal(seen["A"], expected)


def test_cluster_layers_finds_block_structure_numbered_in_depth_order():
    # blocks {0,1,2}, {3,4}, {5,6,7}: 0.875 inside, 0.0625 across
    inside = {(0, 1), (0, 2), (1, 2), (3, 4), (5, 6), (5, 7), (6, 7)}
    S = sym(8, {p: 0.875 for p in inside}, default=0.0625)
    assert cluster_layers(S, 3) == [0, 0, 0, 1, 1, 2, 2, 2]


def test_cluster_layers_with_one_cluster_or_one_per_block():
    S = sym(4, {}, default=0.5)
    assert cluster_layers(S, 1) == [0, 0, 0, 0]
    assert cluster_layers(S, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [0, 5, -1, 2.0, True])
def test_cluster_layers_rejects_bad_k_naming_it(bad):
    with pytest.raises(ValueError, match=f"num_clusters.*{bad!r}"):
        cluster_layers(sym(4, {}, default=0.5), bad)


def test_cluster_layers_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    f = np.cumsum(rng.standard_normal((20, 8)), axis=0)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    S = f @ f.T
    first = cluster_layers(S, 3, seed=0)
    locality.clear_cluster_cache()
    assert cluster_layers(S, 3, seed=0) == first
    assert first[0] == 0


# --------------------------------------------------------------------------------------------
# (5) redundancy


# labels [0, 0, 1, 1, 1, 2]
#   cluster 0 = {0, 1}:    S01 = 0.75
#   cluster 1 = {2, 3, 4}: S23 = 0.5, S24 = 0.625, S34 = 0.875
#   cluster 2 = {5}
#   across clusters: 0.125 (never read)
# redundancy: r0 = r1 = 0.75; r2 = (0.5 + 0.625)/2 = 0.5625; r3 = (0.5 + 0.875)/2 = 0.6875;
#             r4 = (0.625 + 0.875)/2 = 0.75; r5 = -inf (alone)
# ranking: cluster 0 [0, 1] (tie, depth order); cluster 1 [4, 3, 2]; cluster 2 [5]
THREE = sym(6, {(0, 1): 0.75, (2, 3): 0.5, (2, 4): 0.625, (3, 4): 0.875}, default=0.125)
THREE_LABELS = [0, 0, 1, 1, 1, 2]


def test_redundancy_is_mean_similarity_to_other_members_and_minus_inf_alone():
    assert block_redundancy(THREE, THREE_LABELS) == [0.75, 0.75, 0.5625, 0.6875, 0.75, -math.inf]


def test_residual_redundancy_is_mean_over_pairs():
    assert residual_redundancy(THREE, [2, 3, 4]) == (0.5 + 0.625 + 0.875) / 3
    assert residual_redundancy(THREE, [3, 2]) == 0.5
    assert residual_redundancy(THREE, [4]) == -math.inf
    assert residual_redundancy(THREE, []) == -math.inf


# --------------------------------------------------------------------------------------------
# (5a) stage 1


def test_stage1_prunes_the_top_block_of_each_cluster_in_cluster_order():
    assert allocate_lorp(THREE, THREE_LABELS, 1) == [0]
    assert allocate_lorp(THREE, THREE_LABELS, 2) == [0, 4]
    assert allocate_lorp(THREE, THREE_LABELS, 3) == [0, 4, 5]


def test_stage1_skips_a_cluster_whose_members_are_all_protected():
    # labels [0, 1, 1, 1, 2], protected {0, 4}: clusters 0 and 2 have nothing to prune.
    # cluster 1: S12 = 0.5, S13 = 0.75, S23 = 0.5 -> r1 = 0.625, r2 = 0.5, r3 = 0.625 -> [1, 3, 2]
    S = sym(5, {(1, 2): 0.5, (1, 3): 0.75, (2, 3): 0.5}, default=0.25)
    assert allocate_lorp(S, [0, 1, 1, 1, 2], 1, protected={0, 4}) == [1]
    assert allocate_lorp(S, [0, 1, 1, 1, 2], 3, protected={0, 4}) == [1, 3, 2]


# --------------------------------------------------------------------------------------------
# (5b) stage 2


def test_stage2_prunes_from_the_cluster_with_highest_residual_redundancy():
    # after stage 1 ([0, 4, 5]): cluster 0 keeps {1} -> -inf; cluster 1 keeps {2, 3} -> S23 = 0.5;
    # cluster 2 has nothing ranked left. Cluster 1 gets the fourth block, its next ranked: 3.
    assert allocate_lorp(THREE, THREE_LABELS, 4) == [0, 4, 5, 3]


def test_stage2_fallback_takes_lowest_index_cluster_when_all_residuals_are_minus_inf():
    # after [0, 4, 5, 3]: cluster 0 keeps {1}, cluster 1 keeps {2}: both -inf -> cluster 0 -> 1
    assert allocate_lorp(THREE, THREE_LABELS, 5) == [0, 4, 5, 3, 1]
    assert allocate_lorp(THREE, THREE_LABELS, 6) == [0, 4, 5, 3, 1, 2]


# labels [0, 0, 0, 0, 1, 1, 1, 1], protected {0, 7}
#   cluster 0 = {0,1,2,3}: S01 = 0.25, S02 = 0.5, S03 = 0.5, S12 = 0.75, S13 = 0.75, S23 = 0.875
#     r1 = (0.25 + 0.75 + 0.75)/3 = 1.75/3; r2 = (0.5 + 0.75 + 0.875)/3 = 2.125/3 = r3
#     ranking of {1, 2, 3}: [2, 3, 1] (2 and 3 tie, depth order)
#   cluster 1 = {4,5,6,7}: S45 = S46 = S56 = 0.625, S47 = S57 = S67 = 0.25
#     r4 = r5 = r6 = 1.5/3 = 0.5 -> ranking [4, 5, 6]
# stage 1: 2, then 4
# stage 2: residual of {0,1,3} = (0.25 + 0.5 + 0.75)/3 = 0.5 > {5,6,7} = (0.625 + 0.25 + 0.25)/3 = 0.375
#          -> 3; then {0,1} = 0.25 < 0.375 -> 5 (cluster 0's residual was recomputed and fell);
#          then {0,1} = 0.25 == {6,7} = 0.25 -> tie, lower cluster index -> 1; then 6.
TWO = sym(
    8,
    {
        (0, 1): 0.25,
        (0, 2): 0.5,
        (0, 3): 0.5,
        (1, 2): 0.75,
        (1, 3): 0.75,
        (2, 3): 0.875,
        (4, 5): 0.625,
        (4, 6): 0.625,
        (5, 6): 0.625,
        (4, 7): 0.25,
        (5, 7): 0.25,
        (6, 7): 0.25,
    },
    default=0.0625,
)
TWO_LABELS = [0, 0, 0, 0, 1, 1, 1, 1]


def test_stage2_recomputes_residual_after_each_prune():
    assert allocate_lorp(TWO, TWO_LABELS, 3, protected={0, 7}) == [2, 4, 3]
    assert allocate_lorp(TWO, TWO_LABELS, 4, protected={0, 7}) == [2, 4, 3, 5]


def test_stage2_residual_tie_goes_to_lower_cluster_index():
    assert allocate_lorp(TWO, TWO_LABELS, 6, protected={0, 7}) == [2, 4, 3, 5, 1, 6]


def test_ranking_ties_keep_depth_order():
    S = sym(4, {}, default=0.5)  # every redundancy is 0.5
    assert allocate_lorp(S, [0, 0, 0, 0], 4) == [0, 1, 2, 3]


def test_equal_residuals_in_stage2_go_to_lower_cluster_then_fallback():
    # two clusters {0,1,2}, {3,4,5}, every pair inside 0.5, no protection.
    # stage 1: 0, 3. residuals {1,2} = 0.5 == {4,5} = 0.5 -> cluster 0 -> 1.
    # {2} = -inf < {4,5} = 0.5 -> 4. both -inf -> fallback cluster 0 -> 2, then 5.
    S = sym(6, {}, default=0.5)
    assert allocate_lorp(S, [0, 0, 0, 1, 1, 1], 6) == [0, 3, 1, 4, 2, 5]


def test_protected_blocks_are_never_pruned_but_count_in_residual_redundancy():
    # labels [0, 0, 0, 1, 1, 1], protected {0, 5}
    #   cluster 0: S01 = S02 = 0.25, S12 = 0.75 -> r1 = r2 = 0.5 -> ranking [1, 2]
    #   cluster 1: S34 = 0.75, S35 = S45 = 0.5 -> r3 = r4 = 0.625 -> ranking [3, 4]
    # stage 1: 1, 3. Residuals with the protected members: {0, 2} = 0.25 < {4, 5} = 0.5 -> 4.
    # (Leaving protected blocks out would give {2} = {4} = -inf and the fallback 2.)
    S = sym(6, {(0, 1): 0.25, (0, 2): 0.25, (1, 2): 0.75, (3, 4): 0.75, (3, 5): 0.5, (4, 5): 0.5})
    order = allocate_lorp(S, [0, 0, 0, 1, 1, 1], 3, protected={0, 5})
    assert order == [1, 3, 4]
    assert allocate_lorp(S, [0, 0, 0, 1, 1, 1], 4, protected={0, 5}) == [1, 3, 4, 2]


def test_allocation_orders_are_nested_across_budgets():
    full = allocate_lorp(TWO, TWO_LABELS, 6, protected={0, 7})
    for k in range(7):
        assert allocate_lorp(TWO, TWO_LABELS, k, protected={0, 7}) == full[:k]


def test_allocation_rejects_a_budget_beyond_the_unprotected_blocks():
    with pytest.raises(ValueError, match="num_prune.*7"):
        allocate_lorp(TWO, TWO_LABELS, 7, protected={0, 7})
    with pytest.raises(ValueError, match="labels"):
        allocate_lorp(TWO, [0, 0, 1], 1)

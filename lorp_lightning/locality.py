"""The locality analysis of LoRP (Locality-Aware Redundancy Pruning, arXiv 2605.27786): pure maths.

Everything here is a function of a similarity matrix (a NumPy array or a torch tensor) and plain
Python values: no Lightning, no transformers, no model specifics.

Notation: a model has N decoder blocks and N+1 hidden states h_0..h_N; h_l (l < N) is the state
that *enters* block l. The functions in this module take the **block-input similarity**
``S = similarity[:N, :N]``, the N x N matrix of mean cosine similarities between the hidden states
entering every pair of blocks (``LayerStats.similarity[:-1, :-1]``). The diagonal of S is never
read (every definition below uses i != j, and the affinity sets its own diagonal).

The equation numbers in the comments are those of the method description:

    (2) RLS = -log2( mean_{0 <= i < j < N} S[i, j] )
    (3) K   = 2 if RLS >= 1.0;  3 if 0.7 <= RLS < 1.0;  4 otherwise
    (4) A   = (S + 1) / 2 with unit diagonal; spectral clustering of A into K clusters; labels
            renumbered by first appearance in depth order
    (5) two-stage allocation: (5a) one block per cluster in cluster order, then (5b) the next
        ranked block of the cluster with the highest residual redundancy, until the budget is spent
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lorp_lightning._validation import ParameterError, is_integer

__all__ = [
    "Similarities",
    "allocate_lorp",
    "angular_similarity",
    "block_redundancy",
    "clear_cluster_cache",
    "cluster_layers",
    "clusters_for_rls",
    "read_similarities",
    "renumber_labels",
    "representation_locality_score",
    "residual_redundancy",
]

# Tolerances of the input checks. Similarities accumulated in float32 may be off by ~1e-7.
SYMMETRY_ATOL = 1e-5
RANGE_ATOL = 1e-5

# (3) thresholds of the granularity rule
RLS_COARSE = 1.0  # RLS >= 1.0       -> K = 2
RLS_MEDIUM = 0.7  # 0.7 <= RLS < 1.0 -> K = 3, below -> K = 4


# --------------------------------------------------------------------------------------------
# input checks


def as_similarity_matrix(similarity: Any, *, name: str = "similarity", min_size: int = 1) -> np.ndarray:
    """Check a similarity matrix and return it as a symmetric float64 NumPy array (a copy).

    Accepts a NumPy array, a torch tensor, or nested lists. It must be 2-D, square, at least
    ``min_size`` x ``min_size``, finite, symmetric within ``SYMMETRY_ATOL`` and within
    [-1, 1] up to ``RANGE_ATOL``. The result is symmetrised, ``(S + S.T) / 2`` (a no-op for an
    exactly symmetric input), so that later steps see one value per pair.
    """
    if torch.is_tensor(similarity):
        array = similarity.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            array = np.asarray(similarity, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a square matrix (NumPy array or torch tensor), got {type(similarity).__name__}"
            ) from err
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix, got shape {tuple(array.shape)}")
    if array.shape[0] < min_size:
        raise ValueError(f"{name} must be at least {min_size}x{min_size}, got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise ValueError(f"{name} must be finite, but {name}[{bad[0]}, {bad[1]}] = {array[bad]}")
    asym = float(np.abs(array - array.T).max()) if array.size else 0.0
    if asym > SYMMETRY_ATOL:
        raise ValueError(f"{name} must be symmetric, but max |S - S^T| = {asym:.3g} > {SYMMETRY_ATOL:g}")
    lo, hi = float(array.min()), float(array.max())
    if lo < -1.0 - RANGE_ATOL or hi > 1.0 + RANGE_ATOL:
        raise ValueError(f"{name} must hold cosine similarities in [-1, 1], got values in [{lo:.6g}, {hi:.6g}]")
    return (array + array.T) / 2.0


# --------------------------------------------------------------------------------------------
# (2) representation locality score and (3) granularity


def angular_similarity(similarity: Any) -> np.ndarray:
    """An alternative locality metric: 1 - arccos(S) / pi, the cosine similarity turned into one minus the angular
    distance (Gromov et al. 2024; 1 for the same direction, 0.5 at right angles, 0 for opposite ones).

    The same order of pairs as S, but spread out near S = 1, where depth pruning's decisions lie: fed through the
    same RLS, clustering and allocation, it may choose other blocks (docs/calibration.md). Takes and returns a
    square matrix of any size (the N x N S, or a LayerStats' (N+1) x (N+1) one).
    """
    S = as_similarity_matrix(similarity)
    return 1.0 - np.arccos(np.clip(S, -1.0, 1.0)) / np.pi


def representation_locality_score(similarity: Any) -> float:
    """(2) RLS = -log2( mean of S[i, j] over 0 <= i < j < N ).

    Args:
        similarity: S, the N x N block-input similarity (``LayerStats.similarity[:-1, :-1]``),
            N >= 2. Only the strict upper triangle is read.

    Returns:
        RLS as a float. High RLS = low mean similarity between block inputs. If the mean is
        <= 0 the logarithm is undefined; RLS is then ``math.inf`` (its limit as the mean goes
        to 0 from above), which selects the coarsest granularity, K = 2.
    """
    S = as_similarity_matrix(similarity, min_size=2)
    N = S.shape[0]
    i, j = np.triu_indices(N, k=1)  # 0 <= i < j < N
    mean = float(S[i, j].mean())
    if mean <= 0.0:
        return math.inf
    return -math.log2(mean)  # (2) RLS


def clusters_for_rls(rls: float) -> int:
    """(3) Granularity: K = 2 if RLS >= 1.0; K = 3 if 0.7 <= RLS < 1.0; K = 4 otherwise."""
    if not isinstance(rls, numbers.Real) or isinstance(rls, (bool, np.bool_)) or math.isnan(rls):
        raise ValueError(f"rls must be a real number (not NaN), got {rls!r}")
    if rls >= RLS_COARSE:
        return 2
    if rls >= RLS_MEDIUM:
        return 3
    return 4


# --------------------------------------------------------------------------------------------
# (4) clustering


def renumber_labels(labels: Iterable[int]) -> list[int]:
    """(4) Renumber cluster labels by first appearance in depth order.

    Block 0's cluster becomes 0, the next new label met going deeper becomes 1, and so on:
    ``[1, 1, 0, 0, 2, 2] -> [0, 0, 1, 1, 2, 2]``; ``[2, 0, 2, 1] -> [0, 1, 0, 2]``.
    """
    new_of: dict[int, int] = {}
    out = []
    for label in labels:
        label = int(label)
        if label not in new_of:
            new_of[label] = len(new_of)
        out.append(new_of[label])
    return out


def clear_cluster_cache() -> None:
    """Forget memoised [`cluster_layers`][lorp_lightning.locality.cluster_layers] results (they are only a speed-up)."""
    _spectral_labels.cache_clear()


def cluster_layers(similarity: Any, num_clusters: int, seed: int = 0) -> list[int]:
    """(4) Cluster the N blocks by spectral clustering of their input similarity.

    A = (S + 1) / 2 with its diagonal set to 1, then scikit-learn
    ``SpectralClustering(n_clusters=K, affinity="precomputed", assign_labels="kmeans",
    random_state=seed)``; the labels are renumbered by first appearance in depth order
    (`renumber_labels`).

    Args:
        similarity: S, the N x N block-input similarity.
        num_clusters: K, an int with 1 <= K <= N. K = 1 (every block in cluster 0) and K = N
            (every block alone, labels 0..N-1) have one answer and do not call scikit-learn.
        seed: ``random_state`` of the spectral clustering (default 0), an int >= 0.

    Returns:
        A list of N cluster labels in 0..K-1, block 0's label being 0.
    """
    S = as_similarity_matrix(similarity)
    N = S.shape[0]
    if not is_integer(num_clusters) or not 1 <= num_clusters <= N:
        raise ParameterError(
            "num_clusters", f"num_clusters must be an int between 1 and the number of blocks N={N}, got {num_clusters!r}"
        )
    if not is_integer(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    num_clusters, seed = int(num_clusters), int(seed)
    if num_clusters == 1:  # the only partition into one cluster
        return [0] * N
    if num_clusters == N:  # the only partition into N non-empty clusters, already renumbered
        return list(range(N))

    A = (np.clip(S, -1.0, 1.0) + 1.0) / 2.0  # (4) affinity, in [0, 1]
    np.fill_diagonal(A, 1.0)
    return list(_spectral_labels(A.tobytes(), N, num_clusters, seed))


# Spectral clustering takes milliseconds; selecting every budget from one matrix calls it with the
# same arguments again and again, so its labels are memoised on the affinity's bytes, K and seed.
@functools.lru_cache(maxsize=64)
def _spectral_labels(affinity: bytes, N: int, num_clusters: int, seed: int) -> tuple[int, ...]:
    from sklearn.cluster import SpectralClustering  # imported here: scikit-learn is slow to import

    A = np.frombuffer(affinity, dtype=np.float64).reshape(N, N).copy()
    raw = SpectralClustering(
        n_clusters=num_clusters, affinity="precomputed", assign_labels="kmeans", random_state=seed
    ).fit_predict(A)
    return tuple(renumber_labels(raw))  # (4) first appearance in depth order


# --------------------------------------------------------------------------------------------
# (5) allocation


def _check_labels(labels: Sequence[int], N: int) -> list[int]:
    labels = [int(x) for x in labels]
    if len(labels) != N:
        raise ValueError(f"labels must have one entry per block (N={N}), got {len(labels)}")
    if any(x < 0 for x in labels):
        raise ValueError(f"labels must be >= 0, got {labels}")
    return labels


def block_redundancy(similarity: Any, labels: Sequence[int]) -> list[float]:
    """(5) Redundancy of every block in its cluster.

    r_l = mean of S[l, m] over the other members m of l's cluster (protected members
    included); ``-inf`` if l is alone in its cluster.
    """
    S = as_similarity_matrix(similarity)
    return _block_redundancy(S, _check_labels(labels, S.shape[0]))


def _block_redundancy(S: np.ndarray, labels: list[int]) -> list[float]:
    N = S.shape[0]
    out = [-math.inf] * N
    for c in sorted(set(labels)):
        members = [l for l in range(N) if labels[l] == c]
        if len(members) < 2:
            continue  # alone in its cluster: -inf
        sub = S[np.ix_(members, members)]
        np.fill_diagonal(sub, 0.0)  # leave l itself out: r_l = sum_{m != l} S[l, m] / (|C| - 1)
        r = sub.sum(axis=1) / (len(members) - 1)
        for l, r_l in zip(members, r.tolist(), strict=True):
            out[l] = r_l
    return out


def _pair_mean(upper: np.ndarray, members: Sequence[int]) -> float:
    """Mean of S[i, j] over pairs i < j of ``members``, given ``upper = np.triu(S, 1)``."""
    r = len(members)
    if r < 2:
        return -math.inf
    idx = np.asarray(sorted(members))
    # upper[i, j] is S[i, j] for i < j and 0 otherwise, so this sums every pair exactly once
    return float(upper[idx][:, idx].sum() / (r * (r - 1) / 2))


def residual_redundancy(similarity: Any, members: Sequence[int]) -> float:
    """(5b) Mean of S[i, j] over pairs i < j of ``members``; ``-inf`` for fewer than two."""
    S = as_similarity_matrix(similarity)
    members = sorted({int(m) for m in members})
    return _pair_mean(np.triu(S, 1), members)


def allocate_lorp(
    similarity: Any,
    labels: Sequence[int],
    num_prune: int,
    protected: Iterable[int] = (),
    ranking: Sequence[float] | None = None,
) -> list[int]:
    """(5) The two-stage LoRP allocation of a pruning budget over the clusters.

    Each cluster's unprotected members are ranked once by `block_redundancy` (or by
    ``ranking`` when given), highest first, ties in depth order; the ranking is not recomputed
    as blocks are removed.

    (5a) Coverage: for clusters 0, 1, ..., K-1 in turn, prune the cluster's first-ranked block,
         until the budget is spent (clusters without unprotected members are skipped).
    (5b) Residual: while budget remains, among the clusters that still have ranked blocks, prune
         the next ranked block of the one with the highest residual redundancy (mean S[i, j]
         over pairs of its members not yet pruned, protected members included; -inf under two
         members); ties go to the lower cluster index. If every such cluster is at -inf, take
         the lowest-index one.

    Args:
        similarity: S, the N x N block-input similarity.
        labels: N cluster labels (0..K-1, as from [`cluster_layers`][lorp_lightning.locality.cluster_layers]).
        num_prune: how many blocks to prune, 0 <= num_prune <= number of unprotected blocks.
        protected: block indices never pruned (default: none).
        ranking: one score per block, higher = pruned first within its cluster; default None:
            `block_redundancy`, as the method defines it.

    Returns:
        The pruned blocks **in the order they were chosen** (sort them for a plan). Since the
        choices never look at the budget, the order for budget k is the first k entries of the
        order for any larger budget.
    """
    S = as_similarity_matrix(similarity)
    N = S.shape[0]
    labels = _check_labels(labels, N)
    protected = set(protected)
    for p in protected:
        if not is_integer(p) or not 0 <= p < N:
            raise ValueError(f"protected holds {p!r}, which is not a block index in 0..{N - 1}")
    protected = {int(p) for p in protected}
    unprotected = [l for l in range(N) if l not in protected]
    if not is_integer(num_prune) or not 0 <= num_prune <= len(unprotected):
        raise ValueError(f"num_prune must be an int between 0 and the {len(unprotected)} unprotected blocks, got {num_prune!r}")

    K = max(labels) + 1
    members = [[l for l in range(N) if labels[l] == c] for c in range(K)]
    if ranking is None:
        redundancy = _block_redundancy(S, labels)
    else:
        redundancy = [float(r) for r in ranking]
        if len(redundancy) != N:
            raise ValueError(f"ranking must have one score per block (N={N}), got {len(redundancy)}")
    # each cluster's unprotected members, highest redundancy first; sorted() is stable, so ties
    # keep depth order
    ranked = [sorted((l for l in members[c] if l not in protected), key=lambda l: -redundancy[l]) for c in range(K)]
    taken = [0] * K  # how many of ranked[c] are pruned so far
    order: list[int] = []

    def prune_next(c: int) -> None:
        order.append(ranked[c][taken[c]])
        taken[c] += 1

    # (5a) stage 1, coverage: one block per cluster, in cluster order
    for c in range(K):
        if len(order) == num_prune:
            break
        if ranked[c]:
            prune_next(c)

    # (5b) stage 2, residual: the cluster with the highest residual redundancy gets the next block
    pruned = set(order)
    upper = np.triu(S, 1)

    def residual_of(c: int) -> float:  # (5b) residual redundancy of cluster c
        return _pair_mean(upper, [m for m in members[c] if m not in pruned])

    # only the cluster that just lost a block changes, so each residual is recomputed (from
    # scratch, with the same formula) only after its cluster is pruned
    residual = [residual_of(c) for c in range(K)]
    while len(order) < num_prune:
        open_clusters = [c for c in range(K) if taken[c] < len(ranked[c])]
        best, best_residual = None, -math.inf
        for c in open_clusters:
            if residual[c] > best_residual:  # strict: ties keep the lower cluster index
                best, best_residual = c, residual[c]
        if best is None:  # every open cluster is at -inf: the lowest-index one
            best = open_clusters[0]
        prune_next(best)
        pruned.add(order[-1])
        residual[best] = residual_of(best)
    return order


# --------------------------------------------------------------------------------------------
# what a selection reads


@dataclass
class Similarities:
    """The similarities a selection reads, from a ``LayerStats`` or a plain N x N matrix (``read_similarities``)."""

    blocks: np.ndarray  # S[:N, :N]
    full: np.ndarray | None  # S, (N+1) x (N+1), from a LayerStats
    last: np.ndarray | None  # S_last, (N+1) x (N+1), from a LayerStats
    source: str

    @property
    def N(self) -> int:
        return self.blocks.shape[0]


def read_similarities(stats_or_similarity: Any, method: str = "lorp") -> Similarities:
    """The block-input similarity S[:N, :N] of a ``LayerStats`` or of a plain N x N matrix, and, from a LayerStats,
    the full (N+1) x (N+1) S (index N is the model's output) and, for ``method="angular"``, the last-token S_last.

    A plain matrix is **always** read as the block-input similarity S[:N, :N]: an (N+1) x (N+1) matrix cannot be
    told apart from the inputs of N+1 blocks, so to use the full statistics pass the LayerStats itself.
    """
    if hasattr(stats_or_similarity, "similarity") and hasattr(stats_or_similarity, "last_token_similarity"):
        full = as_similarity_matrix(stats_or_similarity.similarity, name="stats.similarity", min_size=3)
        last = None
        if method == "angular":  # validated only where it is used
            last = as_similarity_matrix(stats_or_similarity.last_token_similarity, name="stats.last_token_similarity")
            if last.shape != full.shape:
                raise ValueError(f"stats.last_token_similarity has shape {last.shape}, stats.similarity {full.shape}")
        return Similarities(blocks=full[:-1, :-1], full=full, last=last, source="LayerStats")
    blocks = as_similarity_matrix(stats_or_similarity, name="similarity", min_size=2)
    return Similarities(blocks=blocks, full=None, last=None, source="plain N x N matrix")

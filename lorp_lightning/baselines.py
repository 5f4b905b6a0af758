"""The baselines that read the statistics only: the rules of the methods LoRP is compared with.

    pruned, scores = shortgpt(read_similarities(stats), k=7, protected={0, 29})

Each rule takes the similarities (``locality.read_similarities``), the number of blocks to prune k (already
resolved by the budget rule) and the protected blocks, and returns the blocks, ascending (the scored rules with
each block's or run's score). ``select_layers(stats, k, method=...)`` calls them by name (`lorp_lightning.methods`).

    shortgpt     Block Influence (Men et al.): BI_l = 1 - S[l, l+1]; the k lowest-BI blocks
    streamline   LLM-Streamline: the run [s, s+k) of unprotected blocks maximising S[s, s+k]
    angular      Gromov et al.: the run [s, s+k) minimising arccos(S_last[s, s+k]) / pi
    random       k unprotected blocks drawn with ``seed`` (a floor)
    last         the k unprotected blocks nearest the output (a floor)

A plain N x N matrix is enough for ``streamline``, ``random``, ``last``, and for ``shortgpt`` while the last block
is protected; ``angular`` needs S_last, hence a LayerStats.
"""

from __future__ import annotations

import math

import numpy as np

from lorp_lightning.locality import Similarities

__all__ = ["angular", "contiguous_runs", "last_blocks", "random_blocks", "shortgpt", "streamline"]


def shortgpt(similarities: Similarities, k: int, protected: set[int]) -> tuple[list[int], list[float | None]]:
    """Block Influence: BI_l = 1 - S[l, l+1]; the k unprotected blocks with the lowest BI."""
    N = similarities.N
    S = similarities.full if similarities.full is not None else similarities.blocks
    scores: list[float | None] = [1.0 - float(S[l, l + 1]) if l + 1 < S.shape[0] else None for l in range(N)]
    if scores[N - 1] is None and (N - 1) not in protected:
        raise ValueError(
            f"shortgpt needs S[{N - 1}, {N}] (the output of the last block) to score block {N - 1}, "
            "which a plain N x N matrix lacks: pass a LayerStats, or protect the last block"
        )
    candidates = sorted((l for l in range(N) if l not in protected), key=lambda l: scores[l])  # stable
    return sorted(candidates[:k]), scores


def contiguous_runs(num_layers: int, num_prune: int, protected: set[int]) -> list[list[int]]:
    """Every run [s, s + k) of ``num_prune`` consecutive unprotected blocks, in order of s."""
    return [
        list(range(s, s + num_prune))
        for s in range(num_layers - num_prune + 1)
        if not any(b in protected for b in range(s, s + num_prune))
    ]


def _run_starts(N: int, k: int, protected: set[int], method: str) -> list[int]:
    """The first block of each of ``contiguous_runs``; a clear error naming ``method`` when there is none."""
    starts = [run[0] for run in contiguous_runs(N, k, protected)]
    if not starts:
        raise ValueError(
            f"{method}: no contiguous run of {k} unprotected blocks exists among {N} blocks "
            f"with protected blocks {sorted(protected)}"
        )
    return starts


def streamline(similarities: Similarities, k: int, protected: set[int]) -> tuple[list[int], list[float | None]]:
    """LLM-Streamline: the run [s, s+k) maximising S[s, s+k] (ties: the shallowest s)."""
    N = similarities.N
    starts = _run_starts(N, k, protected, "streamline")
    S = similarities.full if similarities.full is not None else similarities.blocks
    if starts[-1] + k >= S.shape[0]:
        raise ValueError(
            f"streamline needs S[{starts[-1]}, {N}] (the output of the last block) to score the run "
            f"[{starts[-1]}, {N}), which a plain N x N matrix lacks: pass a LayerStats, or protect the last block"
        )
    scores: list[float | None] = [None] * N
    best = None
    for s in starts:
        scores[s] = float(S[s, s + k])
        if best is None or scores[s] > scores[best]:  # strict: ties keep the shallowest
            best = s
    return list(range(best, best + k)), scores


def angular(similarities: Similarities, k: int, protected: set[int]) -> tuple[list[int], list[float | None]]:
    """Gromov et al.: the run [s, s+k) minimising arccos(S_last[s, s+k]) / pi (ties: shallowest)."""
    if similarities.last is None:
        raise ValueError("angular needs the last-token similarity S_last, which a plain matrix lacks: pass a LayerStats")
    N = similarities.N
    starts = _run_starts(N, k, protected, "angular")
    scores: list[float | None] = [None] * N
    best = None
    for s in starts:
        scores[s] = math.acos(min(1.0, max(-1.0, float(similarities.last[s, s + k])))) / math.pi
        if best is None or scores[s] < scores[best]:  # strict: ties keep the shallowest
            best = s
    return list(range(best, best + k)), scores


def random_blocks(N: int, k: int, protected: set[int], seed: int) -> list[int]:
    """k unprotected blocks, a seeded permutation's first k (so budgets nest for one seed)."""
    unprotected = np.array([l for l in range(N) if l not in protected])
    return sorted(int(l) for l in np.random.default_rng(seed).permutation(unprotected)[:k])


def last_blocks(N: int, k: int, protected: set[int]) -> list[int]:
    """The k unprotected blocks nearest the output."""
    unprotected = [l for l in range(N) if l not in protected]
    return unprotected[-k:]

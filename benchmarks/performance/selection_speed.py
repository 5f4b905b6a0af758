"""Speed of layer selection: every method at every budget for N = 128 blocks.

A seeded random similarity matrix stands in for real statistics: hidden states follow a random
walk over depth (so nearby blocks are alike, as in a real model), and S = F F^T over the unit-norm
states, a correlation-like PSD matrix with unit diagonal. Target: under one second in total.

    python benchmarks/performance/selection_speed.py [--num-layers 128] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lorp_lightning.locality import clear_cluster_cache
from lorp_lightning.methods import STATS_METHODS as METHODS
from lorp_lightning.methods import select_layers
from lorp_lightning.stats import LayerStats


def random_similarity(num_states: int, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """A (num_states x num_states) PSD matrix with unit diagonal, from a seeded random walk."""
    rng = np.random.default_rng(seed)
    h = 3.0 * rng.standard_normal(dim) + np.cumsum(rng.standard_normal((num_states, dim)), axis=0)
    f = h / np.linalg.norm(h, axis=1, keepdims=True)
    S = f @ f.T
    np.fill_diagonal(S, 1.0)
    return torch.from_numpy(S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-layers", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    N = args.num_layers

    stats = LayerStats(
        similarity=random_similarity(N + 1, seed=args.seed),
        last_token_similarity=random_similarity(N + 1, seed=args.seed + 1),
        num_tokens=1000,
        num_sequences=10,
    )
    budgets = range(1, N - 2 + 1)  # default protection {0, N-1}
    clear_cluster_cache()
    select_layers(stats, 1)  # warm-up: imports scikit-learn (not counted)
    clear_cluster_cache()

    total = 0.0
    for method in METHODS:
        start = time.perf_counter()
        for k in budgets:
            select_layers(stats, k, method=method)
        elapsed = time.perf_counter() - start
        total += elapsed
        print(f"{method:<11} {len(budgets)} budgets  {elapsed * 1e3:8.1f} ms")
    lorp = select_layers(stats, 0.25)
    print(lorp)
    print(f"total       {len(METHODS) * len(budgets)} selections  {total * 1e3:8.1f} ms  (target < 1000 ms)")


if __name__ == "__main__":
    main()

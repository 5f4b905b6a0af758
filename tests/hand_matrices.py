"""Hand-made similarity matrices for the specification tests of the pure maths."""

from __future__ import annotations

import numpy as np


def sym(n, pairs, default=0.0):
    """An n x n symmetric matrix with unit diagonal, ``pairs[(i, j)]`` off the diagonal."""
    S = np.full((n, n), default, dtype=np.float64)
    for (i, j), v in pairs.items():
        S[i, j] = S[j, i] = v
    np.fill_diagonal(S, 1.0)
    return S

"""Checks of arguments shared by the whole package (private to it).

One integer rule: an int, NumPy ints included, never a bool (``True`` is not a block count or an
index here). The core (``locality``, ``selection``, ``surgery``) and the glue import it from here,
so that a type check does not tie one module to another.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["is_integer"]


def is_integer(value: Any) -> bool:
    """An integer that is not a bool (``True`` is not a block count or an index here); numpy ints count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))

"""The learning-rate schedule of a healing run.

``learning_rate_factor`` is the schedule ``heal`` trains with (a linear warm-up, then a cosine
decay), as a pure function of the run's progress. The wall-clock budget, read by the same
schedule, is a callback: ``lorp_lightning.callbacks.time_budget.TimeBudget``.
"""

from __future__ import annotations

import math

__all__ = ["FINAL_LR_FRACTION", "WARMUP", "learning_rate_factor"]

WARMUP = 0.05
"""Fraction of the healing run over which the learning rate rises linearly to ``lr``."""

FINAL_LR_FRACTION = 0.1
"""The cosine decay ends at this fraction of ``lr``."""


def learning_rate_factor(progress: float, warmup: float = WARMUP) -> float:
    """The multiple of ``lr`` at ``progress`` in [0, 1] of a healing run: linear warm-up over the
    first ``warmup`` of the run (default 5%; 0: none), then a cosine decay from 1 to 0.1."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    decay = (progress - warmup) / (1.0 - warmup)
    return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * decay))

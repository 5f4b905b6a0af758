"""The data lorp_search's settings are decided on: calibration text only, never held-out text.

One model, the ``wiki`` calibration split cut into windows of 512 tokens: the first 32 give the
statistics (and, within them, the loss checks: the first 8, their first 256 tokens), the next
``validation_windows`` are the validation windows, never checked and not in the statistics pass.
Used by ``check_settings.py``, ``search_variants.py`` and ``search_runs.py``.
"""

from __future__ import annotations

import torch

from lorp_lightning.assets import load_model, load_text
from lorp_lightning.evaluation import token_windows
from lorp_lightning.stats import collect_layer_stats

STATISTICS_WINDOWS = 32


def decision_data(name: str, validation_windows: int = 24):
    """``(model, tokenizer, calibration, validation, stats)`` for the bundled model ``name``."""
    torch.manual_seed(0)
    model, tokenizer = load_model(name, progress=False)
    windows = token_windows(
        tokenizer, load_text("wiki", "calibration"), window=512, max_windows=STATISTICS_WINDOWS + validation_windows
    )
    calibration, validation = windows[:STATISTICS_WINDOWS], windows[STATISTICS_WINDOWS:]
    stats = collect_layer_stats(model, calibration.split(4), progress=False)
    return model, tokenizer, calibration, validation, stats

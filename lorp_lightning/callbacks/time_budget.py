"""The wall-clock budget of a healing run (``heal(..., max_seconds=...)``), as a Lightning callback."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks.callback import Callback
from typing_extensions import override

__all__ = ["TimeBudget"]


class TimeBudget(Callback):
    """The wall-clock budget of a healing run: one clock, read both by the decision to stop and by
    the learning-rate schedule (``share``).

    ``fit`` stops before a step that would end after ``seconds`` (judged by the longest step so
    far). As with Lightning's ``Timer``, the decision is rank 0's, broadcast to every rank, so that
    under DDP all ranks stop after the same step; the time spent is kept in ``state_dict``, so a
    run resumed from a checkpoint counts it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._spent_before = 0.0  # seconds spent before this run (from a checkpoint)
        self._started: float | None = None
        self._step_started = 0.0
        self._longest_step = 0.0

    def elapsed(self, now: float | None = None) -> float:
        """Seconds spent on the training so far."""
        if self._started is None:
            return self._spent_before
        return self._spent_before + ((time.perf_counter() if now is None else now) - self._started)

    def share(self) -> float:
        """The share of the budget spent."""
        return self.elapsed() / self.seconds

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        self._longest_step = max(self._longest_step, now - self._step_started)
        stop = self.elapsed(now) + self._longest_step > self.seconds
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed(), "longest_step": self._longest_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._spent_before = float(state_dict.get("elapsed", 0.0))
        self._longest_step = float(state_dict.get("longest_step", 0.0))

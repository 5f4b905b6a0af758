"""``LayerStatsCallback``: the layer statistics of the causal LM, gathered while a loop runs.

The gathering itself, hooks on the decoder blocks feeding a ``LayerSimilarity`` for one run of a
loop, is ``_Gathering``; both this callback and ``LoRPPruneCallback`` own one (composition: the
prune callback is not a statistics callback).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from typing_extensions import override

from lorp_lightning.callbacks.location import ModelLocation, _find, check_model_location, get_causal_lm
from lorp_lightning.methods import CHECK_WINDOWS
from lorp_lightning.stats import HiddenStateRecorder, LayerSimilarity, LayerStats, model_inputs

__all__ = ["LayerStatsCallback"]


class _Listener:
    """Hooks on the decoder blocks feeding a fresh ``LayerSimilarity``, for one run of a loop.

    It also keeps the first ``keep_windows`` unpadded sequences it sees (token ids, on the CPU;
    None: all of them), the calibration windows the methods that try plans on the model
    (``lorp_search``, ``sleb``, ...) check them on, and that rounds collect statistics on again.
    """

    def __init__(self, keep_windows: int | None = CHECK_WINDOWS) -> None:
        self.keep_windows = keep_windows
        self.recorder: HiddenStateRecorder | None = None
        self.metric: LayerSimilarity | None = None
        self.windows: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        return self.recorder is not None

    def start(self, model: nn.Module, device: torch.device) -> None:
        self.stop()
        self.recorder = HiddenStateRecorder(model)
        self.metric = LayerSimilarity(self.recorder.num_layers).to(device)
        self.windows = []
        self.recorder.attach()

    def update(self, batch: Any) -> None:
        assert self.recorder is not None and self.metric is not None
        input_ids, attention_mask = model_inputs(batch, self.metric.device)
        states, norms = self.recorder.pop_with_norms()
        self.metric.update(states, attention_mask, normalized=True, norms=norms)
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            if (
                (self.keep_windows is None or len(self.windows) < self.keep_windows)
                and bool(mask.all())
                and (not self.windows or ids.numel() == self.windows[0].numel())
            ):
                self.windows.append(ids.detach().to("cpu", copy=True))

    def finish(self) -> LayerStats:
        """Detach, and compute the statistics (synchronised across processes: call it on every rank)."""
        assert self.metric is not None
        metric = self.metric
        self.stop()
        stats = metric.compute()
        with torch.inference_mode(False):  # plain tensors, even when computed inside an evaluation loop
            return LayerStats(
                similarity=stats.similarity.clone(),
                last_token_similarity=stats.last_token_similarity.clone(),
                num_tokens=stats.num_tokens,
                num_sequences=stats.num_sequences,
                norms=None if stats.norms is None else stats.norms.clone(),
            )

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.detach()
        self.recorder = None
        self.metric = None


class _Gathering:
    """The statistics of the causal LM at ``location`` over each run of the loops in ``stages``.

    A callback owns one and calls it from its hooks: ``setup``, ``loop_start`` (fit, validation and
    predict start), ``epoch_start``, ``batch_end``, ``epoch_end`` and ``stop`` (on an exception).
    ``check(trainer, causal_lm)``, if given, runs once per run of the Trainer when the causal LM is
    found: at ``setup``, or when the loop starts for a model ``configure_model`` builds later.
    """

    def __init__(
        self,
        stages: tuple[str, ...],
        location: ModelLocation,
        owner: str,
        check: Callable[[pl.Trainer, nn.Module], None] | None = None,
        keep_windows: int | None = CHECK_WINDOWS,
    ) -> None:
        self.stages, self.location, self.owner, self.check = stages, location, owner, check
        self.listener = _Listener(keep_windows)
        self._checked = False

    def causal_lm(self, pl_module: pl.LightningModule) -> nn.Module:
        return get_causal_lm(pl_module, self.location, self.owner)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._checked = False
        if not self._built_later(pl_module):
            self._check(trainer, self.causal_lm(pl_module))

    def _built_later(self, pl_module: pl.LightningModule) -> bool:
        """The causal LM is not there yet, and the module's ``configure_model`` (run after setup) may build it."""
        if not is_overridden("configure_model", pl_module):
            return False
        try:
            return _find(pl_module, self.location, self.owner) is None
        except ValueError:
            return True

    def _check(self, trainer: pl.Trainer, model: nn.Module) -> None:
        if self.check is not None:
            self.check(trainer, model)
        self._checked = True

    def loop_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._checked:
            self._check(trainer, self.causal_lm(pl_module))

    def epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in self.stages and not trainer.sanity_checking:
            self.listener.start(self.causal_lm(pl_module), pl_module.device)

    def batch_end(self, batch: Any) -> None:
        if self.listener.active:
            self.listener.update(batch)

    def epoch_end(self) -> tuple[LayerStats, torch.Tensor | None] | None:
        """The statistics of the run that ends, and its first unpadded windows; None if it was not listened to."""
        if not self.listener.active:
            return None
        windows = self.listener.windows
        return self.listener.finish(), (torch.stack(windows) if windows else None)

    def stop(self) -> None:
        self.listener.stop()


class _GatheringCallback(Callback):
    """The hooks that drive a callback's ``_Gathering`` (``self._gathering``) and keep what each
    run gathered in ``stats`` and ``windows``; ``_listening`` says whether a run is listened to.
    Shared by ``LayerStatsCallback`` and ``LoRPPruneCallback``, which each own their gathering."""

    _gathering: _Gathering
    stats: LayerStats | None
    windows: torch.Tensor | None

    @property
    def _listening(self) -> bool:
        return True

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._gathering.setup(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._gathering.loop_start(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._gathering.loop_start(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._gathering.loop_start(trainer, pl_module)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._listening:
            self._gathering.epoch_start(trainer, pl_module, "validation")

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._gathering.batch_end(batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._listening:
            self._gathering.epoch_start(trainer, pl_module, "predict")

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._gathering.batch_end(batch)

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    def _finish(self) -> None:
        result = self._gathering.epoch_end()
        if result is not None:
            self.stats, self.windows = result

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._gathering.stop()


class LayerStatsCallback(_GatheringCallback):
    r"""Gathers the layer statistics of the model (a ``LayerStats``)
    while ``predict`` runs, and, if asked, while validation runs.

    Example::

        stats_callback = LayerStatsCallback()
        Trainer(callbacks=[stats_callback]).predict(LoRPModule("smollm2-135m"), datamodule=TextDataModule("wiki"))
        plan = select_layers(stats_callback.stats, 0.25)

    In your own project (the causal LM at ``self.backbone``)::

        Trainer(callbacks=[LayerStatsCallback(model="backbone")]).predict(my_module, dataloaders=loader)

    Args:
        stages: the loops to listen to: ``"predict"`` (default), ``"validation"``, or both as a
            tuple. Each run of a loop (each validation, sanity check excluded) starts the
            statistics afresh; ``stats`` holds those of the latest run.
        model: where the Hugging Face causal LM is in the LightningModule: the name of its
            attribute (default ``"model"``, where ``LoRPModule`` keeps it; dotted paths walk
            down, e.g. ``"net.lm"``), or a callable that takes the LightningModule and returns
            the causal LM. Checked at ``setup``, before any batch; a model your
            ``configure_model`` builds is checked when the loop starts instead.

    The callback listens to the decoder blocks, so the module's step must run the causal LM
    (or its decoder stack) once per batch, on the batch's input ids, with its attention mask.
    It reads the batch by ``model_inputs``: a tensor of input ids, a
    dict (or a tokenizer's ``BatchEncoding``) with ``input_ids`` and optionally
    ``attention_mask``, or a tuple or list whose first element is the input ids (its other
    elements are not read: a padded batch must be a dict with ``attention_mask``).

    Strategies: single device, DDP and FSDP (``FSDPStrategy``, and ``ModelParallelStrategy``
    with ``fully_shard``): the hooks see each process's full activations and the sums are
    synchronised, so every process gets the statistics of one process over all the batches.

    The statistics are part of the callback's state, so they are saved in checkpoints.
    ``windows`` holds the first 8 unpadded sequences of the latest run (token ids), which
    ``LoRPPruneCallback``'s methods that try plans on the model check them on.
    """

    STAGES = ("predict", "validation")

    def __init__(self, stages: str | Iterable[str] = "predict", model: ModelLocation = "model") -> None:
        requested = (stages,) if isinstance(stages, str) else tuple(stages) if isinstance(stages, Iterable) else None
        if not requested or any(stage not in self.STAGES for stage in requested):
            raise ValueError(f"stages must be 'predict', 'validation' or both as a tuple, got stages={stages!r}")
        self.stages = tuple(dict.fromkeys(requested))
        self.model = check_model_location(model, type(self).__name__)
        self.stats: LayerStats | None = None
        self.windows: torch.Tensor | None = None
        self._gathering = _Gathering(self.stages, self.model, type(self).__name__)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(stages=self.stages)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stats": None if self.stats is None else self.stats.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stats = None if state_dict.get("stats") is None else LayerStats.from_state_dict(state_dict["stats"])

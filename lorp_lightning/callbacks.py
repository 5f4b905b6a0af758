"""Lightning callbacks: gather layer statistics while a loop runs, and prune with LoRP.

Both callbacks listen to the decoder blocks of a Hugging Face causal LM inside the
LightningModule: ``pl_module.model`` by default (``LoRPModule`` keeps
it there), or where their ``model`` argument says (an attribute name, or a callable; see
``get_causal_lm``). They feed ``LayerSimilarity``, whose sum
states are synchronised across processes when computed, so statistics gathered under DDP or FSDP
equal those of one process over all the batches. Batches are read by one rule,
``model_inputs``. The selection is
``select_layers`` and the surgery
``prune_layers``; nothing here computes anything itself.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lorp_lightning._validation import check_int, is_integer
from lorp_lightning.architectures import decoder_layers
from lorp_lightning.methods import CHECK_WINDOWS, DEFAULT_METHOD, get_method, select_layers
from lorp_lightning.selection import PruningPlan, is_budget, resolve_budget
from lorp_lightning.stats import HiddenStateRecorder, LayerSimilarity, LayerStats, model_inputs
from lorp_lightning.surgery import prune_layers

__all__ = ["LayerStatsCallback", "LoRPPruneCallback", "ModelLocation", "check_model_location", "get_causal_lm", "rebuild_optimizers"]

ModelLocation = str | Callable[[pl.LightningModule], nn.Module]
"""Where a callback finds the causal LM in a LightningModule: an attribute name (dotted paths
allowed, e.g. ``"net.lm"``) or a callable ``pl_module -> nn.Module``."""

_SHARDED_STRATEGIES = (FSDPStrategy, ModelParallelStrategy)
"""The strategies that shard the model's weights across processes: statistics work under them,
pruning in place does not (see ``LoRPPruneCallback``)."""


def _describe(model: ModelLocation) -> str:
    """``model=...`` as an error message shows it: a name in quotes, a callable by its name."""
    if isinstance(model, str):
        return f"model={model!r}"
    return f"model={getattr(model, '__qualname__', None) or repr(model)}"


def check_model_location(model: Any, owner: str = "get_causal_lm") -> ModelLocation:
    """``model`` checked to be a ``ModelLocation``; a ValueError naming it and its value otherwise.

    Callbacks call it in ``__init__``: a misspelt kind of value fails when the callback is built,
    a misspelt name at ``setup`` (``get_causal_lm``).
    """
    if isinstance(model, str):
        if not model or any(not part for part in model.split(".")):
            raise ValueError(
                f"{owner}({_describe(model)}) is not an attribute name: pass the name of the attribute of your "
                "LightningModule that holds the causal LM, e.g. model='model' or model='net.lm'"
            )
        return model
    if isinstance(model, nn.Module) or not callable(model):
        what = f"the {type(model).__name__} itself" if isinstance(model, nn.Module) else f"{model!r} ({type(model).__name__})"
        raise ValueError(
            f"{owner}(model=...) says where the causal LM is in your LightningModule, and got {what}: pass an "
            "attribute name (model='backbone', dotted paths allowed) or a callable pl_module -> the causal LM "
            "(model=lambda module: module.backbone)"
        )
    return model


def get_causal_lm(pl_module: pl.LightningModule, model: ModelLocation = "model", owner: str = "get_causal_lm") -> nn.Module:
    """The Hugging Face causal LM inside ``pl_module``, checked to have decoder blocks lorp_lightning knows.

    Args:
        pl_module: the LightningModule.
        model: where the causal LM is: an attribute name of ``pl_module`` (default ``"model"``,
            where ``LoRPModule`` keeps it; dotted paths walk down
            attributes, e.g. ``"net.lm"``), or a callable that takes ``pl_module`` and returns it.
        owner: the name the error messages start with (a callback passes its class name).

    Raises:
        ValueError: ``model`` is neither kind of value, names an attribute ``pl_module`` lacks,
            or is a callable that raised; the message names ``model`` and its value.
        TypeError: what ``model`` leads to is not a causal LM of a known architecture.
    """
    found = _find(pl_module, model, owner)
    try:
        decoder_layers(found)
    except (AttributeError, NotImplementedError, TypeError) as error:
        where = f"{type(pl_module).__name__}.{model}" if isinstance(model, str) else "what it returned"
        raise TypeError(
            f"{owner}({_describe(model)}) works on a Hugging Face causal LM (LoRPModule keeps one at .model), "
            f"but {where} is {type(found).__name__}: {error}"
        ) from error
    return found


def _find(pl_module: pl.LightningModule, model: ModelLocation, owner: str) -> Any:
    """What ``model`` leads to in ``pl_module``, unchecked; a ValueError naming ``model`` when it leads nowhere."""
    check_model_location(model, owner)
    if not isinstance(model, str):
        try:
            return model(pl_module)
        except Exception as error:
            raise ValueError(f"{owner}({_describe(model)}) raised {type(error).__name__}: {error}") from error
    found: Any = pl_module
    parts = model.split(".")
    for depth, part in enumerate(parts):
        try:
            found = getattr(found, part)
        except AttributeError:
            children = [name for name, _ in pl_module.named_children()]
            raise ValueError(
                f"{owner}({_describe(model)}): {type(pl_module).__name__} has no attribute "
                f"{'.'.join(parts[:depth + 1])!r}; its submodules are {children}. Pass model='<attribute>' naming "
                "the causal LM (dotted paths allowed), or a callable pl_module -> the causal LM"
            ) from None
    return found


def _is_sharded(model: nn.Module) -> bool:
    """Whether FSDP shards ``model``'s weights: an FSDP (1 or 2) module in it, or a DTensor weight."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        FSDPModule = FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules()) or any(
        isinstance(p, DTensor) for p in model.parameters()
    )


def rebuild_optimizers(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """After blocks were removed or trainable parameters added in the middle of ``fit``: a new DDP
    wrapper and new optimizers over the module's parameters as they are now."""
    strategy = trainer.strategy
    if isinstance(strategy.model, DistributedDataParallel):
        strategy.model = pl_module
        strategy.configure_ddp()
    strategy.setup_optimizers(trainer)


class _Listener:
    """Hooks on the decoder blocks feeding a fresh ``LayerSimilarity``, for one run of a loop.

    It also keeps the first ``CHECK_WINDOWS`` unpadded sequences it
    sees (token ids, on the CPU), the calibration windows the methods that try plans on the model
    (``lorp_search``, ``sleb``, ...) check them on.
    """

    def __init__(self) -> None:
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
        self.metric.update(self.recorder.pop(), attention_mask, normalized=True)
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            if len(self.windows) < CHECK_WINDOWS and bool(mask.all()) and (not self.windows or ids.numel() == self.windows[0].numel()):
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
            )

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.detach()
        self.recorder = None
        self.metric = None


class LayerStatsCallback(Callback):
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
            raise ValueError(
                f"stages must be 'predict', 'validation' or both as a tuple, got stages={stages!r}"
            )
        self.stages = tuple(dict.fromkeys(requested))
        self.model = check_model_location(model, type(self).__name__)
        self.stats: LayerStats | None = None
        self.windows: torch.Tensor | None = None
        self._listener = _Listener()
        self._model_checked = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(stages=self.stages)

    def _causal_lm(self, pl_module: pl.LightningModule) -> nn.Module:
        return get_causal_lm(pl_module, self.model, type(self).__name__)

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._model_checked = False
        if not self._built_later(pl_module):
            self._check_model(trainer, self._causal_lm(pl_module))

    def _built_later(self, pl_module: pl.LightningModule) -> bool:
        """The causal LM is not there yet, and the module's ``configure_model`` (run after setup) may build it."""
        if not is_overridden("configure_model", pl_module):
            return False
        try:
            return _find(pl_module, self.model, type(self).__name__) is None
        except ValueError:
            return True

    def _check_model(self, trainer: pl.Trainer, model: nn.Module) -> None:
        """The checks that need the causal LM (found and checked already), once per run."""
        self._model_checked = True

    def _check_model_if_built_later(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._model_checked:
            self._check_model(trainer, self._causal_lm(pl_module))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_model_if_built_later(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_model_if_built_later(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_model_if_built_later(trainer, pl_module)

    # ------------------------------------------------------------------ listening

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in self.stages and not trainer.sanity_checking:
            self._listener.start(self._causal_lm(pl_module), pl_module.device)

    def _finish(self) -> None:
        if self._listener.active:
            windows = self._listener.windows
            self.stats = self._listener.finish()
            self.windows = torch.stack(windows) if windows else None

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "validation")

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._listener.active:
            self._listener.update(batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "predict")

    @override
    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._listener.active:
            self._listener.update(batch)

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._listener.stop()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stats": None if self.stats is None else self.stats.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stats = None if state_dict.get("stats") is None else LayerStats.from_state_dict(state_dict["stats"])


class LoRPPruneCallback(LayerStatsCallback):
    r"""Prunes decoder blocks of the model once, at the end of a loop, by a method of the registry.

    For example, calibrating on the calibration windows of ``TextDataModule``, which ``predict``
    reads, and measuring perplexity on its held-out windows, which ``validate`` reads:

    ```python
    module, data = LoRPModule("smollm2-135m"), TextDataModule("wiki")
    Trainer(callbacks=[LoRPPruneCallback(0.25, prune_on="predict_end")]).predict(module, datamodule=data)
    Trainer().validate(module, datamodule=data)   # held-out perplexity, on windows that chose nothing
    ```

    In your own project (the causal LM at ``self.backbone``), pruning at the end of the first
    validation of ``fit``:

    ```python
    Trainer(callbacks=[LoRPPruneCallback(0.25, model="backbone")]).fit(my_module, train_loader, val_loader)
    ```

    The statistics come from the batches the model runs on before the pruning, and the data they
    come from is the calibration data: ``prune_on="validation_end"`` (the default) calibrates on
    the batches of the first validation run (in your own project, your validation batches),
    ``"fit_end"`` on those of the last validation of ``fit``, ``"predict_end"`` on those of
    ``predict`` (with ``TextDataModule``, its calibration split). A perplexity measured on the
    same batches that chose the blocks flatters the plan: report quality on other data, e.g.
    calibrate with ``"predict_end"`` and validate on held-out batches. The callback gathers them itself, unless
    the Trainer has a ``LayerStatsCallback``, whose statistics it then uses. Methods that try
    plans on the model (the default ``lorp_search``, ``sleb``, ...) check them on the first 8
    unpadded sequences of that loop. It selects the blocks with
    ``select_layers``, removes them with
    ``prune_layers``, and logs the RLS (``lorp/rls``), K
    (``lorp/num_clusters``), ``lorp/num_pruned`` and ``lorp/num_layers`` to the loggers' metrics,
    the plan to their hyper-parameters, and a one-line summary.

    It never prunes during the sanity check and prunes only once: later validations leave the
    model alone. Pruned in the middle of ``fit``, the model keeps training: the optimizers and
    learning-rate schedulers are built again by ``configure_optimizers``, over the kept
    parameters (single-device and DDP strategies). Under DDP, every process prunes the same
    blocks, selected from the statistics of all processes. (Lightning's ``DistributedSampler``
    repeats samples to even out the processes: for exact statistics, use a number of batches
    divisible by the number of processes.)

    Strategies: it prunes under single-device and DDP strategies. Under FSDP (``FSDPStrategy``,
    or ``ModelParallelStrategy`` with ``fully_shard``) the weights are sharded across the
    processes and removing blocks in place would leave FSDP's bookkeeping of them behind, so it
    refuses at ``setup``, before any batch, with a ValueError that says what to do instead:
    gather the statistics under FSDP with ``LayerStatsCallback``, select the plan from them
    (``select_layers``), and prune the model's Hugging Face checkpoint on disk
    (``prune_checkpoint``, ``lorp apply PLAN CHECKPOINT_DIR --out
    OUT``) or the unsharded model in one process (``prune_layers``). A model found sharded when
    the pruning comes (FSDP applied under another strategy) is refused with a RuntimeError, unchanged.

    The causal LM and the batches are found and read as by ``LayerStatsCallback`` (its
    ``model`` argument, and ``model_inputs``).

    Args:
        amount: how many blocks to prune: an int (a count) or a float in (0, 1) (a fraction of
            the blocks, rounded down).
        method: a name of ``METHODS``: ``"lorp_search"`` (default:
            the locality analysis's candidate plans checked and improved on the calibration
            loss), ``"lorp"`` (the paper's method, as published), a baseline; or a callable
            that takes a ``SelectionContext`` and returns the
            blocks to prune (as Lightning's ``ModelPruning(pruning_fn=...)``). A plan that is
            not k distinct unprotected blocks is refused with a ValueError, the model unchanged.
        num_clusters: ``"lorp"`` only: force K instead of deriving it from the RLS.
        protect: block indices never pruned; default None: the first and the last block.
        prune_on: ``"validation_end"`` (default), ``"fit_end"`` or ``"predict_end"``: the loop
            whose batches calibrate the pruning, and at whose end it prunes (see above).
        seed: the seed of the clustering (``"lorp"``) or of the draw (``"random"``).
        verbose: print the one-line summary (on rank zero).
        model: where the Hugging Face causal LM is in the LightningModule: an attribute name
            (default ``"model"``; dotted paths allowed, e.g. ``"net.lm"``) or a callable
            ``pl_module -> causal LM`` (see ``LayerStatsCallback``).

    After pruning, ``plan`` is the ``PruningPlan`` and
    ``stats`` the statistics it was chosen from; both are part of the callback's state.
    (It gathers statistics with the hooks of ``LayerStatsCallback``, which it extends.)
    """

    PRUNE_ON = ("validation_end", "fit_end", "predict_end")

    def __init__(
        self,
        amount: int | float,
        method: str | Callable = DEFAULT_METHOD,
        num_clusters: int | None = None,
        protect: Iterable[int] | None = None,
        prune_on: str = "validation_end",
        seed: int = 0,
        verbose: bool = True,
        model: ModelLocation = "model",
    ) -> None:
        if not is_budget(amount):  # the one budget rule (selection.is_budget); the message says what was wrong
            if is_integer(amount):
                raise ValueError(f"amount={amount!r} prunes no block: pass a count >= 1 or a fraction in (0, 1)")
            if isinstance(amount, numbers.Real) and not isinstance(amount, bool):
                raise ValueError(
                    f"amount={float(amount)!r} is not a fraction in (0, 1): pass e.g. 0.25 for a quarter of the blocks, "
                    "or an int count"
                )
            raise ValueError(
                f"amount must be an int (a number of blocks) or a float in (0, 1) (a fraction of them), got amount={amount!r}"
            )
        amount = int(amount) if is_integer(amount) else float(amount)
        self._method = get_method(method)  # a ValueError naming the methods for an unknown name
        if num_clusters is not None:
            if self._method.name != "lorp":
                raise ValueError(
                    f"num_clusters applies only to method='lorp', got num_clusters={num_clusters!r} with method={method!r}"
                )
            check_int(num_clusters, "num_clusters", what="a positive int or None")
        if protect is not None:
            if isinstance(protect, (str, bytes)) or not isinstance(protect, Iterable):
                raise ValueError(f"protect must be a list of block indices or None, got protect={protect!r}")
            protect = tuple(protect)
            if not all(is_integer(p) and p >= 0 for p in protect):
                raise ValueError(f"protect must hold block indices (ints >= 0), got protect={protect!r}")
            protect = tuple(int(p) for p in protect)
        if prune_on not in self.PRUNE_ON:
            raise ValueError(f"prune_on must be one of {', '.join(map(repr, self.PRUNE_ON))}, got prune_on={prune_on!r}")
        seed = check_int(seed, "seed", low=0)
        self.amount = amount
        self.method = method
        self.num_clusters = None if num_clusters is None else int(num_clusters)
        self.protect = protect
        self.prune_on = prune_on
        self.seed = int(seed)
        self.verbose = verbose
        super().__init__(stages="predict" if prune_on == "predict_end" else "validation", model=model)
        self.plan: PruningPlan | None = None
        self._stats_callback: LayerStatsCallback | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(amount=self.amount, method=self._method.name, prune_on=self.prune_on)

    @property
    def _listens_to(self) -> str:
        return self.stages[0]

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, _SHARDED_STRATEGIES) and self.plan is None:
            raise ValueError(self._sharded_message(f"under {type(trainer.strategy).__name__}"))
        super().setup(trainer, pl_module, stage)  # finds the causal LM, and _check_model checks the budget
        self._stats_callback = next(
            (cb for cb in trainer.callbacks if isinstance(cb, LayerStatsCallback) and not isinstance(cb, LoRPPruneCallback)), None
        )
        if self._stats_callback is not None and self._listens_to not in self._stats_callback.stages:
            raise ValueError(
                f"LoRPPruneCallback(prune_on={self.prune_on!r}) reads the statistics of the {self._listens_to} loop, "
                f"but the Trainer's LayerStatsCallback listens to {self._stats_callback.stages}; pass "
                f"LayerStatsCallback(stages=('predict', 'validation')) or remove it"
            )
        if (
            stage == "fit"
            and self.prune_on == "validation_end"
            and not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))
        ):
            raise ValueError(
                f"LoRPPruneCallback(prune_on='validation_end') rebuilds the optimizers after pruning in the middle of "
                f"fit, which it does for single-device and DDP strategies only, not {type(trainer.strategy).__name__}; "
                "prune with prune_on='fit_end', or before fit with trainer.validate"
            )

    @override
    def _check_model(self, trainer: pl.Trainer, model: nn.Module) -> None:
        if self.plan is None:
            self._check_budget(len(decoder_layers(model)))
        super()._check_model(trainer, model)

    @property
    def _method_shown(self) -> str:
        return repr(self.method) if isinstance(self.method, str) else self._method.name

    def _sharded_message(self, where: str) -> str:
        return (
            f"LoRPPruneCallback does not prune a model whose weights FSDP shards across processes ({where}): "
            "removing blocks in place would leave FSDP's bookkeeping of them behind. Instead, gather the statistics "
            f"under FSDP with LayerStatsCallback(stages={self._listens_to!r}, {_describe(self.model)}), select the "
            f"plan from them with select_layers(stats_callback.stats, {self.amount!r}, method={self._method_shown}) "
            "(a method that tries plans on the model needs it unsharded, with model= and windows=), write it with "
            "plan.to_json(), and prune the model's Hugging Face checkpoint on disk with `lorp apply PLAN "
            "CHECKPOINT_DIR --out OUT` (lorp_lightning.prune_checkpoint), or the unsharded model in one process with "
            "prune_layers(model, plan). This callback prunes in place under single-device and DDP strategies"
        )

    def _check_budget(self, num_layers: int) -> None:
        """The errors select_layers would raise about the arguments, now rather than after a loop."""
        protect = {0, num_layers - 1} if self.protect is None else set(self.protect)
        outside = sorted(p for p in protect if p >= num_layers)
        if outside:
            raise ValueError(f"protect={self.protect!r} holds {outside}, beyond the {num_layers} blocks of the model")
        if self.num_clusters is not None and self.num_clusters > num_layers:
            raise ValueError(
                f"num_clusters={self.num_clusters} exceeds the {num_layers} blocks of the model; pass at most {num_layers}"
            )
        resolve_budget(self.amount, num_layers, num_layers - len(protect))

    # ------------------------------------------------------------------ listening

    @override
    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Listen only until the pruning, and only when no LayerStatsCallback does it already.
        if self.plan is None and self._stats_callback is None:
            super()._start(trainer, pl_module, stage)

    # ------------------------------------------------------------------ pruning

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.prune_on == "validation_end" and not trainer.sanity_checking:
            self._prune(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.prune_on == "fit_end":
            self._prune(trainer, pl_module)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.prune_on == "predict_end":
            self._prune(trainer, pl_module)

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.plan is not None:
            return
        if self._stats_callback is not None:
            self.stats = self._stats_callback.stats
        if self.stats is None:
            raise RuntimeError(
                f"LoRPPruneCallback(prune_on={self.prune_on!r}) has no statistics to select from: no "
                f"{self._listens_to} batch ran through the model. Give the Trainer {self._listens_to} data "
                "(a datamodule or dataloader, and limit_val_batches > 0 for validation)"
            )
        causal_lm = self._causal_lm(pl_module)
        if _is_sharded(causal_lm):  # sharded by a strategy setup did not know: refuse, the model unchanged
            raise RuntimeError(self._sharded_message("found sharded when the pruning came"))
        model = windows = None
        if self._method.reads_model:
            source = self._stats_callback if self._stats_callback is not None else self
            if source.windows is None:
                raise RuntimeError(
                    f"LoRPPruneCallback(method={self._method.name!r}) checks its plans on unpadded {self._listens_to} "
                    "sequences, and none ran through the model; give it unpadded windows (TextDataModule's are)"
                )
            model, windows = causal_lm, source.windows
        with torch.inference_mode(False):  # plans tried on the model run outside Lightning's inference mode
            plan = select_layers(
                self.stats, self.amount, method=self.method, num_clusters=self.num_clusters, protect=self.protect,
                seed=self.seed, model=model, windows=windows,
            )
        plan = PruningPlan.from_json(trainer.strategy.broadcast(plan.to_json()))  # the same blocks on every process
        with torch.inference_mode(False):  # Lightning's evaluation loops run in inference mode
            prune_layers(causal_lm, plan)
            if trainer.state.fn == TrainerFn.FITTING and self.prune_on == "validation_end":
                rebuild_optimizers(trainer, pl_module)
        self.plan = plan
        self._log(trainer)

    def _log(self, trainer: pl.Trainer) -> None:
        plan = self.plan
        assert plan is not None
        metrics: dict[str, float] = {"lorp/num_pruned": len(plan.pruned), "lorp/num_layers": len(plan.kept)}
        if plan.rls is not None:
            metrics["lorp/rls"] = plan.rls
        if plan.num_clusters is not None:
            metrics["lorp/num_clusters"] = plan.num_clusters
        hyperparameters = {
            "lorp_method": plan.method,
            "lorp_amount": self.amount,
            "lorp_num_layers": plan.num_layers,
            "lorp_pruned_layers": plan.pruned,
            "lorp_rls": plan.rls,
            "lorp_num_clusters": plan.num_clusters,
            "lorp_prune_on": self.prune_on,
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(hyperparameters)
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose:
            rank_zero_info(f"LoRPPruneCallback: {plan}; {len(plan.kept)} blocks remain")

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        plan = None if self.plan is None else json.loads(self.plan.to_json())  # plain Python values only
        return {"plan": plan, "stats": None if self.stats is None else self.stats.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        plan = state_dict.get("plan")
        self.plan = None if plan is None else PruningPlan.from_dict(plan)
        self.stats = None if state_dict.get("stats") is None else LayerStats.from_state_dict(state_dict["stats"])

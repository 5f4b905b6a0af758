"""``LoRPPruneCallback``: select blocks with a method of the registry at the end of a loop, and
remove them. It gathers its statistics with a ``_Gathering`` of its own (as ``LayerStatsCallback``
does), or reads those of a ``LayerStatsCallback`` in the same Trainer; the selection is
``select_layers`` and the surgery ``prune_layers``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from typing_extensions import override

from lorp_lightning._validation import ParameterError, check_choice
from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks.location import (
    _SHARDED_STRATEGIES,
    ModelLocation,
    _describe,
    _is_sharded,
    check_model_location,
    rebuild_optimizers,
)
from lorp_lightning.callbacks.statistics import LayerStatsCallback, _Gathering, _GatheringCallback
from lorp_lightning.compensation import check_compensable
from lorp_lightning.methods import CHECK_WINDOWS, DEFAULT_METHOD, PruneSettings, select_layers
from lorp_lightning.rounds import PruningSchedule, compose_plans
from lorp_lightning.selection import PruningPlan, is_budget, protected_blocks, resolve_budget
from lorp_lightning.stats import LayerStats
from lorp_lightning.surgery import prune_layers

__all__ = ["LoRPPruneCallback"]


class LoRPPruneCallback(_GatheringCallback):
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

    It never prunes during the sanity check and, given one amount, prunes only once: later
    validations leave the model alone. Given a schedule, it prunes progressively, as Lightning's
    ``ModelPruning`` does: ``LoRPPruneCallback([(0, 2), (100, 4), (200, 0.25)])`` has removed 2
    blocks by optimizer step 0, 4 by step 100 and a quarter of them by step 200, each step at the
    first validation end of ``fit`` (or of a ``validate`` before it) at or after its step, from
    the statistics of that validation run on the model as it is then (``rounds.PruningSchedule``).
    Training goes on between the steps: with ``LoRPHealCallback`` after it in the callbacks, a
    healing per step (progressive prune-heal), or the module's own ``training_step``. ``plans``
    lists each step's plan, and ``plan`` is them composed in the original numbering. Resuming
    ``fit`` from a checkpoint in the middle of a schedule needs a module that rebuilds the pruned
    depth before the weights load (``LoRPModule`` does); the schedule then goes on where it
    stopped, and a model of another depth is refused, naming both. Pruned in the middle of ``fit``, the model
    keeps training: the optimizers and
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
            the blocks, rounded down); or a schedule: a list of (optimizer step, amount) pairs, or
            a callable of the epoch returning the amount removed by then (0 for nothing yet). A
            schedule prunes at validation ends (``prune_on="validation_end"``); one whose
            amounts do not grow by whole blocks, or exceed the unprotected blocks, is refused
            (a list at ``setup``, a callable when it is asked).
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
        compensate: fold a training-free correction of the stream's scale at each gap into the kept
            weights (``select_layers(..., compensate=True)``, ``lorp_lightning.compensation``): its
            strength is chosen on the calibration windows, like the default method's plans. A family
            where no fold is exact is refused at ``setup``, before any batch.
        rounds: select the budget in this many rounds (``select_layers(..., rounds=rounds)``,
            ``lorp_lightning.rounds``): each round on the model the rounds before it pruned (and
            compensated), its statistics collected again on the calibration windows (all the
            unpadded ones the loop ran; with a ``LayerStatsCallback`` in the Trainer, its first 8).
            Default 1, one shot. More rounds than blocks to prune is refused at ``setup``.
        settings: ``amount`` (a single one), ``method``, ``num_clusters``, ``protect``, ``seed``,
            ``compensate`` and ``rounds`` as one ``PruneSettings``, checked once; an argument given
            as well replaces its own (a schedule as ``amount`` replaces its amount).

    After pruning, ``plan`` is the ``PruningPlan`` and
    ``stats`` the statistics it was chosen from; both are part of the callback's state.
    (It gathers the statistics as ``LayerStatsCallback`` does, with a listener of its own.)
    """

    PRUNE_ON = ("validation_end", "fit_end", "predict_end")

    def __init__(
        self,
        amount: int | float | Sequence[tuple[int, int | float]] | Callable[[int], int | float] | None = None,
        method: str | Callable | None = None,
        num_clusters: int | None = None,
        protect: Iterable[int] | None = None,
        prune_on: str = "validation_end",
        seed: int | None = None,
        verbose: bool = True,
        model: ModelLocation = "model",
        compensate: bool | None = None,
        rounds: int | None = None,
        *,
        settings: PruneSettings | None = None,
    ) -> None:
        if amount is None and settings is None:
            raise TypeError(
                "LoRPPruneCallback needs an amount (a count, a fraction, or a schedule) or settings=PruneSettings(...)"
            )
        self.schedule = None
        if callable(amount) or (isinstance(amount, (list, tuple)) and not is_budget(amount)):
            self.schedule = PruningSchedule(amount)  # a ValueError naming the schedule if it is not one
            if prune_on != "validation_end":
                raise ValueError(
                    f"a schedule prunes at the validation ends of fit it reaches: pass prune_on='validation_end' "
                    f"(the default), not prune_on={prune_on!r}, or a single amount"
                )
            if rounds not in (None, 1) or (settings is not None and settings.rounds != 1):
                raise ParameterError(
                    "rounds",
                    f"rounds={rounds if rounds is not None else settings.rounds!r} splits a "
                    "single amount into rounds; a schedule gives its own rounds",
                )
            amount = None
        base = settings if settings is not None else PruneSettings(method=DEFAULT_METHOD)
        if self.schedule is not None:
            base = replace(base, amount=None)
        self.settings = PruneSettings.of(base, amount, method, num_clusters, protect, seed, compensate, rounds)
        self._method = self.settings.entry
        check_choice(prune_on, "prune_on", self.PRUNE_ON)
        self.prune_on = prune_on
        self.verbose = verbose
        self.stages = ("predict",) if prune_on == "predict_end" else ("validation",)
        self.model = check_model_location(model, type(self).__name__)
        self.stats: LayerStats | None = None
        self.windows: torch.Tensor | None = None
        self._gathering = _Gathering(
            self.stages,
            self.model,
            type(self).__name__,
            check=self._check_model,
            keep_windows=None if self.rounds > 1 else CHECK_WINDOWS,
        )  # rounds: all, for their statistics
        self._listener = self._gathering.listener
        self.plan: PruningPlan | None = None
        self.plans: list[PruningPlan] = []  # with a schedule: each pruning's plan, in the numbering of the model it pruned
        self._depth: int | None = None  # the blocks of the unpruned model, once found
        self._stats_callback: LayerStatsCallback | None = None

    # the settings, as the arguments they came from
    amount = property(
        lambda self: self.settings.amount if self.schedule is None else self.schedule.schedule,
        doc="The amount: the settings' budget, or the schedule as given.",
    )
    method = property(lambda self: self.settings.method, doc="The method, a name or a callable (``settings.method``).")
    num_clusters = property(lambda self: self.settings.num_clusters, doc="``settings.num_clusters``.")
    protect = property(lambda self: self.settings.protect, doc="``settings.protect``.")
    seed = property(lambda self: self.settings.seed, doc="``settings.seed``.")
    compensate = property(lambda self: self.settings.compensate, doc="``settings.compensate``.")
    rounds = property(lambda self: self.settings.rounds, doc="``settings.rounds``.")

    @property
    @override
    def state_key(self) -> str:
        amount = self.amount if self.schedule is None else repr(self.schedule)  # a callable by its name, stable across runs
        return self._generate_state_key(amount=amount, method=self._method.name, prune_on=self.prune_on)

    @property
    def _listens_to(self) -> str:
        return self.stages[0]

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, _SHARDED_STRATEGIES) and self.plan is None:
            raise ValueError(self._sharded_message(f"under {type(trainer.strategy).__name__}"))
        self._gathering.setup(trainer, pl_module)  # finds the causal LM, and _check_model checks the budget
        self._stats_callback = next((cb for cb in trainer.callbacks if isinstance(cb, LayerStatsCallback)), None)
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

    def _check_model(self, trainer: pl.Trainer, model: nn.Module) -> None:
        """The checks that need the causal LM, once it is found (``_Gathering``'s ``check``)."""
        if self.plan is None:
            self._depth = len(decoder_layers(model))
            self._check_budget(self._depth)
            if self.compensate:
                check_compensable(model)  # a family where no fold is exact, refused by name before any batch

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

    def _protected(self, num_layers: int) -> set[int]:
        """The blocks never pruned, in the unpruned model's numbering (select_layers' rule)."""
        return protected_blocks(self.protect, num_layers)

    def _check_budget(self, num_layers: int) -> None:
        """The errors select_layers would raise about the arguments, now rather than after a loop."""
        outside = sorted(p for p in self.protect or () if p >= num_layers)
        if outside:
            raise ValueError(f"protect={self.protect!r} holds {outside}, beyond the {num_layers} blocks of the model")
        protect = self._protected(num_layers)
        if self.num_clusters is not None and self.num_clusters > num_layers:
            raise ParameterError(
                "num_clusters",
                f"num_clusters={self.num_clusters} exceeds the {num_layers} blocks of the model; pass at most {num_layers}",
            )
        if self.schedule is not None:
            self.schedule.blocks(num_layers, num_layers - len(protect))  # a list: every entry checked now
            return
        k = resolve_budget(self.amount, num_layers, num_layers - len(protect))
        if self.rounds > k:
            raise ParameterError(
                "rounds", f"rounds={self.rounds} exceeds the {k} blocks amount={self.amount!r} prunes; pass at most {k}"
            )

    # ------------------------------------------------------------------ listening

    @property
    @override
    def _listening(self) -> bool:
        """Listen only until the pruning (with a schedule: until its last), and only when no LayerStatsCallback does it already."""
        return not self.finished and self._stats_callback is None

    @property
    def finished(self) -> bool:
        """Whether nothing is left to prune: the plan is there, and a schedule has reached its last amount."""
        if self.plan is None:
            return False
        if self.schedule is None:
            return True
        totals = self.schedule.blocks(self.plan.num_layers, self.plan.num_layers - len(self._protected(self.plan.num_layers)))
        return totals is not None and len(self.plan.pruned) >= totals[-1]

    def prunes_now(self, trainer: pl.Trainer) -> bool:
        """Whether this validation end prunes: the first one (a single amount, ``prune_on='validation_end'``), or
        one where the schedule asks for more blocks than are removed (read by ``LoRPHealCallback``)."""
        if self.prune_on != "validation_end" or trainer.sanity_checking:
            return False
        if self.schedule is None:
            return self.plan is None
        return self._due(trainer) > 0

    def _due(self, trainer: pl.Trainer) -> int:
        """With a schedule: the blocks it asks to remove now, beyond those removed (never negative)."""
        assert self.schedule is not None
        num_layers = self.plan.num_layers if self.plan is not None else self._depth
        done = 0 if self.plan is None else len(self.plan.pruned)
        total = self.schedule.due(
            trainer.global_step, trainer.current_epoch, num_layers, num_layers - len(self._protected(num_layers))
        )
        if total < done:
            raise ValueError(
                f"the schedule {self.schedule!r} asks for {total} blocks removed at epoch {trainer.current_epoch}, "
                f"step {trainer.global_step}, but {done} are removed already: a schedule may not decrease"
            )
        return total - done

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
        due = None if self.schedule is None else self._due(trainer)  # a schedule: the blocks it asks for now
        if (self.schedule is None and self.plan is not None) or due == 0:
            return
        if self._stats_callback is not None:
            self.stats = self._stats_callback.stats
        if self.stats is None:
            raise RuntimeError(
                f"LoRPPruneCallback(prune_on={self.prune_on!r}) has no statistics to select from: no "
                f"{self._listens_to} batch ran through the model. Give the Trainer {self._listens_to} data "
                "(a datamodule or dataloader, and limit_val_batches > 0 for validation)"
            )
        causal_lm = self._gathering.causal_lm(pl_module)
        if _is_sharded(causal_lm):  # sharded by a strategy setup did not know: refuse, the model unchanged
            raise RuntimeError(self._sharded_message("found sharded when the pruning came"))
        model = windows = None
        if self._method.reads_model or self.compensate or self.rounds > 1:
            source = self._stats_callback if self._stats_callback is not None else self
            if source.windows is None:
                what = (
                    f"method={self._method.name!r}"
                    if self._method.reads_model
                    else "compensate=True"
                    if self.compensate
                    else f"rounds={self.rounds}"
                )
                raise RuntimeError(
                    f"LoRPPruneCallback({what}) checks on unpadded {self._listens_to} sequences, and none ran "
                    "through the model; give it unpadded windows (TextDataModule's are)"
                )
            model, windows = causal_lm, source.windows
        amount, protect = self.amount, self.protect
        if due is not None:  # this step of the schedule, on the model the steps before it left
            amount = due
            num_layers = self.plan.num_layers if self.plan is not None else self._depth
            alive = [b for b in range(num_layers) if self.plan is None or b not in set(self.plan.pruned)]
            if len(decoder_layers(causal_lm)) != len(alive):
                raise RuntimeError(self._depth_message(len(decoder_layers(causal_lm))))
            protect = [i for i, b in enumerate(alive) if b in self._protected(num_layers)]
        with torch.inference_mode(False):  # plans tried on the model run outside Lightning's inference mode
            plan = select_layers(self.stats, amount, protect=protect, settings=self.settings, model=model, windows=windows)
        plan = PruningPlan.from_json(trainer.strategy.broadcast(plan.to_json()))  # the same blocks on every process
        with torch.inference_mode(False):  # Lightning's evaluation loops run in inference mode
            prune_layers(causal_lm, plan)
            if trainer.state.fn == TrainerFn.FITTING and self.prune_on == "validation_end":
                rebuild_optimizers(trainer, pl_module)
        self.plans.append(plan)
        self.plan = compose_plans(self.plans, sorted(self._protected(self.plans[0].num_layers)))
        self._log(trainer)

    def _depth_message(self, depth: int) -> str:
        if self.plan is None:
            return f"the model has {depth} blocks, but had {self._depth} when LoRPPruneCallback checked its schedule at setup"
        return (
            f"the model has {depth} blocks, but the schedule {self.schedule!r} of LoRPPruneCallback has removed "
            f"{len(self.plan.pruned)} of {self.plan.num_layers} (blocks {self.plan.pruned}), which leaves "
            f"{len(self.plan.kept)}: resume from a checkpoint with a module that rebuilds the pruned depth "
            "(LoRPModule does, from the checkpoint's pruning record)"
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self.schedule is not None and self.plan is not None:  # resumed in the middle of a schedule
            depth = len(decoder_layers(self._gathering.causal_lm(pl_module)))
            if depth != len(self.plan.kept):
                raise ValueError(self._depth_message(depth))

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
            "lorp_compensation_strength": None if plan.compensation is None else plan.compensation["strength"],
            "lorp_rounds": self.rounds,
        }
        for logger in trainer.loggers:
            logger.log_hyperparams(hyperparameters)
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose:
            when = "" if self.schedule is None else f"step {trainer.global_step}, "
            rank_zero_info(f"LoRPPruneCallback: {when}{plan}; {len(plan.kept)} blocks remain")

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        plan = None if self.plan is None else json.loads(self.plan.to_json())  # plain Python values only
        return {
            "plan": plan,
            "plans": [json.loads(p.to_json()) for p in self.plans],
            "stats": None if self.stats is None else self.stats.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        plan = state_dict.get("plan")
        self.plan = None if plan is None else PruningPlan.from_dict(plan)
        self.plans = [PruningPlan.from_dict(p) for p in state_dict.get("plans", [plan] if plan is not None else [])]
        self.stats = None if state_dict.get("stats") is None else LayerStats.from_state_dict(state_dict["stats"])

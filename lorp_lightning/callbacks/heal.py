"""``LoRPHealCallback``: heal a pruned model while ``Trainer.fit`` trains it.

The callback decides what trains (``lorp_lightning.healing.adapters``), keeps the per-step
training loss of its healing (``losses``), and writes the healing's entry into the pruning record
when ``fit`` ends (``lorp_lightning.healing.record``). The settings are
``lorp_lightning.healing.settings.HealingSettings``; ``heal`` runs this callback in a Trainer of
its own.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lorp_lightning.callbacks.location import ModelLocation, check_model_location, get_causal_lm, rebuild_optimizers
from lorp_lightning.callbacks.prune import LoRPPruneCallback
from lorp_lightning.distillation import Distillation, check_dense_stack, check_teacher
from lorp_lightning.healing import adapters
from lorp_lightning.healing.record import add_entry
from lorp_lightning.healing.settings import HealingSettings
from lorp_lightning.module import LoRPModule
from lorp_lightning.stats import model_inputs
from lorp_lightning.surgery import SavedStack, pruning_record, save_stack

__all__ = ["LoRPHealCallback", "LossCurve"]


class LoRPHealCallback(Callback):
    r"""Heals a pruned model while ``Trainer.fit`` trains it: LoRA adapters (or the blocks next to
    the removed ones) train, and are merged into the weights at the end of ``fit``.

    Example::

        trainer = Trainer(max_steps=200, callbacks=[LoRPPruneCallback(0.25), LoRPHealCallback()])
        trainer.validate(module, datamodule=data)   # prunes, from the validation batches
        trainer.fit(module, datamodule=data)        # heals on the training batches, then merges

    The callback changes which parameters train; the LightningModule does the rest (its
    ``training_step`` and ``configure_optimizers``; ``LoRPModule``
    trains on the calibration windows of ``TextDataModule`` and builds
    AdamW over the parameters that require a gradient). LoRA wants a larger learning rate than
    full fine-tuning: ``LoRPModule(..., lr=1e-3)``. The Trainer's ``max_steps`` (or ``max_time``)
    is the length of the healing.

    When healing starts: at the start of ``fit`` if the model is pruned already (by an earlier
    ``validate`` or ``predict`` with ``LoRPPruneCallback``, or by
    ``prune_layers``); or, when a ``LoRPPruneCallback`` earlier in the
    Trainer's callbacks prunes in the middle of this ``fit`` (``prune_on="validation_end"``), right
    after it prunes (the optimizers are built again over what trains; until then the whole dense
    model trains). At the end of ``fit`` (or when it stops on an exception) the adapters are
    merged, the model's parameters train as before, and the healing is added to the pruning
    record: ``config.lorp_pruning["healing"]`` (see ``healing_records``). With a schedule
    (``LoRPPruneCallback([(step, amount), ...])``), progressive prune-heal: before each pruning
    after the first, the healing so far is merged and recorded, and a new one begins after the
    pruning, so the record holds one healing per step of the schedule.

    Checkpoints written during healing hold the adapters unmerged, and ``fit(ckpt_path=...)``
    resumes the healing from them: the adapters go back in before the checkpoint's weights load
    (with ``LoRPModule``, which rebuilds the pruned depth, also for a healing begun by a pruning in
    the middle of ``fit``), the optimizer's state follows, and the callback's state carries the
    healing's losses, tokens and time so far. With a loader that resumes where it stopped
    (``TextDataModule``'s and ``heal``'s do, see ``ShuffledLoader``), the result equals that of an
    uninterrupted run; the record notes the resume (``"resumed_at"``: the checkpoints' steps).

    Args:
        settings: all of the arguments below but ``verbose`` and ``model``, as one ``HealingSettings`` (with its
            ``DistillationSettings``); an argument given as well replaces the settings' own.
        mode: ``"lora"`` (default) or ``"adjacent"``.
        rank: LoRA rank (``"lora"`` only; default 8).
        alpha: LoRA alpha; the update is scaled by alpha / rank (``"lora"`` only; default 16).
        dropout: LoRA dropout (``"lora"`` only; default 0).
        target_modules: names of the linear layers of the blocks that get adapters, e.g.
            ``["q_proj", "v_proj"]`` (``"lora"`` only; default None: every linear layer of every block but the routers of MoE blocks).
        seed: seed of the adapters' random initialisation (default 0).
        verbose: print a line when healing starts and ends (on rank zero).
        model: where the Hugging Face causal LM is in the LightningModule: an attribute name
            (default ``"model"``; dotted paths allowed, e.g. ``"net.lm"``) or a callable
            ``pl_module -> causal LM``, as for the other callbacks
            (``LayerStatsCallback``). It must be there at ``setup``
            (the adapters go in before the optimizers are built), so not built by ``configure_model``.
        teacher: None (default: the next-token loss), ``"dense"``, or a causal LM (see
            *Distillation* below).
        teacher_tokenizer: the teacher's tokenizer, compared with the module's ``tokenizer``
            when both are there (optional; the logits sizes are always compared).
        temperature: the distillation temperature tau > 0 (default 1).
        lm_weight: the share of the next-token loss in the distillation loss, in [0, 1]
            (default 0: pure distillation).
        teacher_name: the teacher's name in the healing record (default: its config's
            ``_name_or_path``, the directory it was loaded from), e.g. the name you loaded it by.
        lora: a peft ``LoraConfig``, instead of ``rank``, ``alpha``, ``dropout`` and
            ``target_modules`` (its ``r``, ``lora_alpha``, ``lora_dropout`` and ``target_modules``:
            a list of the blocks' linear layer names, ``"all-linear"`` or None), whose other
            options (``use_rslora``, ``use_dora``, ``init_lora_weights``, ...) reach peft as given
            and are kept in the record (``"lora_options"``). Options that would leave more than a
            plain model after the merge, or choose the layers another way (``modules_to_save``,
            ``bias``, ``layers_to_transform``, ...), are refused.

    Attributes:
        records: the entries this callback added to the pruning record, one per healing.
        losses: the training loss of every step of the latest healing (a list of floats; the
            record keeps only its first and last tenth's means).

    Strategies: single device and DDP; any other is refused at the ``setup`` of ``fit``.

    **Distillation** (``teacher=...``): the training loss becomes the KL divergence between the
    teacher's and the student's next-token distributions, per token, averaged over the real
    tokens (``distillation_loss``), as Minitron heals pruned
    models, optionally mixed with the next-token loss by ``lm_weight``. The teacher is one of:

    - ``"dense"``: the student itself with its removed blocks put back and its adapters disabled,
      which is the dense model without a second copy of it in memory: only the removed blocks are
      kept (aside, not copied). ``mode="lora"`` only (the kept blocks' own weights stay frozen),
      and the pruning must be done by the ``LoRPPruneCallback`` of
      this Trainer, after this callback has seen the dense model (at the ``setup`` of the
      ``validate``, ``predict`` or ``fit`` that prunes), which is when the stack is saved
      (``save_stack``). The removed blocks are released when the
      healing ends.
    - a causal LM with the student's tokenizer (the dense model, or a larger model of its
      family), already on the device the Trainer trains on (one elsewhere is refused, not moved).
      It is checked at ``setup``, before any training step (the same logits size; with
      ``teacher_tokenizer``, the same vocabulary as the module's ``tokenizer``; no parameter
      shared with the student), and its weights are never changed.

    The teacher runs under ``torch.no_grad``, in eval mode, in its own dtype (autocast off).

    A callback cannot change the loss a ``training_step`` returns, so the module computes it:
    ``LoRPModule`` (and ``heal``) does it by itself, as this
    callback sets its ``distillation`` while healing. In your own LightningModule, return
    ``distillation_loss`` from ``training_step`` (keep the callback as an attribute)::

        def training_step(self, batch, batch_idx):
            logits = self.backbone(input_ids=batch["input_ids"]).logits
            return self.heal_callback.distillation_loss(logits, batch)

    or ask for ``teacher_logits`` and call
    ``distillation_loss`` yourself. Both work while
    ``healing`` is True (before a pruning in the middle of ``fit``, train on your own loss). A
    warning says so when the first healing step did not ask for the teacher.

    ``mode="adjacent"`` trains the weights of the blocks next to each removed block, the final
    normalisation and the language-model head (and the input embeddings, when tied to the head);
    it needs float32 weights.
    """

    def __init__(
        self,
        mode: str | None = None,
        rank: int | None = None,
        alpha: float | None = None,
        dropout: float | None = None,
        target_modules: Sequence[str] | None = None,
        seed: int | None = None,
        verbose: bool = True,
        model: ModelLocation = "model",
        teacher: nn.Module | str | None = None,
        teacher_tokenizer: Any = None,
        temperature: float | None = None,
        lm_weight: float | None = None,
        lora: Any = None,
        teacher_name: str | None = None,
        *,
        settings: HealingSettings | None = None,
    ) -> None:
        self.settings = HealingSettings.of(
            settings,
            mode=mode,
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            seed=seed,
            lora=lora,
            teacher=teacher,
            teacher_tokenizer=teacher_tokenizer,
            temperature=temperature,
            lm_weight=lm_weight,
            teacher_name=teacher_name,
        )
        self.verbose = verbose
        self.model = check_model_location(model, type(self).__name__)
        self.records: list[dict] = []
        self.losses: list[float] = []
        self._run: dict[str, Any] = {}  # heal() describes its run here, for the record
        self._healing: adapters.Healing | None = None
        self._prune_callback: LoRPPruneCallback | None = None
        self._dense: SavedStack | None = None  # teacher="dense": the stack before the pruning, removed blocks and all
        self._distillation: Distillation | None = None
        self._pl_module: pl.LightningModule | None = None
        self._asked_teacher: bool | None = None
        self._step = 0  # the global step after the latest healing step
        self._weights_hook: Any = None  # a resume's hook that puts the adapters back before the weights load

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.settings.mode, rank=self.settings.rank)

    @property
    def teacher(self) -> nn.Module | str | None:
        """The distillation's teacher (``settings.distillation.teacher``), or None."""
        return self.settings.teacher

    @property
    def healing(self) -> bool:
        """True while adapters (or the unfrozen blocks) are training."""
        return self._healing is not None

    # ------------------------------------------------------------------ distillation, for your own training_step

    def teacher_logits(self, batch: Any) -> torch.Tensor:
        """The teacher's logits for ``batch`` (read by ``model_inputs``),
        (B, T, V), without gradient. Only while healing with a teacher."""
        distillation = self._current_distillation("teacher_logits")
        input_ids, attention_mask = model_inputs(batch, self._student_device())
        return distillation.teacher_logits(input_ids, attention_mask)

    def distillation_loss(self, student_logits: torch.Tensor, batch: Any) -> torch.Tensor:
        """The distillation loss of the student's logits for ``batch``, with this callback's
        teacher, ``temperature`` and ``lm_weight``: return it from your ``training_step``.
        Only while healing with a teacher (see the class's *Distillation*)."""
        distillation = self._current_distillation("distillation_loss")
        input_ids, attention_mask = model_inputs(batch, student_logits.device)
        return distillation.loss(student_logits, input_ids, attention_mask)

    def _current_distillation(self, name: str) -> Distillation:
        if self._distillation is None:
            if self.teacher is None:
                raise RuntimeError(
                    f"LoRPHealCallback.{name}: this callback has no teacher; pass "
                    "LoRPHealCallback(teacher='dense' or the dense model)"
                )
            raise RuntimeError(
                f"LoRPHealCallback.{name}: no healing is running (it runs from the setup of fit, or "
                "from the pruning in the middle of fit, to the end of fit); check callback.healing first"
            )
        return self._distillation

    def _student_device(self) -> torch.device:
        return next(self._causal_lm(self._pl_module).parameters()).device

    # ------------------------------------------------------------------ setup

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.teacher == "dense":
            self._save_dense(trainer, pl_module)
        if stage != "fit":
            return
        model = self._causal_lm(pl_module)
        if not isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ValueError(
                f"LoRPHealCallback changes which parameters train, and rebuilds the optimizers for that with "
                f"single-device and DDP strategies only, not {type(trainer.strategy).__name__}"
            )
        self._check_teacher(trainer, pl_module, model)
        self._prune_callback = self._pending_prune(trainer)
        if self._prune_callback is None or self._prune_callback.plan is not None:  # pruned already (a schedule: partly)
            self._check_ready(model)
            self._begin(trainer, pl_module)  # before the strategy builds the optimizers and the DDP wrapper
        else:  # the checks that do not need the pruning, now rather than in the middle of fit
            adapters.check_settings(model, self.settings)
            self._resume_before_weights(trainer, pl_module)

    def _resume_before_weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """On ``fit(ckpt_path=...)`` from a checkpoint taken after the pruning in the middle of fit, begin the healing
        before the checkpoint's weights load into ``pl_module``, which holds the adapters then.

        Lightning loads a checkpoint after ``setup`` and before it builds the optimizers. The module's
        ``on_load_checkpoint`` runs first (``LoRPModule``'s removes the blocks the checkpoint's pruning record
        names); if it pruned the model, the checkpoint was taken while healing, so the healing begins again here.
        """

        def before_weights(*_: Any) -> None:
            self._drop_weights_hook()
            if pruning_record(self._causal_lm(pl_module)) is not None and self._healing is None:
                self._check_ready(self._causal_lm(pl_module))
                self._begin(trainer, pl_module)

        self._weights_hook = pl_module.register_load_state_dict_pre_hook(before_weights)

    def _drop_weights_hook(self) -> None:
        if self._weights_hook is not None:
            self._weights_hook.remove()
            self._weights_hook = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._drop_weights_hook()  # no checkpoint loaded, or loaded already

    def _causal_lm(self, pl_module: pl.LightningModule) -> nn.Module:
        return get_causal_lm(pl_module, self.model, type(self).__name__)

    def _save_dense(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """teacher='dense': save the stack before a LoRPPruneCallback of this Trainer prunes (references, no copy)."""
        if self._dense is not None:
            return
        if not any(isinstance(cb, LoRPPruneCallback) and not cb.finished for cb in trainer.callbacks):
            return  # nothing will be pruned here; _check_teacher says what is missing at the setup of fit
        model = self._causal_lm(pl_module)
        if pruning_record(model) is not None:
            raise ValueError(
                "LoRPHealCallback(teacher='dense') puts back the blocks the LoRPPruneCallback removes, but this model was "
                "pruned before (it has config.lorp_pruning), so those blocks would give the once-pruned model, not the "
                "dense one: pass the dense model as teacher=..."
            )
        self._dense = save_stack(model)

    def _check_teacher(self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module) -> None:
        """Every check of the teacher, at the setup of fit: before any training step."""
        if self.teacher is None:
            return
        if self.teacher == "dense":
            if self._dense is None:
                raise ValueError(
                    "LoRPHealCallback(teacher='dense') puts the removed blocks back for the teacher, so it must see the "
                    "model before the pruning: put LoRPPruneCallback(...) before it in this Trainer's callbacks and prune "
                    "with this Trainer (trainer.validate(...) then trainer.fit(...), or prune_on='validation_end' during "
                    "fit). For a model pruned otherwise (prune_layers, a saved pruned model), pass the dense model: "
                    "teacher=dense_model"
                )
            return
        check_teacher(
            model,
            self.teacher,
            device=trainer.strategy.root_device,
            tokenizer=getattr(pl_module, "tokenizer", None),
            teacher_tokenizer=self.settings.distillation.teacher_tokenizer,
        )

    def _pending_prune(self, trainer: pl.Trainer) -> LoRPPruneCallback | None:
        """The Trainer's LoRPPruneCallback that will prune during this fit, checked to run before this callback."""
        callbacks = list(trainer.callbacks)
        pending = [cb for cb in callbacks if isinstance(cb, LoRPPruneCallback) and not cb.finished]
        if not pending:
            return None
        prune = pending[0]
        if prune.prune_on != "validation_end":
            return None  # it prunes at the end of fit or of predict: not during this fit
        if prune.schedule is not None and self.teacher == "dense":
            raise ValueError(
                f"LoRPHealCallback(teacher='dense') with the schedule {prune.schedule!r}: the dense teacher is the model "
                "before the pruning, whose kept blocks the first healing's merge changes; distil from a model given as "
                "teacher=... (the dense model loaded again) across a schedule"
            )
        if callbacks.index(prune) > callbacks.index(self):
            raise ValueError(
                "LoRPHealCallback comes before LoRPPruneCallback in the Trainer's callbacks, so it would see the model "
                "before the pruning; pass callbacks=[LoRPPruneCallback(...), LoRPHealCallback(...)]"
            )
        return prune

    def _check_ready(self, model: nn.Module) -> None:
        if pruning_record(model) is None:
            raise ValueError(
                "LoRPHealCallback heals a pruned model, but the model has no pruning record and no LoRPPruneCallback "
                "of this Trainer prunes during fit (prune_on='validation_end'). Prune first: trainer.validate(...) "
                "with LoRPPruneCallback, then trainer.fit(...)"
            )
        adapters.check_model(model, self.settings)

    # ------------------------------------------------------------------ healing

    def _begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.inference_mode(False):  # adapters made inside an evaluation loop must be ordinary tensors
            model = self._causal_lm(pl_module)
            if self.teacher == "dense":  # before the adapters go in: a mismatch leaves the model as it was
                check_dense_stack(model, self._dense)
            self._healing = adapters.start(model, self.settings, trainer.global_step)
            self.losses = self._healing.losses  # the curve of this healing, kept after it ends
            model.to(pl_module.device)
        if self.teacher is not None:
            self._start_distillation(pl_module, model)
        if self.verbose:
            healing = self._healing
            what = (
                f"LoRA rank {self.settings.rank} on {', '.join(healing.target_modules)}"
                if self.settings.mode == "lora"
                else f"blocks {healing.trained_blocks}, the final norm and the head"
            )
            loss = "" if healing.distillation is None else f", distilled from the teacher {healing.distillation['teacher']}"
            rank_zero_info(
                f"LoRPHealCallback: healing {what}: {healing.num_trainable_parameters / 1e6:.2f} M trainable parameters{loss}"
            )

    def _start_distillation(self, pl_module: pl.LightningModule, model: nn.Module) -> None:
        """Build the teacher, and hand it to a LoRPModule, whose training_step then distils."""
        settings = self.settings.distillation
        if self.teacher == "dense":
            distillation = Distillation.dense_student(
                model, self._dense, self._healing.tuner, temperature=settings.temperature, lm_weight=settings.lm_weight
            )
        else:
            distillation = Distillation.from_model(
                self.teacher, temperature=settings.temperature, lm_weight=settings.lm_weight, name=settings.teacher_name
            )
        distillation.start()
        self._distillation, self._pl_module, self._asked_teacher = distillation, pl_module, None
        self._healing.distillation = distillation.record()
        if isinstance(pl_module, LoRPModule):
            pl_module.distillation = distillation

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before a scheduled pruning after the first: this healing ends (merged, recorded), and a new one begins after it.
        if (
            self._healing is not None
            and self._prune_callback is not None
            and trainer.state.fn == TrainerFn.FITTING
            and self._prune_callback.prunes_now(trainer)
        ):
            self._end(trainer, pl_module, completed=True)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Right after the LoRPPruneCallback before this one pruned in the middle of fit (each step of a schedule).
        if (
            self._healing is None
            and self._prune_callback is not None
            and self._prune_callback.plan is not None
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
        ):
            self._begin(trainer, pl_module)
            with torch.inference_mode(False):
                rebuild_optimizers(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._healing is not None:
            loss = _step_loss(outputs)
            if loss is not None:
                self._healing.losses.append(loss)
            input_ids, _ = model_inputs(batch, pl_module.device)
            self._healing.tokens += int(input_ids.numel())
            self._step = trainer.global_step
            if self._distillation is not None and self._asked_teacher is None:  # once, after the first healing step
                self._asked_teacher = self._distillation.calls > 0
                if not self._asked_teacher:
                    rank_zero_warn(
                        f"LoRPHealCallback(teacher=...): the training_step of {type(pl_module).__name__} did not ask for "
                        "the teacher's logits, so it trains on its own loss, not on distillation. Return "
                        "heal_callback.distillation_loss(logits, batch) from it (LoRPModule does so by itself)"
                    )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, completed=True)
        if self._prune_callback is not None and self._prune_callback.plan is None:
            rank_zero_warn("LoRPHealCallback: the LoRPPruneCallback never pruned during fit, so nothing was healed")
        self._prune_callback = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end(trainer, pl_module, completed=False)  # the model is left plain, with what it learned so far

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, completed: bool) -> None:
        healing, self._healing = self._healing, None
        if healing is None:
            return
        if self._distillation is not None:
            self._distillation.stop()
            if isinstance(pl_module, LoRPModule) and pl_module.distillation is self._distillation:
                pl_module.distillation = None
        # the merge changes the kept blocks, so the dense teacher is gone: release the removed blocks too
        self._distillation, self._pl_module, self._dense = None, None, None
        with torch.inference_mode(False):
            model = self._causal_lm(pl_module)
            adapters.merge(model, healing)
            entry = add_entry(model, healing, trainer.global_step - healing.start_step, completed, self._run)
        self.records.append(entry)
        if self.verbose:
            kind = "" if entry["distillation"] is None else " (distillation)"
            losses = (
                f"; training loss{kind} {entry['initial_loss']:.3f} -> {entry['final_loss']:.3f}"
                if entry["initial_loss"] is not None
                else ""
            )
            rank_zero_info(f"LoRPHealCallback: healed for {entry['num_steps']} steps{losses}; merged into the weights")

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"records": copy.deepcopy(self.records), "healing": None}
        healing = self._healing
        if healing is not None:  # a checkpoint in the middle of a healing: what its record will need
            state["healing"] = {
                "start_step": healing.start_step,
                "step": self._step,
                "losses": list(healing.losses),
                "tokens": healing.tokens,
                "seconds": healing.seconds,
                "resumed_at": list(healing.resumed_at),
                "run": self._run_settings(),
            }
        return state

    def _run_settings(self) -> dict[str, Any]:
        """What a resumed healing must share with the checkpoint's: heal()'s run, and this callback's own settings."""
        settings = self.settings
        own = {name: getattr(settings, name) for name in ("mode", "rank", "alpha", "dropout", "seed")}
        own["target_modules"] = None if settings.target_modules is None else list(settings.target_modules)
        return {**copy.deepcopy(self._run), **own}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = copy.deepcopy(list(state_dict.get("records", [])))
        saved = state_dict.get("healing")
        if saved is None:
            return
        healing = self._healing
        if healing is None:  # the weights would not have loaded: the adapters were not there
            raise RuntimeError(
                "LoRPHealCallback: the checkpoint was taken in the middle of a healing, but no healing began before "
                "its weights loaded; resume with the model pruned as it was (LoRPModule rebuilds it from the "
                "checkpoint's pruning record)"
            )
        there, here = saved["run"], self._run_settings()
        changed = sorted(k for k in {*there, *here} if there.get(k) != here.get(k))
        if changed:
            raise ValueError(
                "LoRPHealCallback: the checkpoint's healing ran with other settings than this one: "
                + ", ".join(f"{k}={there.get(k)!r} there, {here.get(k)!r} here" for k in changed)
            )
        healing.start_step = int(saved["start_step"])
        healing.losses[:] = [float(x) for x in saved["losses"]]
        healing.tokens = int(saved["tokens"])
        healing.seconds_before = float(saved["seconds"])
        healing.started = time.perf_counter()
        healing.resumed_at = [*saved["resumed_at"], int(saved["step"])]
        self._step = int(saved["step"])


class LossCurve(Callback):
    """The training loss of every step of ``fit``, in ``losses`` (a list of floats).

    curve = LossCurve()
    heal(model, tokenizer, steps=200, trainer_options={"callbacks": [curve]})
    curve.losses   # one float per step
    """

    def __init__(self) -> None:
        self.losses: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}  # a resumed run's curve goes on from the checkpoint's

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = [float(x) for x in state_dict.get("losses", [])]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _step_loss(outputs)
        if loss is not None:
            self.losses.append(loss)


def _step_loss(outputs: Any) -> float | None:
    """The loss a ``training_step`` returned (a tensor, or a dict with ``"loss"``), as a float; None without one."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else None

"""``heal``: a pruned model healed by a short Lightning training run, in one call.

The run is ``Trainer.fit`` of a ``LoRPModule`` with a ``LoRPHealCallback``, on the calibration
windows of a text, with AdamW under ``learning_rate_factor`` over ``steps`` or ``max_seconds``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lorp_lightning._validation import ParameterError, check_int, tagged
from lorp_lightning.callbacks.heal import LoRPHealCallback
from lorp_lightning.callbacks.time_budget import TimeBudget
from lorp_lightning.distillation import check_teacher
from lorp_lightning.healing.adapters import check_model
from lorp_lightning.healing.settings import DEFAULT_LR, HealingSettings, TrainingSettings, split_keywords
from lorp_lightning.module import LoRPModule

__all__ = ["heal"]


class _HealingModule(LoRPModule):
    """LoRPModule with AdamW under the run's learning-rate schedule (``TrainingSettings.learning_rate_factor``), over
    ``training.steps`` or ``training.max_seconds``.

    The progress of the run is the larger of the share of the steps done and the share of the
    time spent, so a run cut by ``max_seconds`` still warms up and decays over the time it has.
    """

    def __init__(self, model: Any, tokenizer: Any, lr: float, training: TrainingSettings, budget: TimeBudget | None) -> None:
        super().__init__(model, tokenizer, lr=lr, weight_decay=training.weight_decay)
        # plain values only in a checkpoint's hyper-parameters, which then loads with torch.load(weights_only=True)
        self.save_hyperparameters(ignore=["model", "tokenizer", "training", "budget"])
        self.training_settings = training
        self.budget = budget

    def progress(self, step: int) -> float:
        """The share of the run done once ``step`` steps are done (the next step's learning rate uses it)."""
        share = step / self.training_settings.steps
        if self.budget is not None:
            share = max(share, self.budget.share())
        return share

    @override
    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        # LambdaLR gives the step count: the learning rate of step k (from 0) is that of progress (k + 1) / steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.training_settings.learning_rate_factor(self.progress(step + 1))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def heal(
    model: nn.Module,
    tokenizer: Any,
    *,
    text: str | os.PathLike | Sequence[str] = "wiki",
    settings: HealingSettings | None = None,
    training: TrainingSettings | None = None,
    progress: bool = False,
    inplace: bool = True,
    trainer_options: dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    resume: bool = False,
    **options: Any,
) -> nn.Module:
    """Heal a pruned model by a short Lightning training run on calibration text, and return it.

    Example::

        pruned = prune_layers(model, select_layers(stats, 0.25))
        heal(pruned, tokenizer, steps=200)            # LoRA rank 8 on every block, merged
        pruned.save_pretrained("smollm2-healed")       # a plain Hugging Face model

    With the dense model as teacher (distillation, as Minitron heals; see ``LoRPHealCallback``)::

        pruned = prune_layers(model, plan, inplace=False)   # model stays dense
        heal(pruned, tokenizer, steps=200, teacher=model)   # KL to the dense model's next-token distributions

    The training windows are the **calibration** split of ``text`` (see
    ``TextDataModule`` for the splits), cut into windows of ``window``
    tokens and shuffled with ``seed``; the held-out split is never read. The run is
    ``Trainer.fit`` of a ``LoRPModule`` with a
    ``LoRPHealCallback`` for ``steps`` optimizer steps, or until ``max_seconds`` have passed,
    whichever comes first: AdamW (``lr``, ``weight_decay``) under the run's learning-rate schedule,
    ``TrainingSettings.learning_rate_factor`` (a linear warm-up, then a cosine decay; the run's progress
    is the larger of the share of the steps done and the share of ``max_seconds`` spent), gradients
    clipped to norm 1. The model trains in its own dtype on its own device (a bfloat16 model trains
    float32 adapters on frozen bfloat16 weights).

    Args:
        model: a pruned Hugging Face causal LM (it has ``config.lorp_pruning``).
        tokenizer: its tokenizer.
        text: a bundled text name, a text file or a list of documents; its calibration split trains.
        settings: what trains and on which loss, a ``HealingSettings`` (default: LoRA rank 8 on every block, the
            next-token loss).
        training: the run, a ``TrainingSettings`` (``steps``, ``lr``, ``weight_decay``, ``window``, ``batch_size``,
            ``num_windows``, ``max_seconds``: default 200 steps at ``DEFAULT_LR`` of the mode).
        progress: show Lightning's progress bar, with the training loss.
        inplace: heal ``model`` itself (True) or a deep copy of it, leaving ``model`` as it was.
        trainer_options: extra keyword arguments for the ``Trainer`` (e.g. ``logger``,
            ``precision``); ``callbacks`` listed there are added after the healing callback.
        checkpoint_dir: a directory for Lightning checkpoints of the run, so that a killed run can resume
            (default None: none are written). ``last.ckpt`` there is replaced every ``checkpoint_every`` steps;
            it holds the model with its adapters unmerged, the optimizer, the learning-rate schedule, the place in
            the shuffled windows and the healing so far. It is left there when the run ends.
        checkpoint_every: steps between checkpoints (default 25).
        resume: go on from ``checkpoint_dir``'s ``last.ckpt``, written by a run of this call with the same model,
            text and settings; the result equals that of the uninterrupted run (on the same machine), and the
            healing record's ``"resumed_at"`` gives the checkpoint's step. Without ``resume``, a ``last.ckpt``
            already there is refused rather than overwritten.
        **options: any field of the three settings objects as a keyword, in place of the object's: ``mode``,
            ``rank``, ``alpha``, ``dropout``, ``target_modules``, ``lora``, ``seed`` (``HealingSettings``); ``teacher``,
            ``teacher_tokenizer``, ``temperature``, ``lm_weight``, ``teacher_name`` (``DistillationSettings``);
            ``steps``, ``lr``, ... (``TrainingSettings``). ``teacher``: a causal LM to distil from, with the
            student's tokenizer and on its device (typically the dense model the student was pruned from, kept by
            ``prune_layers(model, plan, inplace=False)``); the training loss is then ``distillation_loss``,
            KL(teacher || student) of the next-token distributions, per token, averaged over the tokens. The teacher
            runs under no_grad, in eval mode, in its own dtype, and is left as it was. (``teacher="dense"``, the
            student with its removed blocks put back, needs the blocks the pruning removed: it is for
            ``LoRPHealCallback`` with ``LoRPPruneCallback`` in one Trainer.)

    Returns:
        The healed model (``model`` itself when ``inplace``), with a new entry in
        ``config.lorp_pruning["healing"]``: the settings, the steps done, the mean training loss
        over the first and the last tenth of the steps, the seconds, the data, and
        ``"distillation"``: None, or the teacher (its name or path, dtype and depth) and the
        loss's settings.

    Raises:
        ValueError: a bad argument (named, with its value), a model without a pruning record,
            ``rank`` larger than a target layer allows, ``mode="adjacent"`` on low-precision
            weights, a teacher with another vocabulary or tokenizer, on another device, or that
            shares weights with the student. Everything is checked before anything changes: on an
            error the model is left as it was.
        TypeError: a teacher that is not a causal LM.
        FileExistsError: ``checkpoint_dir`` holds a ``last.ckpt`` and ``resume`` is False.
        FileNotFoundError: ``resume`` is True and ``checkpoint_dir`` holds no ``last.ckpt``.
    """
    healing_options, training_options = split_keywords(options, "heal()")
    settings = HealingSettings.of(settings, **healing_options)
    training = TrainingSettings.of(training, **training_options)
    lr = DEFAULT_LR[settings.mode] if training.lr is None else training.lr
    if trainer_options is not None and not isinstance(trainer_options, dict):
        raise ValueError(f"trainer_options must be a dict of Trainer arguments or None, got trainer_options={trainer_options!r}")
    options = dict(trainer_options or {})
    for owned in ("max_steps", "max_epochs", "limit_val_batches"):
        if owned in options:
            raise ValueError(f"trainer_options may not set {owned!r}: heal() sets it from its own arguments")
    check_int(checkpoint_every, "checkpoint_every", low=1)
    last = _checkpoint_to_resume(checkpoint_dir, resume)
    teacher = settings.teacher
    if isinstance(teacher, str) and teacher == "dense":
        raise ParameterError(
            "teacher",
            "heal(teacher='dense') would put back the blocks the pruning removed, which a pruned model no longer "
            "has: pass the dense model (prune_layers(model, plan, inplace=False) keeps it), or heal in a Trainer with "
            "LoRPPruneCallback and LoRPHealCallback(teacher='dense'), which keeps the removed blocks aside",
        )
    callback = LoRPHealCallback(settings=settings, verbose=False)
    check_model(model, settings)
    if teacher is not None:
        check_teacher(model, teacher, tokenizer=tokenizer, teacher_tokenizer=settings.distillation.teacher_tokenizer)
    from lorp_lightning.data import ShuffledLoader, TextDataModule

    data = TextDataModule(
        text,
        tokenizer,
        window=training.window,
        num_calibration_windows=training.num_windows,
        batch_size=training.batch_size,
        seed=settings.seed,
    )
    windows = data.windows("calibration")  # the calibration split only: the held-out split is never read

    spread = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    if len(spread) > 1:
        raise ValueError(
            f"heal() trains on one device, but the model is spread over {spread} (hf_device_map, e.g. from "
            "device='auto'); load it on one device (device='cuda:0' or 'cpu'), or heal in your own Trainer "
            "with a strategy that shards it"
        )
    if not inplace:
        model = copy.deepcopy(model)
    device = next(model.parameters()).device
    extra_callbacks = list(options.pop("callbacks", None) or [])
    if checkpoint_dir is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        extra_callbacks.append(
            ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=checkpoint_every)
        )
    trainer_arguments = dict(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        logger=False,
        enable_checkpointing=checkpoint_dir is not None,
        enable_model_summary=False,
        enable_progress_bar=progress,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
    )
    trainer_arguments.update(options)
    budget = None if training.max_seconds is None else TimeBudget(training.max_seconds)
    trainer = pl.Trainer(
        max_steps=training.steps,
        max_epochs=-1,
        limit_val_batches=0,
        callbacks=[callback, *([] if budget is None else [budget]), *extra_callbacks],
        **trainer_arguments,
    )
    module = _HealingModule(model, tokenizer, lr=lr, training=training, budget=budget)
    loader = ShuffledLoader(windows, batch_size=training.batch_size, seed=settings.seed)  # resumes where it stopped
    callback._run = {  # written into the healing record, once, when the run ends: the data and every training setting
        "text": text if isinstance(text, str) else os.fspath(text) if isinstance(text, os.PathLike) else f"{len(text)} documents",
        "split": "calibration",
        **{name: value for name, value in asdict(training).items() if name != "steps"},  # steps done: num_steps
        "num_windows": int(windows.shape[0]),
        "lr": lr,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*defined a `validation_step` but have no `val_dataloader`.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
        trainer.fit(module, train_dataloaders=loader, ckpt_path=last)
    model.to(device)  # Lightning's teardown moves a model trained on a GPU back to the CPU
    if not callback.records:
        raise RuntimeError("heal(): the training run ended without healing; see the Trainer's messages above")
    return model


def _checkpoint_to_resume(checkpoint_dir: str | os.PathLike | None, resume: bool) -> str | None:
    """The checkpoint ``heal(checkpoint_dir=..., resume=True)`` goes on from, or None for a fresh run.

    Raises:
        ValueError: ``resume`` not a bool, or True without a ``checkpoint_dir``.
        FileNotFoundError: ``resume`` and no ``last.ckpt`` in ``checkpoint_dir``.
        FileExistsError: not ``resume``, and a ``last.ckpt`` of an earlier run there, which a fresh run would replace.
    """
    if not isinstance(resume, bool):
        raise ParameterError("resume", f"resume must be True or False, got resume={resume!r}")
    if checkpoint_dir is None:
        if resume:
            raise ParameterError("resume", "resume=True needs the checkpoint_dir the interrupted run wrote its checkpoints to")
        return None
    last = Path(checkpoint_dir) / "last.ckpt"
    if resume and not last.is_file():
        raise tagged(
            FileNotFoundError(f"resume=True, but there is no checkpoint to resume from: {last} does not exist"), "checkpoint_dir"
        )
    if not resume and last.exists():
        error = FileExistsError(
            f"{last} holds a checkpoint of an earlier run: resume=True goes on from it; remove it to start afresh"
        )
        raise tagged(error, "checkpoint_dir")
    return str(last) if resume else None

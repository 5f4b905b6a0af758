"""``heal``: a pruned model healed by a short Lightning training run, in one call.

The run is ``Trainer.fit`` of a ``LoRPModule`` with a ``LoRPHealCallback``, on the calibration
windows of a text, with AdamW under ``learning_rate_factor`` over ``steps`` or ``max_seconds``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lorp_lightning._validation import check_int, check_real
from lorp_lightning.callbacks.heal import LoRPHealCallback
from lorp_lightning.callbacks.time_budget import TimeBudget
from lorp_lightning.distillation import check_teacher
from lorp_lightning.healing.adapters import check_model
from lorp_lightning.healing.schedule import learning_rate_factor
from lorp_lightning.healing.settings import DEFAULT_LR, HealingSettings
from lorp_lightning.module import LoRPModule

__all__ = ["heal"]


class _HealingModule(LoRPModule):
    """LoRPModule with AdamW under ``learning_rate_factor``, over ``steps`` or ``max_seconds``.

    The progress of the run is the larger of the share of the steps done and the share of the
    time spent, so a run cut by ``max_seconds`` still warms up and decays over the time it has.
    """

    def __init__(self, model: Any, tokenizer: Any, lr: float, weight_decay: float, steps: int,
                 budget: TimeBudget | None) -> None:
        super().__init__(model, tokenizer, lr=lr, weight_decay=weight_decay)
        self.steps = steps
        self.budget = budget

    def progress(self, step: int) -> float:
        """The share of the run done once ``step`` steps are done (the next step's learning rate uses it)."""
        share = step / self.steps
        if self.budget is not None:
            share = max(share, self.budget.share())
        return share

    @override
    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        # LambdaLR gives the step count: the learning rate of step k (from 0) is that of progress (k + 1) / steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(self.progress(step + 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def heal(
    model: nn.Module,
    tokenizer: Any,
    *,
    steps: int,
    text: str | os.PathLike | Sequence[str] = "wiki",
    mode: str = "lora",
    rank: int | None = None,
    alpha: float | None = None,
    dropout: float | None = None,
    target_modules: Sequence[str] | None = None,
    lora: Any = None,
    lr: float | None = None,
    weight_decay: float = 0.0,
    window: int = 256,
    batch_size: int = 4,
    num_windows: int | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
    progress: bool = False,
    inplace: bool = True,
    trainer_options: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
    teacher_tokenizer: Any = None,
    temperature: float | None = None,
    lm_weight: float | None = None,
    teacher_name: str | None = None,
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
    whichever comes first: AdamW (``lr``, ``weight_decay``) with a linear warm-up over the first 5%
    of the run and a cosine decay to 10% of ``lr`` (the run's progress is the larger of the share
    of the steps done and the share of ``max_seconds`` spent), gradients clipped to norm 1. The model trains in its own dtype on its own device (a bfloat16 model
    trains float32 adapters on frozen bfloat16 weights).

    Args:
        model: a pruned Hugging Face causal LM (it has ``config.lorp_pruning``).
        tokenizer: its tokenizer.
        steps: optimizer steps (>= 1).
        text: a bundled text name, a text file or a list of documents; its calibration split trains.
        mode: ``"lora"`` (default) or ``"adjacent"`` (see ``LoRPHealCallback``).
        rank: LoRA rank (``"lora"`` only; default 8).
        alpha: LoRA alpha; the update is scaled by alpha / rank (``"lora"`` only; default 16).
        dropout: LoRA dropout (``"lora"`` only; default 0).
        target_modules: names of the linear layers of the blocks that get adapters, e.g.
            ``["q_proj", "v_proj"]`` (``"lora"`` only; default None: every linear layer of every block but the routers of MoE blocks).
        lora: a peft ``LoraConfig`` instead of the four settings above (see ``LoRPHealCallback``).
        lr: peak learning rate; default ``DEFAULT_LR`` of the mode (1e-3 for LoRA, 1e-4 for
            ``"adjacent"``).
        weight_decay: AdamW weight decay.
        window: tokens per training window.
        batch_size: windows per step.
        num_windows: how many calibration windows to draw (None: all).
        max_seconds: a wall-clock budget for the training: it stops before a step that would
            end later than this (judged by the longest step so far; under DDP rank 0 decides
            and every process stops after the same step), and the learning-rate schedule
            follows the time spent; None: ``steps`` alone.
        seed: the adapters' initialisation and the order of the windows.
        progress: show Lightning's progress bar, with the training loss.
        inplace: heal ``model`` itself (True) or a deep copy of it, leaving ``model`` as it was.
        trainer_options: extra keyword arguments for the ``Trainer`` (e.g. ``logger``,
            ``precision``); ``callbacks`` listed there are added after the healing callback.
        teacher: a causal LM to distil from, with the student's tokenizer and on its device
            (typically the dense model the student was pruned from, kept by
            ``prune_layers(model, plan, inplace=False)``); None (default): the next-token loss.
            The training loss is then ``distillation_loss``:
            KL(teacher || student) of the next-token distributions, per token, averaged over the
            tokens. The teacher runs under no_grad, in eval mode, in its own dtype, and is left
            as it was. (``teacher="dense"``, the student with its removed blocks put back, needs
            the blocks the pruning removed: it is for ``LoRPHealCallback`` with
            ``LoRPPruneCallback`` in one Trainer.)
        teacher_tokenizer: the teacher's tokenizer, compared with ``tokenizer`` (optional).
        temperature: the distillation temperature tau > 0 (default 1).
        lm_weight: the share of the next-token loss in the distillation loss, in [0, 1]
            (default 0: pure distillation).
        teacher_name: the teacher's name in the healing record (default: its config's
            ``_name_or_path``).

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
    """
    steps = check_int(steps, "steps", what="a positive int (optimizer steps; steps=0 would train nothing)")
    settings = HealingSettings.checked(mode, rank, alpha, dropout, target_modules, seed, lora)
    lr = DEFAULT_LR[settings.mode] if lr is None else check_real(lr, "lr", low=0.0, low_inclusive=False, what="a number > 0")
    weight_decay = check_real(weight_decay, "weight_decay", low=0.0, what="a number >= 0")
    if max_seconds is not None:
        max_seconds = check_real(max_seconds, "max_seconds", low=0.0, low_inclusive=False, what="a number of seconds > 0, or None")
    if trainer_options is not None and not isinstance(trainer_options, dict):
        raise ValueError(f"trainer_options must be a dict of Trainer arguments or None, got trainer_options={trainer_options!r}")
    options = dict(trainer_options or {})
    for owned in ("max_steps", "max_epochs", "limit_val_batches"):
        if owned in options:
            raise ValueError(f"trainer_options may not set {owned!r}: heal() sets it from its own arguments")
    if isinstance(teacher, str) and teacher == "dense":
        raise ValueError(
            "heal(teacher='dense') would put back the blocks the pruning removed, which a pruned model no longer has: "
            "pass the dense model (prune_layers(model, plan, inplace=False) keeps it), or heal in a Trainer with "
            "LoRPPruneCallback and LoRPHealCallback(teacher='dense'), which keeps the removed blocks aside"
        )
    callback = LoRPHealCallback(mode, rank, alpha, dropout, target_modules, seed=seed, verbose=False, teacher=teacher, lora=lora,
                                teacher_tokenizer=teacher_tokenizer, temperature=temperature, lm_weight=lm_weight,
                                teacher_name=teacher_name)
    check_model(model, settings)
    if teacher is not None:
        check_teacher(model, teacher, tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer)
    from lorp_lightning.data import TextDataModule

    data = TextDataModule(text, tokenizer, window=window, num_calibration_windows=num_windows, batch_size=batch_size, seed=seed)
    windows = data.windows("calibration")  # the calibration split only: the held-out split is never read

    spread = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    if len(spread) > 1:
        raise ValueError(f"heal() trains on one device, but the model is spread over {spread} (hf_device_map, e.g. from "
                         "device='auto'); load it on one device (device='cuda:0' or 'cpu'), or heal in your own Trainer "
                         "with a strategy that shards it")
    if not inplace:
        model = copy.deepcopy(model)
    device = next(model.parameters()).device
    extra_callbacks = list(options.pop("callbacks", None) or [])
    trainer_arguments = dict(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
    )
    trainer_arguments.update(options)
    budget = None if max_seconds is None else TimeBudget(max_seconds)
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        callbacks=[callback, *([] if budget is None else [budget]), *extra_callbacks],
        **trainer_arguments,
    )
    module = _HealingModule(model, tokenizer, lr=lr, weight_decay=weight_decay, steps=steps, budget=budget)
    loader = torch.utils.data.DataLoader(
        windows, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    callback._run = {  # written into the healing record, once, when the run ends
        "text": text if isinstance(text, str) else os.fspath(text) if isinstance(text, os.PathLike) else f"{len(text)} documents",
        "split": "calibration",
        "window": window,
        "batch_size": batch_size,
        "num_windows": int(windows.shape[0]),
        "lr": lr,
        "weight_decay": weight_decay,
        "max_seconds": max_seconds,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*defined a `validation_step` but have no `val_dataloader`.*")
        trainer.fit(module, train_dataloaders=loader)
    model.to(device)  # Lightning's teardown moves a model trained on a GPU back to the CPU
    if not callback.records:
        raise RuntimeError("heal(): the training run ended without healing; see the Trainer's messages above")
    return model

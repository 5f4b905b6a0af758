"""Healing: a short training run that recovers part of the quality a pruned model lost.

Pruning removes blocks without training; healing trains the pruned model a little on the
**calibration** split of a text (never the held-out split, which measures perplexity), in one of
two ways (``mode``):

- ``"lora"`` (default): LoRA adapters (through peft) on the linear layers of every decoder
  block; everything else is frozen. At the end the adapters are merged into the weights.
- ``"adjacent"``: the weights of the blocks next to each removed block (the nearest kept block
  below and above it, in the original numbering), of the final normalisation and of the
  language-model head are trained; everything else is frozen. (A head tied to the input
  embeddings trains them too.)

The training loss is the next-token loss on that text, or, with a ``teacher``, distillation:
the KL divergence between the teacher's and the student's next-token distributions, as Minitron
heals pruned models (see ``lorp_lightning.distillation``). The teacher is the dense model, or
with the callback the student itself with its removed blocks put back and its adapters off.

Either way, the healed model is again a plain Hugging Face model: no adapter modules or peft
attributes are left, ``save_pretrained`` writes an ordinary checkpoint, and plain
``AutoModelForCausalLM.from_pretrained`` reloads it. ``config.lorp_pruning`` keeps its pruning
record, and each healing adds an entry to its ``"healing"`` list.

Two entry points:

- ``LoRPHealCallback``, for a Lightning user: added to the Trainer after
  ``LoRPPruneCallback``, it heals the pruned model while
  ``Trainer.fit`` trains it (the module's ``training_step`` and optimizer; ``LoRPModule`` has both).
- ``heal``, a function that runs that ``fit`` itself: the calibration windows, a Trainer
  with ``max_steps``, AdamW with warm-up and cosine decay.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lorp_lightning._validation import check_int, check_real
from lorp_lightning._versions import check_version
from lorp_lightning.architectures import architecture_of, decoder_layers
from lorp_lightning.callbacks import LoRPPruneCallback, ModelLocation, check_model_location, get_causal_lm, rebuild_optimizers
from lorp_lightning.distillation import Distillation, _check_lm_weight, _check_temperature, check_dense_stack, check_teacher
from lorp_lightning.module import LoRPModule
from lorp_lightning.stats import model_inputs
from lorp_lightning.surgery import RECORD_ATTRIBUTE, SavedStack, pruning_record, save_stack

__all__ = [
    "DEFAULT_LR",
    "MODES",
    "LoRPHealCallback",
    "LossCurve",
    "blocks_next_to_removed",
    "heal",
    "healing_records",
    "learning_rate_factor",
]

MODES = ("lora", "adjacent")
"""The ways to heal: LoRA adapters on every block, or full training of the blocks next to the removed ones."""

DEFAULT_RANK = 8
DEFAULT_ALPHA = 16.0
DEFAULT_DROPOUT = 0.0
DEFAULT_LR = {"lora": 1e-3, "adjacent": 1e-4}
"""Learning rate ``heal`` uses when none is given, per mode (see ``docs/healing.md`` for how they were chosen)."""

HEALING_KEY = "healing"
"""Key of the list of healing entries inside the pruning record (``config.lorp_pruning``)."""

_ADAPTER = "default"


# --------------------------------------------------------------------------- pure helpers


def blocks_next_to_removed(original_num_layers: int, pruned_layers: Sequence[int]) -> list[int]:
    """The kept blocks next to a removed block, in the pruned model's numbering.

    For each removed block (original numbering), the nearest kept block below it and the nearest
    kept block above it, where they exist. A run of removed blocks has one neighbour on each side.

    Example: 10 blocks with blocks 2, 3 and 7 removed keep 0 1 4 5 6 8 9; the neighbours are the
    original blocks 1, 4, 6 and 8, which are blocks ``[1, 2, 4, 5]`` of the pruned model.
    """
    removed = set(int(i) for i in pruned_layers)
    kept = [i for i in range(int(original_num_layers)) if i not in removed]
    neighbours: set[int] = set()
    for block in removed:
        below = [i for i in kept if i < block]
        above = [i for i in kept if i > block]
        if below:
            neighbours.add(below[-1])
        if above:
            neighbours.add(above[0])
    return sorted(kept.index(i) for i in neighbours)


def healing_records(model_or_config: Any) -> list[dict]:
    """The healing entries of a model's pruning record (oldest first); empty for a model never healed."""
    record = pruning_record(model_or_config) or {}
    return copy.deepcopy(list(record.get(HEALING_KEY, [])))


# --------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class _Settings:
    mode: str
    rank: int | None
    alpha: float | None
    dropout: float | None
    target_modules: tuple[str, ...] | None
    seed: int

    @classmethod
    def checked(cls, mode: Any, rank: Any, alpha: Any, dropout: Any, target_modules: Any, seed: Any) -> _Settings:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got mode={mode!r}")
        if mode == "adjacent":
            given = {name: value for name, value in
                     (("rank", rank), ("alpha", alpha), ("dropout", dropout), ("target_modules", target_modules))
                     if value is not None}
            if given:
                name, value = next(iter(given.items()))
                raise ValueError(
                    f"{name} applies only to mode='lora', got {name}={value!r} with mode='adjacent' "
                    "(which trains whole blocks, without adapters); leave it out or pass mode='lora'"
                )
        else:
            rank = DEFAULT_RANK if rank is None else check_int(rank, "rank", what="a positive int (the LoRA rank)")
            alpha = DEFAULT_ALPHA if alpha is None else check_real(
                alpha, "alpha", low=0.0, low_inclusive=False, what="a number > 0 (LoRA scales its update by alpha / rank)")
            dropout = DEFAULT_DROPOUT if dropout is None else check_real(
                dropout, "dropout", low=0.0, high=1.0, high_inclusive=False, what="a number in [0, 1) (LoRA dropout)")
            if target_modules is not None:
                if isinstance(target_modules, (str, bytes)) or not isinstance(target_modules, Iterable):
                    raise ValueError(
                        f"target_modules must be a list of module names (e.g. ['q_proj', 'v_proj']) or None for "
                        f"every linear layer of the blocks, got target_modules={target_modules!r}"
                    )
                target_modules = tuple(target_modules)
                if not target_modules or not all(isinstance(t, str) and t for t in target_modules):
                    raise ValueError(
                        f"target_modules must be a non-empty list of module names (e.g. ['q_proj', 'v_proj']), "
                        f"got target_modules={target_modules!r}"
                    )
        return cls(mode, rank, alpha, dropout, target_modules, check_int(seed, "seed", low=0))


def _linear_layers_of_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Full name -> module of every linear layer inside the decoder blocks (``nn.Linear`` or GPT-2's ``Conv1D``)."""
    from transformers.pytorch_utils import Conv1D

    prefix = architecture_of(model).layers_path
    layers = {}
    for index, block in enumerate(decoder_layers(model)):
        for name, module in block.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)):
                layers[f"{prefix}.{index}.{name}"] = module
    return layers


def _features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    rows, columns = module.weight.shape  # transformers' Conv1D stores (in, out)
    return rows, columns


def _lora_targets(model: nn.Module, settings: _Settings) -> dict[str, nn.Module]:
    """The linear layers LoRA adapts, checked against ``target_modules`` and the rank."""
    layers = _linear_layers_of_blocks(model)
    leaf_names = sorted({name.rpartition(".")[2] for name in layers})
    if settings.target_modules is None:
        targets = layers
    else:
        unknown = [t for t in settings.target_modules if t not in leaf_names]
        if unknown:
            raise ValueError(
                f"target_modules={list(settings.target_modules)!r} names {unknown[0]!r}, which is not a linear layer "
                f"of the decoder blocks; the blocks' linear layers are {leaf_names}"
            )
        wanted = set(settings.target_modules)
        targets = {name: m for name, m in layers.items() if name.rpartition(".")[2] in wanted}
    if not targets:
        raise ValueError(f"the decoder blocks of this {model.config.model_type} model have no linear layer for LoRA")
    narrowest = min(targets, key=lambda name: min(_features(targets[name])))
    fan_in, fan_out = _features(targets[narrowest])
    if settings.rank > min(fan_in, fan_out):
        raise ValueError(
            f"rank={settings.rank} does not fit: the target module {narrowest.rpartition('.')[2]!r} maps {fan_in} to "
            f"{fan_out} features, so a LoRA update of it has rank at most {min(fan_in, fan_out)}; pass "
            f"rank <= {min(fan_in, fan_out)}, or leave that module out of target_modules"
        )
    return targets


def _final_norms(model: nn.Module) -> dict[str, nn.Module]:
    """The normalisation layers that follow the blocks: children of the module holding them, named for a norm."""
    owner_path = architecture_of(model).layers_path.rpartition(".")[0]
    owner = model.get_submodule(owner_path)
    return {
        f"{owner_path}.{name}": module
        for name, module in owner.named_children()
        if "norm" in type(module).__name__.lower() or "norm" in name.lower() or name in ("ln_f",)
    }


def _record_of(model: nn.Module) -> dict:
    record = pruning_record(model)
    if record is None:
        raise ValueError(
            "healing recovers what pruning lost, but this model has no pruning record (config.lorp_pruning): prune it "
            "first (prune_layers, LoRPPruneCallback or `lorp prune`); for plain fine-tuning, fit a LoRPModule"
        )
    try:
        original = int(record["original_num_layers"])
        pruned = [int(i) for i in record["pruned_layers"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"config.{RECORD_ATTRIBUTE}={record!r} is not a pruning record written by lorp_lightning") from error
    if original - len(pruned) != len(decoder_layers(model)):
        raise ValueError(
            f"config.{RECORD_ATTRIBUTE} says {original} - {len(pruned)} blocks remain, but the model has "
            f"{len(decoder_layers(model))}; the record is stale"
        )
    return record


def _check_dtype(model: nn.Module, settings: _Settings) -> None:
    if settings.mode == "adjacent":
        low = sorted({str(p.dtype) for p in model.parameters() if p.dtype in (torch.bfloat16, torch.float16)})
        if low:
            raise ValueError(
                f"mode='adjacent' trains the block weights themselves, which are {', '.join(low)} here: AdamW updates "
                "smaller than their precision would be lost. Heal a float32 model (model.float()), or use mode='lora' "
                "(float32 adapters on a frozen low-precision model)"
            )


# --------------------------------------------------------------------------- one healing


@dataclass
class _Healing:
    """What one healing changed in the model, to undo the freezing and merge the adapters at the end."""

    settings: _Settings
    requires_grad: dict[str, bool]
    trainable: list[str]
    target_modules: list[str] | None
    trained_blocks: list[int] | None
    num_trainable_parameters: int
    start_step: int
    tuner: Any = None
    distillation: dict | None = None
    tokens: int = 0
    losses: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)


def _check(model: nn.Module, settings: _Settings) -> dict:
    """Every check that needs the model, before anything changes; returns the pruning record."""
    record = _record_of(model)
    _check_dtype(model, settings)
    if settings.mode == "lora":
        _lora_targets(model, settings)
        _peft()
    return record


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            f"healing with LoRA adapters needs peft: pip install 'lorp_lightning[heal]' ({error}); or heal with "
            "mode='adjacent'"
        ) from error
    check_version("peft")
    return peft


def _begin(model: nn.Module, settings: _Settings, start_step: int) -> _Healing:
    """Freeze the model and add what trains: LoRA adapters, or the blocks next to the removed ones."""
    record = _check(model, settings)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    tuner, targets, trained_blocks = None, None, None
    if settings.mode == "lora":
        from peft import LoraConfig, LoraModel

        targets = _lora_targets(model, settings)
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(targets), bias="none")
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's notes on the config it fills in
            torch.manual_seed(settings.seed)  # the adapters' random initialisation
            tuner = LoraModel(model, config, _ADAPTER)  # injects into `model` itself and freezes the rest
        tuner._cast_adapter_dtype(_ADAPTER, autocast_adapter_dtype=True)  # float32 adapters on a bf16/fp16 model
    else:
        trained_blocks = blocks_next_to_removed(record["original_num_layers"], record["pruned_layers"])
        prefix = architecture_of(model).layers_path
        modules = [f"{prefix}.{i}" for i in trained_blocks] + list(_final_norms(model))
        trainable_ids = {id(p) for path in modules for p in model.get_submodule(path).parameters()}
        head = model.get_output_embeddings()
        if head is not None:
            trainable_ids |= {id(p) for p in head.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable_ids)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    count = sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
    leaf_names = None if targets is None else sorted({name.rpartition(".")[2] for name in targets})
    return _Healing(settings, requires_grad, trainable, leaf_names, trained_blocks, count, start_step, tuner)


def _end(model: nn.Module, healing: _Healing, num_steps: int, completed: bool, run: dict[str, Any] | None = None) -> dict:
    """Merge the adapters (LoRA), restore what was trainable, and add the healing to the pruning record."""
    if healing.tuner is not None:
        with torch.no_grad():
            healing.tuner.merge_and_unload(safe_merge=True)
    for name, p in model.named_parameters():
        p.requires_grad_(healing.requires_grad.get(name, True))
    losses = healing.losses
    tenth = max(1, len(losses) // 10)
    settings = healing.settings
    entry = {
        "mode": settings.mode,
        "rank": settings.rank,
        "alpha": settings.alpha,
        "dropout": settings.dropout,
        "target_modules": healing.target_modules,
        "trained_blocks": healing.trained_blocks,
        "num_trainable_parameters": healing.num_trainable_parameters,
        "num_steps": int(num_steps),
        "tokens": healing.tokens,
        "initial_loss": sum(losses[:tenth]) / tenth if losses else None,
        "final_loss": sum(losses[-tenth:]) / tenth if losses else None,
        "seconds": time.perf_counter() - healing.started,
        "completed": bool(completed),
        "seed": settings.seed,
        "distillation": copy.deepcopy(healing.distillation),
        **copy.deepcopy(run or {}),  # what heal() adds about its run: the data and the optimizer's settings
    }
    record = copy.deepcopy(pruning_record(model))
    record[HEALING_KEY] = list(record.get(HEALING_KEY, [])) + [entry]
    setattr(model.config, RECORD_ATTRIBUTE, record)
    return entry


def _checked_teacher(teacher: Any, mode: str) -> nn.Module | str | None:
    """The ``teacher`` argument, checked for what needs no model."""
    if teacher is None or isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, str):
        if teacher != "dense":
            raise ValueError(f"teacher must be a causal LM, 'dense' (the student with its removed blocks put back) or "
                             f"None, got teacher={teacher!r}; to use a model by name, load it first (load_model)")
        if mode != "lora":
            raise ValueError(
                f"teacher='dense' runs the student with its adapters off as the dense model, which needs mode='lora' "
                f"(the kept blocks' own weights frozen); mode={mode!r} trains them, so pass the dense model as a "
                "separate teacher"
            )
        return teacher
    raise TypeError(f"teacher must be a causal LM (nn.Module), 'dense' or None, got {type(teacher).__name__}")


# --------------------------------------------------------------------------- the callback


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
    record: ``config.lorp_pruning["healing"]`` (see ``healing_records``).

    Checkpoints written during healing hold the adapters unmerged, and resuming a healing from
    them is not supported: save the healed model after ``fit`` (``save_pretrained``).

    Args:
        mode: ``"lora"`` (default) or ``"adjacent"``.
        rank: LoRA rank (``"lora"`` only; default 8).
        alpha: LoRA alpha; the update is scaled by alpha / rank (``"lora"`` only; default 16).
        dropout: LoRA dropout (``"lora"`` only; default 0).
        target_modules: names of the linear layers of the blocks that get adapters, e.g.
            ``["q_proj", "v_proj"]`` (``"lora"`` only; default None: every linear layer of every block).
        seed: seed of the adapters' random initialisation.
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
        mode: str = "lora",
        rank: int | None = None,
        alpha: float | None = None,
        dropout: float | None = None,
        target_modules: Sequence[str] | None = None,
        seed: int = 0,
        verbose: bool = True,
        model: ModelLocation = "model",
        teacher: nn.Module | str | None = None,
        teacher_tokenizer: Any = None,
        temperature: float | None = None,
        lm_weight: float | None = None,
    ) -> None:
        self.settings = _Settings.checked(mode, rank, alpha, dropout, target_modules, seed)
        self.verbose = verbose
        self.model = check_model_location(model, type(self).__name__)
        self.teacher = _checked_teacher(teacher, self.settings.mode)
        if teacher is None:
            given = {name: value for name, value in (("teacher_tokenizer", teacher_tokenizer), ("temperature", temperature),
                                                     ("lm_weight", lm_weight)) if value is not None}
            if given:
                name, value = next(iter(given.items()))
                raise ValueError(f"{name} applies only to distillation, got {name}={value!r} without a teacher; pass "
                                 "teacher='dense' or the dense model, or leave it out")
        if teacher == "dense" and teacher_tokenizer is not None:
            raise ValueError("teacher_tokenizer applies to a separate teacher model; teacher='dense' is the student "
                             "itself, with its own tokenizer: leave teacher_tokenizer out")
        self.teacher_tokenizer = teacher_tokenizer
        self.temperature = 1.0 if temperature is None else _check_temperature(temperature)
        self.lm_weight = 0.0 if lm_weight is None else _check_lm_weight(lm_weight)
        self.records: list[dict] = []
        self._run: dict[str, Any] = {}  # heal() describes its run here, for the record
        self._healing: _Healing | None = None
        self._prune_callback: LoRPPruneCallback | None = None
        self._dense: SavedStack | None = None  # teacher="dense": the stack before the pruning, removed blocks and all
        self._distillation: Distillation | None = None
        self._pl_module: pl.LightningModule | None = None
        self._asked_teacher: bool | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.settings.mode, rank=self.settings.rank)

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
                raise RuntimeError(f"LoRPHealCallback.{name}: this callback has no teacher; pass "
                                   "LoRPHealCallback(teacher='dense' or the dense model)")
            raise RuntimeError(f"LoRPHealCallback.{name}: no healing is running (it runs from the setup of fit, or "
                               "from the pruning in the middle of fit, to the end of fit); check callback.healing first")
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
        if self._prune_callback is None:
            self._check_ready(model)
            self._begin(trainer, pl_module)  # before the strategy builds the optimizers and the DDP wrapper
        else:  # the checks that do not need the pruning, now rather than in the middle of fit
            _check_dtype(model, self.settings)
            if self.settings.mode == "lora":
                _lora_targets(model, self.settings)
                _peft()

    def _causal_lm(self, pl_module: pl.LightningModule) -> nn.Module:
        return get_causal_lm(pl_module, self.model, type(self).__name__)

    def _save_dense(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """teacher='dense': save the stack before a LoRPPruneCallback of this Trainer prunes (references, no copy)."""
        if self._dense is not None:
            return
        if not any(isinstance(cb, LoRPPruneCallback) and cb.plan is None for cb in trainer.callbacks):
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
        check_teacher(model, self.teacher, device=trainer.strategy.root_device,
                      tokenizer=getattr(pl_module, "tokenizer", None), teacher_tokenizer=self.teacher_tokenizer)

    def _pending_prune(self, trainer: pl.Trainer) -> LoRPPruneCallback | None:
        """The Trainer's LoRPPruneCallback that will prune during this fit, checked to run before this callback."""
        callbacks = list(trainer.callbacks)
        pending = [cb for cb in callbacks if isinstance(cb, LoRPPruneCallback) and cb.plan is None]
        if not pending:
            return None
        prune = pending[0]
        if prune.prune_on != "validation_end":
            return None  # it prunes at the end of fit or of predict: not during this fit
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
        _check(model, self.settings)

    # ------------------------------------------------------------------ healing

    def _begin(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.inference_mode(False):  # adapters made inside an evaluation loop must be ordinary tensors
            model = self._causal_lm(pl_module)
            if self.teacher == "dense":  # before the adapters go in: a mismatch leaves the model as it was
                check_dense_stack(model, self._dense)
            self._healing = _begin(model, self.settings, trainer.global_step)
            model.to(pl_module.device)
        if self.teacher is not None:
            self._start_distillation(pl_module, model)
        if self.verbose:
            healing = self._healing
            what = (f"LoRA rank {self.settings.rank} on {', '.join(healing.target_modules)}" if self.settings.mode == "lora"
                    else f"blocks {healing.trained_blocks}, the final norm and the head")
            loss = "" if healing.distillation is None else f", distilled from the teacher {healing.distillation['teacher']}"
            rank_zero_info(f"LoRPHealCallback: healing {what}: {healing.num_trainable_parameters / 1e6:.2f} M trainable "
                           f"parameters{loss}")

    def _start_distillation(self, pl_module: pl.LightningModule, model: nn.Module) -> None:
        """Build the teacher, and hand it to a LoRPModule, whose training_step then distils."""
        if self.teacher == "dense":
            distillation = Distillation.dense_student(model, self._dense, self._healing.tuner,
                                                      temperature=self.temperature, lm_weight=self.lm_weight)
        else:
            distillation = Distillation.from_model(self.teacher, temperature=self.temperature, lm_weight=self.lm_weight)
        distillation.start()
        self._distillation, self._pl_module, self._asked_teacher = distillation, pl_module, None
        self._healing.distillation = distillation.record()
        if isinstance(pl_module, LoRPModule):
            pl_module.distillation = distillation

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Right after the LoRPPruneCallback before this one pruned in the middle of fit.
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
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._healing is not None:
            loss = _step_loss(outputs)
            if loss is not None:
                self._healing.losses.append(loss)
            input_ids, _ = model_inputs(batch, pl_module.device)
            self._healing.tokens += int(input_ids.numel())
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
            entry = _end(self._causal_lm(pl_module), healing, trainer.global_step - healing.start_step, completed, self._run)
        self.records.append(entry)
        if self.verbose:
            kind = "" if entry["distillation"] is None else " (distillation)"
            losses = (f"; training loss{kind} {entry['initial_loss']:.3f} -> {entry['final_loss']:.3f}"
                      if entry["initial_loss"] is not None else "")
            rank_zero_info(f"LoRPHealCallback: healed for {entry['num_steps']} steps{losses}; merged into the weights")

    # ------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"records": copy.deepcopy(self.records)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = copy.deepcopy(list(state_dict.get("records", [])))


# --------------------------------------------------------------------------- the function


WARMUP = 0.05
"""Fraction of the healing run over which the learning rate rises linearly to ``lr``."""

FINAL_LR_FRACTION = 0.1
"""The cosine decay ends at this fraction of ``lr``."""


def learning_rate_factor(progress: float) -> float:
    """The multiple of ``lr`` at ``progress`` in [0, 1] of a healing run: linear warm-up over the
    first 5%, then a cosine decay from 1 to 0.1."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < WARMUP:
        return progress / WARMUP
    decay = (progress - WARMUP) / (1.0 - WARMUP)
    return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * decay))


class _HealingModule(LoRPModule):
    """LoRPModule with AdamW under ``learning_rate_factor``, over ``steps`` or ``max_seconds``.

    The progress of the run is the larger of the share of the steps done and the share of the
    time spent, so a run cut by ``max_seconds`` still warms up and decays over the time it has.
    """

    def __init__(self, model: Any, tokenizer: Any, lr: float, weight_decay: float, steps: int,
                 budget: _TimeBudget | None) -> None:
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


class LossCurve(Callback):
    """The training loss of every step of ``fit``, in ``losses`` (a list of floats).

        curve = LossCurve()
        heal(model, tokenizer, steps=200, trainer_options={"callbacks": [curve]})
        curve.losses   # one float per step
    """

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = _step_loss(outputs)
        if loss is not None:
            self.losses.append(loss)


def _step_loss(outputs: Any) -> float | None:
    """The loss a ``training_step`` returned (a tensor, or a dict with ``"loss"``), as a float; None without one."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else None


class _TimeBudget(Callback):
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
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
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
            ``["q_proj", "v_proj"]`` (``"lora"`` only; default None: every linear layer of every block).
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
    settings = _Settings.checked(mode, rank, alpha, dropout, target_modules, seed)
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
    callback = LoRPHealCallback(mode, rank, alpha, dropout, target_modules, seed=seed, verbose=False, teacher=teacher,
                                teacher_tokenizer=teacher_tokenizer, temperature=temperature, lm_weight=lm_weight)
    _check(model, settings)
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
    budget = None if max_seconds is None else _TimeBudget(max_seconds)
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

"""The settings of a healing, each rule written once: what trains and on which loss (``HealingSettings``, with its
``DistillationSettings``), and ``heal``'s own training run (``TrainingSettings``).

``LoRPHealCallback`` and ``heal`` take these objects (``settings=``, ``training=``) or their fields as keywords,
and build and check them once, frozen. The LoRA settings come either as the four plain fields (``rank``,
``alpha``, ``dropout``, ``target_modules``) or as a peft ``LoraConfig`` (``lora=``), whose other options (rsLoRA,
DoRA, the initialisation, ...) then reach peft as given. A field made with ``option`` carries its help text, from
which ``lorp heal`` makes its flag: a new option is one field here, and the one place that reads it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

from torch import nn

from lorp_lightning._io import to_json
from lorp_lightning._validation import ParameterError, check_choice, check_int, check_real, option, with_keywords
from lorp_lightning._versions import check_version
from lorp_lightning.evaluation import check_window
from lorp_lightning.healing.schedule import WARMUP, learning_rate_factor

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_DROPOUT",
    "DEFAULT_LR",
    "DEFAULT_RANK",
    "DISTILLATION_KEYWORDS",
    "MODES",
    "DistillationSettings",
    "HealingSettings",
    "TrainingSettings",
    "check_lm_weight",
    "check_temperature",
    "peft",
    "split_keywords",
]

MODES = ("lora", "adjacent")
"""The ways to heal: LoRA adapters on every block, or full training of the blocks next to the removed ones."""

DEFAULT_RANK = 8
DEFAULT_ALPHA = 16.0
DEFAULT_DROPOUT = 0.0
DEFAULT_LR = {"lora": 1e-3, "adjacent": 1e-4}
"""Learning rate ``heal`` uses when none is given, per mode (see ``docs/healing.md`` for how they were chosen)."""

# LoraConfig options that would leave something other than a plain Hugging Face model after the
# merge (a second trained copy of a module, trained biases), that choose the adapted layers
# another way than target_modules over the decoder blocks, or that freeze the adapters
# (inference_mode): refused, with their default.
_REFUSED_LORA_OPTIONS = {
    "inference_mode": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "layers_pattern": None,
    "exclude_modules": None,
    "bias": "none",
    "trainable_token_indices": None,
    "layer_replication": None,
    "target_parameters": None,
}
# LoraConfig fields that are not settings of the adapters (bookkeeping), or that this module reads itself.
_NOT_OPTIONS = {
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
}


def peft():
    """The peft package (the ``heal`` extra), within the version bounds whose private API is used."""
    try:
        import peft as module
    except ImportError as error:
        raise ImportError(
            f"healing with LoRA adapters needs peft: pip install 'lorp_lightning[heal]' ({error}); or heal with mode='adjacent'"
        ) from error
    check_version("peft")
    return module


def check_temperature(value: Any) -> float:
    """The distillation temperature, a number > 0, as a float (the rule of ``DistillationSettings`` and of
    ``distillation_loss``)."""
    return check_real(
        value, "temperature", low=0.0, low_inclusive=False, what="a number > 0 (1: the distributions as the models give them)"
    )


def check_lm_weight(value: Any) -> float:
    """The share of the next-token loss in the distillation loss, a number in [0, 1], as a float."""
    return check_real(
        value, "lm_weight", low=0.0, high=1.0, what="a number in [0, 1] (the share of the next-token loss; 0: pure distillation)"
    )


@dataclass(frozen=True)
class DistillationSettings:
    """How a healing distils from a teacher instead of training on the next-token loss (see ``distillation_loss``).

    Attributes:
        teacher: a causal LM with the student's vocabulary (typically the dense model), or ``"dense"``: the student
            itself with its removed blocks put back and its adapters off (``LoRPHealCallback`` only, ``mode="lora"``).
        teacher_tokenizer: the teacher's tokenizer, compared with the student's (optional).
        temperature: the distillation temperature tau > 0 (1: the distributions as the models give them).
        lm_weight: the share of the next-token loss mixed into the distillation loss, in [0, 1] (0: pure distillation).
        teacher_name: the teacher's name in the healing record (default: its config's ``_name_or_path``).
    """

    teacher: Any
    teacher_tokenizer: Any = None
    temperature: float = option(1.0, "with a teacher: the distillation temperature, > 0")
    lm_weight: float = option(
        0.0, "with a teacher: the share of the next-token loss mixed into the distillation loss, in [0, 1] (0: pure distillation)"
    )
    teacher_name: str | None = None

    def __post_init__(self) -> None:
        teacher = self.teacher
        if isinstance(teacher, str) and teacher != "dense":
            raise ParameterError(
                "teacher",
                f"teacher must be a causal LM, 'dense' (the student with its removed blocks put "
                f"back) or None, got teacher={teacher!r}; to use a model by name, load it first "
                "(load_model)",
            )
        if not isinstance(teacher, (str, nn.Module)):
            raise TypeError(f"teacher must be a causal LM (nn.Module), 'dense' or None, got {type(teacher).__name__}")
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        object.__setattr__(self, "lm_weight", check_lm_weight(self.lm_weight))
        if teacher == "dense":
            for name in ("teacher_tokenizer", "teacher_name"):
                if getattr(self, name) is not None:
                    raise ParameterError(
                        name,
                        f"{name} applies to a separate teacher model; teacher='dense' is the student "
                        f"itself, with its own tokenizer and name: leave {name} out",
                    )
        if self.teacher_name is not None and not (isinstance(self.teacher_name, str) and self.teacher_name):
            raise ParameterError(
                "teacher_name", f"teacher_name must be a non-empty str or None, got teacher_name={self.teacher_name!r}"
            )

    @classmethod
    def of(cls, teacher: Any = None, **keywords: Any) -> DistillationSettings | None:
        """The settings of the keywords ``LoRPHealCallback`` and ``heal`` take (a keyword None is not given); None
        without a teacher, where any of the others is refused."""
        given = {name: value for name, value in keywords.items() if value is not None}
        if teacher is None:
            if given:
                name, value = next(iter(given.items()))
                raise ParameterError(
                    name,
                    f"{name} applies only to distillation, got {name}={value!r} without a "
                    "teacher; pass teacher='dense' or the dense model, or leave it out",
                )
            return None
        return cls(teacher, **given)


DISTILLATION_KEYWORDS = ("teacher", "teacher_tokenizer", "temperature", "lm_weight", "teacher_name")
"""The fields of ``DistillationSettings``, which the callback and the recipes also take as keywords."""


@dataclass(frozen=True)
class HealingSettings:
    """The checked settings of one healing: what trains, and on which loss. ``LoRPHealCallback`` and ``heal`` take
    either one of these (``settings=``) or its fields as keywords, and build and check it once.

        settings = HealingSettings(rank=16, distillation=DistillationSettings("dense"))
        LoRPHealCallback(settings=settings)

    Attributes:
        mode: ``"lora"`` (LoRA adapters on every block, merged at the end) or ``"adjacent"`` (the blocks next to the
            removed ones, the final norm and the head train).
        rank: the LoRA rank (``"lora"`` only; default 8).
        alpha: LoRA alpha; the update is scaled by alpha / rank (``"lora"`` only; default 16).
        dropout: LoRA dropout (``"lora"`` only; default 0).
        target_modules: names of the blocks' linear layers that get adapters, e.g. ``("q_proj", "v_proj")``
            (``"lora"`` only; default None: every linear layer of every block but the routers of MoE blocks).
        seed: the adapters' initialisation (and ``heal``'s order of the windows).
        lora: a peft ``LoraConfig`` instead of the four LoRA settings, whose other options (rsLoRA, DoRA, ...) then
            reach peft as given.
        distillation: ``DistillationSettings``, or None (default): the next-token loss.

    ``rank``, ``alpha``, ``dropout`` and ``target_modules`` are None for ``mode="adjacent"``; given a LoRA config,
    they are its own.
    """

    mode: str = option(
        "lora",
        "lora: adapters on every block, merged at the end; adjacent: train the blocks next to "
        "the removed ones, the final norm and the head (needs float32 weights)",
        choices=MODES,
    )
    rank: int | None = option(None, f"the LoRA rank (default: {DEFAULT_RANK})")
    alpha: float | None = option(None, f"LoRA alpha; the update is scaled by alpha/rank (default: {DEFAULT_ALPHA:g})")
    dropout: float | None = option(None, f"LoRA dropout, in [0, 1) (default: {DEFAULT_DROPOUT:g})")
    target_modules: tuple[str, ...] | None = option(
        None, "the blocks' linear layers that get adapters, e.g. q_proj,v_proj (default: all)", separator=","
    )
    seed: int = option(0, "the adapters' initialisation and the order of the training windows")
    lora: Any = None
    distillation: DistillationSettings | None = None

    def __post_init__(self) -> None:
        mode = check_choice(self.mode, "mode", MODES)
        seed = check_int(self.seed, "seed", low=0)
        plain = {
            name: getattr(self, name)
            for name in ("rank", "alpha", "dropout", "target_modules")
            if getattr(self, name) is not None
        }
        if self.distillation is not None and not isinstance(self.distillation, DistillationSettings):
            raise TypeError(f"distillation must be a DistillationSettings or None, got {type(self.distillation).__name__}")
        if self.teacher == "dense" and mode != "lora":
            raise ParameterError(
                "teacher",
                f"teacher='dense' runs the student with its adapters off as the dense model, "
                f"which needs mode='lora' (the kept blocks' own weights frozen); mode={mode!r} "
                "trains them, so pass the dense model as a separate teacher",
            )
        if mode == "adjacent":
            if plain or self.lora is not None:
                name, value = next(iter(plain.items())) if plain else ("lora", self.lora)
                raise ParameterError(
                    name,
                    f"{name} applies only to mode='lora', got {name}={value!r} with mode='adjacent' "
                    "(which trains whole blocks, without adapters); leave it out or pass mode='lora'",
                )
            values: dict[str, Any] = dict(rank=None, alpha=None, dropout=None, target_modules=None)
        elif isinstance(self.lora, _Checked):  # a copy (dataclasses.replace) of settings made from a LoraConfig
            values = _from_lora_config(self.lora.config)
            for name, value in plain.items():
                if value != values[name]:
                    raise ParameterError(
                        name,
                        f"{name}={value!r} differs from the LoRA config's {values[name]!r}: set "
                        "r, lora_alpha, lora_dropout or target_modules in the LoraConfig",
                    )
        elif self.lora is not None:
            if plain:
                name, value = next(iter(plain.items()))
                raise ParameterError(
                    name,
                    f"pass the LoRA settings either as lora=LoraConfig(...) or as rank, alpha, "
                    f"dropout and target_modules, not both: got lora and {name}={value!r}; set r, "
                    "lora_alpha, lora_dropout or target_modules in the LoraConfig",
                )
            values = _from_lora_config(self.lora)
        else:
            values = dict(
                rank=DEFAULT_RANK if self.rank is None else check_int(self.rank, "rank", what="a positive int (the LoRA rank)"),
                alpha=DEFAULT_ALPHA
                if self.alpha is None
                else check_real(
                    self.alpha,
                    "alpha",
                    low=0.0,
                    low_inclusive=False,
                    what="a number > 0 (LoRA scales its update by alpha / rank)",
                ),
                dropout=DEFAULT_DROPOUT
                if self.dropout is None
                else check_real(
                    self.dropout, "dropout", low=0.0, high=1.0, high_inclusive=False, what="a number in [0, 1) (LoRA dropout)"
                ),
                target_modules=_checked_targets(self.target_modules, "target_modules"),
            )
        for name, value in dict(mode=mode, seed=seed, **values).items():
            object.__setattr__(self, name, value)

    @classmethod
    def checked(
        cls,
        mode: Any = "lora",
        rank: Any = None,
        alpha: Any = None,
        dropout: Any = None,
        target_modules: Any = None,
        seed: Any = 0,
        lora: Any = None,
        distillation: Any = None,
    ) -> HealingSettings:
        """``HealingSettings(...)`` by position, in the order of ``LoRPHealCallback``'s first arguments."""
        return cls(mode, rank, alpha, dropout, target_modules, seed, lora, distillation)

    @classmethod
    def of(cls, settings: HealingSettings | None, **keywords: Any) -> HealingSettings:
        """``settings`` with the keywords given (those not None) in place of its own, or the settings of the keywords
        alone: how the callback and the recipes accept ``settings=`` as well as keywords. The keywords of
        ``DistillationSettings`` (``teacher``, ``temperature``, ...) set its distillation."""
        distill = {name: keywords.pop(name) for name in DISTILLATION_KEYWORDS if keywords.get(name) is not None}
        given = {name: value for name, value in keywords.items() if value is not None}
        if distill:
            current = None if settings is None else settings.distillation
            if current is not None and "teacher" not in distill:
                given["distillation"] = replace(current, **distill)
            else:
                given["distillation"] = DistillationSettings.of(**distill)
        if isinstance(settings, cls) and given.get("mode", settings.mode) != settings.mode:
            # the other mode: the LoRA settings were the old mode's
            settings = replace(settings, mode=given["mode"], rank=None, alpha=None, dropout=None, target_modules=None, lora=None)
        return with_keywords(cls, settings, given)

    @property
    def needs_float32(self) -> bool:
        """Whether the model's own weights train (``mode="adjacent"``), which needs float32 weights: AdamW's updates
        smaller than bfloat16's or float16's precision would be lost (LoRA trains float32 adapters on any weights)."""
        return self.mode == "adjacent"

    @property
    def teacher(self) -> Any:
        """The distillation's teacher, or None."""
        return None if self.distillation is None else self.distillation.teacher

    def lora_config(self, targets: Iterable[str]) -> Any:
        """The peft ``LoraConfig`` of the adapters on ``targets`` (full module names)."""
        LoraConfig = peft().LoraConfig
        if self.lora is None:
            return LoraConfig(
                r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(targets), bias="none"
            )
        config = copy.deepcopy(self.lora.config)
        config.target_modules = set(targets)
        return config

    def lora_options(self) -> dict[str, Any] | None:
        """The options of the user's ``LoraConfig`` other than its defaults and the four settings, for the record,
        as strict JSON (``_io.to_json``: a non-finite number is null, a value JSON lacks its text); None without one."""
        if self.lora is None:
            return None
        given, default = self.lora.config.to_dict(), type(self.lora.config)().to_dict()
        options = {
            name: value for name, value in sorted(given.items()) if name not in _NOT_OPTIONS and value != default.get(name)
        }
        return json.loads(to_json(options, indent=None))  # the package's strict JSON, as every record and report


@dataclass(frozen=True)
class TrainingSettings:
    """The checked settings of ``heal``'s own training run (a callback in your Trainer takes its run from you):

        heal(pruned, tokenizer, training=TrainingSettings(steps=300, lr=5e-4))   # or heal(..., steps=300, lr=5e-4)

    Attributes:
        steps: optimizer steps (>= 1).
        lr: the peak learning rate; None (default): ``DEFAULT_LR`` of the mode (1e-3 for LoRA, 1e-4 for
            ``"adjacent"``).
        weight_decay: AdamW's weight decay (>= 0).
        window: tokens per training window.
        batch_size: windows per step.
        warmup: the share of the run over which the learning rate rises linearly to ``lr`` (default 0.05; 0: none).
        num_windows: how many calibration windows to draw (None: all).
        max_seconds: a wall-clock budget for the training (None: ``steps`` alone); see ``heal``.

    ``heal`` records every field in the healing record (``config.lorp_pruning["healing"]``), and ``lorp heal`` has a
    flag for each field with help text.
    """

    steps: int = option(200, "optimizer steps")
    lr: float | None = option(None, "the peak learning rate (default: 1e-3 for lora, 1e-4 for adjacent)")
    weight_decay: float = option(0.0, "AdamW's weight decay")
    window: int = option(256, "tokens per training window")
    batch_size: int = option(4, "training windows per step")
    warmup: float = option(
        WARMUP, "the share of the run over which the learning rate rises linearly to its peak, in [0, 1) (0: no warm-up)"
    )
    num_windows: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        checked = dict(
            steps=check_int(self.steps, "steps", what="a positive int (optimizer steps; steps=0 would train nothing)"),
            lr=None if self.lr is None else check_real(self.lr, "lr", low=0.0, low_inclusive=False, what="a number > 0"),
            weight_decay=check_real(self.weight_decay, "weight_decay", low=0.0, what="a number >= 0"),
            window=check_window(self.window),
            batch_size=check_int(self.batch_size, "batch_size"),
            warmup=check_real(self.warmup, "warmup", low=0.0, high=1.0, high_inclusive=False, what="a number in [0, 1)"),
            num_windows=check_int(self.num_windows, "num_windows", none_ok=True),
            max_seconds=None
            if self.max_seconds is None
            else check_real(
                self.max_seconds, "max_seconds", low=0.0, low_inclusive=False, what="a number of seconds > 0, or None"
            ),
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    def learning_rate_factor(self, progress: float) -> float:
        """The multiple of the peak learning rate at ``progress`` in [0, 1] of this run (``schedule.learning_rate_factor``:
        a linear warm-up, then a cosine decay)."""
        return learning_rate_factor(progress, warmup=self.warmup)

    @classmethod
    def of(cls, settings: TrainingSettings | None, **keywords: Any) -> TrainingSettings:
        """As ``HealingSettings.of``: ``settings`` with the keywords given (not None) in its place, or the keywords'."""
        return with_keywords(cls, settings, keywords, name="training")


def split_keywords(keywords: dict[str, Any], owner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``keywords`` as (those of ``HealingSettings`` and ``DistillationSettings``, those of ``TrainingSettings``); a
    keyword of neither is a TypeError naming ``owner``, as Python names an unexpected keyword argument."""
    healing_names = {f.name for f in fields(HealingSettings)} | set(DISTILLATION_KEYWORDS)
    training_names = {f.name for f in fields(TrainingSettings)}
    for name in keywords:
        if name not in healing_names | training_names:
            raise TypeError(f"{owner} got an unexpected keyword argument {name!r}")
    return ({k: v for k, v in keywords.items() if k in healing_names}, {k: v for k, v in keywords.items() if k in training_names})


def _from_lora_config(lora: Any) -> dict[str, Any]:
    if not isinstance(lora, peft().LoraConfig):
        raise TypeError(f"lora must be a peft LoraConfig or None, got {type(lora).__name__}")
    for name, default in _REFUSED_LORA_OPTIONS.items():
        value = getattr(lora, name, default)
        if value != default and not (default is None and not value):
            raise ValueError(
                f"lora.{name}={value!r} is not supported by healing, which trains adapters on the linear layers of the "
                f"decoder blocks and merges them into a plain Hugging Face model; leave it at {default!r}"
            )
    targets = lora.target_modules
    if isinstance(targets, str):
        if targets != "all-linear":
            raise ValueError(
                f"lora.target_modules={targets!r} is a regular expression, which healing does not read; "
                "pass a list of the blocks' linear layer names (e.g. ['q_proj', 'v_proj']), "
                "'all-linear' or None"
            )
        targets = None
    rank = check_int(lora.r, "lora.r", what="a positive int (the LoRA rank)")
    alpha = check_real(lora.lora_alpha, "lora.lora_alpha", low=0.0, low_inclusive=False, what="a number > 0")
    dropout = check_real(
        lora.lora_dropout, "lora.lora_dropout", low=0.0, high=1.0, high_inclusive=False, what="a number in [0, 1)"
    )
    targets = (
        None
        if targets is None
        else _checked_targets(sorted(targets) if isinstance(targets, set) else targets, "lora.target_modules")
    )
    return dict(rank=rank, alpha=float(alpha), dropout=float(dropout), target_modules=targets, lora=_Checked(copy.deepcopy(lora)))


@dataclass(frozen=True)
class _Checked:
    """A user's LoraConfig once checked and copied (so that ``replace`` on the settings does not check it again
    against the four settings it filled in)."""

    config: Any


def _checked_targets(target_modules: Any, name: str) -> tuple[str, ...] | None:
    if target_modules is None:
        return None
    if isinstance(target_modules, (str, bytes)) or not isinstance(target_modules, Iterable):
        raise ValueError(
            f"{name} must be a list of module names (e.g. ['q_proj', 'v_proj']) or None for "
            f"every linear layer of the blocks, got {name}={target_modules!r}"
        )
    target_modules = tuple(target_modules)
    if not target_modules or not all(isinstance(t, str) and t for t in target_modules):
        raise ValueError(
            f"{name} must be a non-empty list of module names (e.g. ['q_proj', 'v_proj']), got {name}={target_modules!r}"
        )
    return target_modules

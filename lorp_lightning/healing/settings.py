"""The settings of a healing: the mode, the LoRA adapters, the seed, and the teacher argument.

One checked, frozen ``HealingSettings`` is what ``LoRPHealCallback`` and ``heal`` both take their
keyword arguments into, so the rules of the arguments are written once. The LoRA settings come
either as the four plain arguments (``rank``, ``alpha``, ``dropout``, ``target_modules``) or as a
peft ``LoraConfig`` (``lora=``), whose other options (rsLoRA, DoRA, the initialisation, ...) then
reach peft as given.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from lorp_lightning._io import to_json
from lorp_lightning._validation import check_choice, check_int, check_real
from lorp_lightning._versions import check_version

__all__ = ["DEFAULT_ALPHA", "DEFAULT_DROPOUT", "DEFAULT_LR", "DEFAULT_RANK", "MODES", "HealingSettings", "peft"]

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
    "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None,
    "bias": "none", "trainable_token_indices": None, "layer_replication": None, "target_parameters": None,
}
# LoraConfig fields that are not settings of the adapters (bookkeeping), or that this module reads itself.
_NOT_OPTIONS = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "r", "lora_alpha", "lora_dropout", "target_modules"}


def peft():
    """The peft package (the ``heal`` extra), within the version bounds whose private API is used."""
    try:
        import peft as module
    except ImportError as error:
        raise ImportError(
            f"healing with LoRA adapters needs peft: pip install 'lorp_lightning[heal]' ({error}); or heal with "
            "mode='adjacent'"
        ) from error
    check_version("peft")
    return module


@dataclass(frozen=True)
class HealingSettings:
    """The checked settings of one healing (see ``LoRPHealCallback`` for each argument).

    ``rank``, ``alpha``, ``dropout`` and ``target_modules`` are None for ``mode="adjacent"``;
    ``target_modules`` None means every linear layer of every block but the routers of MoE blocks. ``lora`` is the user's
    ``LoraConfig``, when one was given, whose other options peft applies.
    """

    mode: str
    rank: int | None
    alpha: float | None
    dropout: float | None
    target_modules: tuple[str, ...] | None
    seed: int
    lora: Any = None

    @classmethod
    def checked(cls, mode: Any = "lora", rank: Any = None, alpha: Any = None, dropout: Any = None,
                target_modules: Any = None, seed: Any = 0, lora: Any = None) -> HealingSettings:
        check_choice(mode, "mode", MODES)
        plain = {name: value for name, value in
                 (("rank", rank), ("alpha", alpha), ("dropout", dropout), ("target_modules", target_modules))
                 if value is not None}
        if mode == "adjacent":
            if plain or lora is not None:
                name, value = next(iter(plain.items())) if plain else ("lora", lora)
                raise ValueError(
                    f"{name} applies only to mode='lora', got {name}={value!r} with mode='adjacent' "
                    "(which trains whole blocks, without adapters); leave it out or pass mode='lora'"
                )
            return cls(mode, None, None, None, None, check_int(seed, "seed", low=0))
        if lora is not None:
            if plain:
                name, value = next(iter(plain.items()))
                raise ValueError(f"pass the LoRA settings either as lora=LoraConfig(...) or as rank, alpha, dropout and "
                                 f"target_modules, not both: got lora and {name}={value!r}; set r, lora_alpha, "
                                 "lora_dropout or target_modules in the LoraConfig")
            return cls._from_lora_config(lora, check_int(seed, "seed", low=0))
        rank = DEFAULT_RANK if rank is None else check_int(rank, "rank", what="a positive int (the LoRA rank)")
        alpha = DEFAULT_ALPHA if alpha is None else check_real(
            alpha, "alpha", low=0.0, low_inclusive=False, what="a number > 0 (LoRA scales its update by alpha / rank)")
        dropout = DEFAULT_DROPOUT if dropout is None else check_real(
            dropout, "dropout", low=0.0, high=1.0, high_inclusive=False, what="a number in [0, 1) (LoRA dropout)")
        target_modules = _checked_targets(target_modules, "target_modules")
        return cls(mode, rank, alpha, dropout, target_modules, check_int(seed, "seed", low=0))

    @classmethod
    def _from_lora_config(cls, lora: Any, seed: int) -> HealingSettings:
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
                raise ValueError(f"lora.target_modules={targets!r} is a regular expression, which healing does not read; "
                                 "pass a list of the blocks' linear layer names (e.g. ['q_proj', 'v_proj']), "
                                 "'all-linear' or None")
            targets = None
        rank = check_int(lora.r, "lora.r", what="a positive int (the LoRA rank)")
        alpha = check_real(lora.lora_alpha, "lora.lora_alpha", low=0.0, low_inclusive=False, what="a number > 0")
        dropout = check_real(lora.lora_dropout, "lora.lora_dropout", low=0.0, high=1.0, high_inclusive=False,
                             what="a number in [0, 1)")
        targets = None if targets is None else _checked_targets(sorted(targets) if isinstance(targets, set) else targets,
                                                                "lora.target_modules")
        return cls("lora", rank, float(alpha), float(dropout), targets, seed, copy.deepcopy(lora))

    def lora_config(self, targets: Iterable[str]) -> Any:
        """The peft ``LoraConfig`` of the adapters on ``targets`` (full module names)."""
        LoraConfig = peft().LoraConfig
        if self.lora is None:
            return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(targets),
                              bias="none")
        config = copy.deepcopy(self.lora)
        config.target_modules = set(targets)
        return config

    def lora_options(self) -> dict[str, Any] | None:
        """The options of the user's ``LoraConfig`` other than its defaults and the four settings, for the record,
        as strict JSON (``_io.to_json``: a non-finite number is null, a value JSON lacks its text); None without one."""
        if self.lora is None:
            return None
        given, default = self.lora.to_dict(), type(self.lora)().to_dict()
        options = {name: value for name, value in sorted(given.items()) if name not in _NOT_OPTIONS and value != default.get(name)}
        return json.loads(to_json(options, indent=None))  # the package's strict JSON, as every record and report


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


def checked_teacher(teacher: Any, mode: str) -> nn.Module | str | None:
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

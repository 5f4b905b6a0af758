"""Checks of arguments shared by the whole package (private to it).

One integer rule: an int, NumPy ints included, never a bool (``True`` is not a block count or an
index here). One real-number rule: a finite int or float, never a bool. The checks raise a
ValueError that names the parameter and the value, in one shape:
``"<name> must be <what>, got <name>=<value>"``; the error is a ``ParameterError``, whose
``.parameter`` names the parameter to a caller that has other names for it (the command line's
flags), so that no caller rewrites a message's text.

    steps = check_int(steps, "steps", what="a positive int (optimizer steps)")
    seed = check_int(seed, "seed", low=0)                           # "seed must be an int >= 0, got seed=-1"
    lr = check_real(lr, "lr", low=0.0, low_inclusive=False, what="a number > 0")
    mode = check_choice(mode, "mode", MODES)                         # "mode must be one of 'lora', 'adjacent', got mode='x'"
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import field, replace
from typing import Any

import numpy as np

__all__ = [
    "ParameterError",
    "check_choice",
    "check_int",
    "check_real",
    "is_integer",
    "is_real",
    "option",
    "tagged",
    "with_keywords",
]


class ParameterError(ValueError):
    """A bad argument: a ValueError that also says which parameter it is about (``.parameter``).

    raise ParameterError("rounds", f"rounds must be between 1 and the {k} blocks to prune, got rounds={rounds!r}")
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def tagged(error: Exception, parameter: str) -> Exception:
    """``error`` (of a kind that is not a ValueError: a FileNotFoundError, a FileExistsError) with ``.parameter`` set,
    as a ``ParameterError`` has it."""
    error.parameter = parameter
    return error


def is_integer(value: Any) -> bool:
    """An integer that is not a bool (``True`` is not a block count or an index here); numpy ints count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """A finite real number that is not a bool; NumPy scalars count."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _refuse(name: str, value: Any, what: str) -> ParameterError:
    return ParameterError(name, f"{name} must be {what}, got {name}={value!r}")


def check_int(value: Any, name: str, *, low: int = 1, none_ok: bool = False, what: str | None = None) -> int | None:
    """``value`` as an int if it is an integer >= ``low`` (or None, with ``none_ok``), else a ValueError.

    ``what`` says what is expected; by default "a positive int" (``low=1``) or "an int >= low",
    with " or None" when None is accepted.
    """
    if value is None and none_ok:
        return None
    if not is_integer(value) or value < low:
        if what is None:
            what = ("a positive int" if low == 1 else f"an int >= {low}") + (" or None" if none_ok else "")
        raise _refuse(name, value, what)
    return int(value)


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    low_inclusive: bool = True,
    high: float | None = None,
    high_inclusive: bool = True,
    what: str,
) -> float:
    """``value`` as a float if it is a finite real within the bounds given, else a ValueError saying ``what``."""
    ok = is_real(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        raise _refuse(name, value, what)
    return float(value)


def check_choice(value: Any, name: str, choices: Sequence[Any], *, also: str = "") -> Any:
    """``value`` if it is one of ``choices``, else a ValueError listing them (``also`` adds what else is accepted,
    e.g. ``" or a callable"``, for a caller that took that case first)."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value asked of a dict or set
        ok = False
    if not ok:
        raise _refuse(name, value, f"one of {', '.join(map(repr, choices))}{also}")
    return value


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A field of a settings dataclass (``HealingSettings``, ``PruneSettings``, ...) with its help text: the one place
    an option is described, from which the command line makes its flag (``cli._arguments.add_settings``: ``--name``,
    typed by the field; ``separator`` splits a list, ``parse`` reads the text, ``choices`` limits it)."""
    return field(default=default, metadata={"help": help, **metadata})


def with_keywords(cls: type, settings: Any, keywords: dict[str, Any], name: str = "settings") -> Any:
    """``settings`` (an instance of the frozen settings dataclass ``cls``, or None) with the keywords given (those not
    None) in place of its own, or ``cls`` of the keywords alone, checked by its ``__post_init__``: how the callbacks,
    the recipes and ``select_layers`` take ``settings=`` as well as keywords. ``name`` is the parameter's."""
    given = {key: value for key, value in keywords.items() if value is not None}
    if settings is None:
        return cls(**given)
    if not isinstance(settings, cls):
        raise TypeError(f"{name} must be a {cls.__name__} or None, got {type(settings).__name__}")
    return replace(settings, **given) if given else settings

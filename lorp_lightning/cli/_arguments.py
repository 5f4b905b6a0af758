"""The command line's shared argument types and groups, and its one error, ``UsageError``."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

from lorp_lightning.selection import is_budget, parse_budget

DEFAULT_MODEL = "smollm2-135m"


MODEL_HELP = (
    "a bundled name (smollm2-135m, gemma3-270m, qwen2.5-0.5b; qwen2.5-1.5b once installed by setup.sh --large), "
    "a local Hugging Face model directory, "
    "a .gguf file, or a hub id org/name (read from the Hugging Face cache; with HF_HUB_OFFLINE=1 from "
    "the cache only)"
)


DTYPES = ("auto", "bfloat16", "float16", "float32")


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2.

    ``parameter``: the library's name of the parameter the error is about (a ``ParameterError``'s, through
    ``UsageError.of``), which ``main`` shows as the command's own flag before the message (``flags``).
    """

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter

    @classmethod
    def of(cls, error: Exception) -> UsageError:
        """The library's error as a usage error: its message as it is, and the parameter it names, if it names one."""
        return cls(str(error), getattr(error, "parameter", None))


def flags(parser: argparse.ArgumentParser, renamed: dict[str, str] | None = None) -> dict[str, str]:
    """The one table from a library parameter to the command's argument: the parameter is an argument's ``dest``
    (``num_clusters`` -> ``--num-clusters``), or ``renamed`` maps it to one (``{"steps": "heal_steps"}``); a
    positional argument shows as its metavar (``PLAN``)."""
    shown = {}
    for action in parser._actions:  # argparse keeps no public list of a parser's arguments
        if action.dest != "help":
            shown[action.dest] = action.option_strings[-1] if action.option_strings else (action.metavar or action.dest.upper())
    return {**shown, **{parameter: shown[dest] for parameter, dest in (renamed or {}).items()}}


def checked_number(convert, accept, expected: str, name: str | None = None):
    """An argparse ``type``: ``convert(text)``, refused unless ``accept(value)`` with "expected
    <expected>" (or "<name> must be <expected>" when ``name`` is given)."""
    refusal = f"{name} must be {expected}" if name else f"expected {expected}"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{refusal}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{refusal}, got {text!r}")
        return value

    return parse


# A budget as the library reads it (selection.parse_budget, then is_budget): "3" is 3 blocks, "0.25" a quarter of
# them, and "3.0", a float that is no fraction, is refused as the callback refuses it.
fraction_or_count = checked_number(parse_budget, is_budget, "a fraction in (0, 1) or a block count >= 1", name="amount")


positive_int = checked_number(int, lambda v: v >= 1, "a positive integer")


non_negative_int = checked_number(int, lambda v: v >= 0, "an integer >= 0")


positive_float = checked_number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


unit_float = checked_number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def add_stability(parser: argparse.ArgumentParser, what: str) -> None:
    """``--stability B``: plan stability over B bootstrap resamples of the calibration windows (``lorp_lightning.stability``)."""
    from lorp_lightning.stability import MAX_RESAMPLES

    parser.add_argument(
        "--stability",
        metavar="B",
        type=checked_number(int, lambda v: 1 <= v <= MAX_RESAMPLES, f"an int from 1 to {MAX_RESAMPLES:,}", name="B"),
        help=f"also select {what} on B bootstrap resamples of the calibration windows and report how often each block "
        'is removed and how often the plan stays the same (stability.png, and report.json\'s "stability"); the '
        "resamples reuse the per-window statistics, so methods that read the statistics alone run no forward pass "
        "(default: off)",
    )


def add_common(parser: argparse.ArgumentParser, out_default: str | None) -> None:
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights' dtype for calibration and evaluation (default: auto, bfloat16 on a CPU that runs it "
        "natively and float32 on one that does not, where bf16 is several times slower)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the model computes: cpu (default), cuda, cuda:N, or auto (accelerate's device_map='auto': "
        "the blocks spread over the visible GPUs; the CPU when there is none)",
    )
    parser.add_argument("--out", default=out_default, help=f"output directory (default: {out_default})")
    parser.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_calibration(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text",
        default="wiki",
        help="calibration text: a bundled name (wiki, c4, tinystories, lambada) or a UTF-8 text file, cut into "
        "documents at blank lines; only its calibration split is read (about 4 documents in 5, by the "
        "hash rule of lorp_lightning.data), from its first window on (default: wiki)",
    )
    parser.add_argument("--windows", type=positive_int, default=32, help="calibration windows (default: 32)")
    parser.add_argument("--window", type=positive_int, default=512, help="tokens per window (default: 512)")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="calibration batch size (default: 4)")
    parser.add_argument("--stats", help="reuse statistics saved by `lorp analyze` (stats.pt) instead of calibrating")


def add_evaluation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--eval-text",
        default="wiki",
        help="held-out text for perplexity: a bundled name (its held-out split) or a text file (all of it; "
        "of the --text file, its held-out split only) (default: wiki)",
    )
    parser.add_argument(
        "--eval-windows", type=positive_int, default=40, help="evaluation windows of --window tokens (default: 40)"
    )
    parser.add_argument(
        "--speed-repeats", type=positive_int, default=5, help="repeats of the interleaved speed runs (default: 5)"
    )
    parser.add_argument(
        "--prompt-tokens", type=positive_int, default=512, help="prompt length for prefill latency (default: 512)"
    )
    parser.add_argument(
        "--new-tokens",
        type=positive_int,
        default=64,
        help="tokens generated with the KV cache for decode throughput (default: 64)",
    )


def add_settings(parser: argparse.ArgumentParser, settings: type) -> None:
    """One flag for each field of a settings dataclass that has help text (``healing.settings.option``): ``--name``
    (underscores as dashes), typed as the field, with the field's choices, and default None so that the settings'
    own default applies (the help says which). The settings' checks refuse a bad value, named by its flag."""
    for field in dataclasses.fields(settings):
        if "help" not in field.metadata:
            continue
        flag, shown = f"--{field.name.replace('_', '-')}", "" if field.default is None else f" (default: {field.default})"
        kind = field.type.split(" | ")[0].split("[")[0]  # "int | None" -> int; "tuple[str, ...] | None" -> tuple
        if kind == "bool":  # a switch: given, True; absent, the settings' default
            parser.add_argument(
                flag, dest=field.name, action="store_const", const=True, default=None, help=field.metadata["help"]
            )
            continue
        convert = _worded(field.metadata.get("parse") or {"int": int, "float": float, "str": str, "tuple": str}[kind])
        if "separator" in field.metadata:
            separator = field.metadata["separator"]

            def convert(text: str, separator: str = separator) -> tuple[str, ...]:
                return tuple(part for part in text.split(separator) if part)

        parser.add_argument(
            flag,
            dest=field.name,
            type=convert,
            default=None,
            choices=field.metadata.get("choices"),
            help=field.metadata["help"] + shown,
        )


def _worded(parse: Any) -> Any:
    """``parse`` as an argparse ``type`` whose refusal says what was expected ("expected a number, got 'x'")."""
    if parse is str:
        return str

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an int' if parse is int else 'a number'}, got {text!r}") from None

    return convert


def settings_arguments(settings: type, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments that are fields of ``settings`` (a dataclass) and were given (not None)."""
    names = {field.name for field in dataclasses.fields(settings)}
    return {name: value for name, value in arguments.items() if name in names and value is not None}

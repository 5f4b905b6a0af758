"""What several commands of ``lorp`` do: load, calibrate, select, evaluate, heal, report."""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from lorp_lightning.cli._arguments import UsageError
from lorp_lightning.healing.settings import HealingSettings

COMMAND_LINE: ContextVar[str] = ContextVar("COMMAND_LINE", default="lorp")
"""The command line being run (``main`` sets it), which the model cards quote."""


def output_directory(path: str, overwrite: bool):
    """The command's output directory (see ``OutputDirectory``); one line if it exists."""
    from lorp_lightning._io import OutputDirectory

    try:
        return OutputDirectory(path, overwrite)
    except FileExistsError as error:
        raise UsageError(f"{error}; pass --overwrite to replace it or --out to choose another") from error


def check_model_first(model: str, *, windows: dict[str, int] | None = None, amounts=(), protect=None) -> None:
    """What the model's config alone refuses, before any weight loads (``assets.model_shape``): a model that
    cannot be found or a damaged ``.gguf`` file, each budget of ``amounts`` against the unprotected blocks, and
    each window length of ``windows`` (by its parameter, ``{"window": 512}``) against the model's longest context.
    A model whose config cannot be read without loading it is checked after it loads, as before."""
    from lorp_lightning.assets import model_shape
    from lorp_lightning.selection import protected_blocks, resolve_budget

    try:
        shape = model_shape(model)
        if shape is None:
            return
        N = shape.num_layers
        for amount in amounts:
            resolve_budget(amount, N, N - len(protected_blocks(protect, N)))
    except ValueError as error:
        raise UsageError.of(error) from error
    for name, length in (windows or {}).items():
        if shape.max_positions and length > shape.max_positions:
            raise UsageError(
                f"{name}={length} exceeds the longest context of {model}, {shape.max_positions} tokens "
                f"(max_position_embeddings in its config); pass at most {shape.max_positions}",
                name,
            )


def versions() -> dict[str, str]:
    import torch
    import transformers

    from lorp_lightning._versions import __version__

    return {"torch": torch.__version__, "transformers": transformers.__version__, "lorp_lightning": __version__}


def resolve_dtype(args) -> None:
    """Check ``--device`` and turn ``--dtype auto`` into a dtype, once per command, and say which and why on one line."""
    from lorp_lightning.assets import check_device, checkpoint_dtype, compute_device
    from lorp_lightning.precision import DtypeChoice, choose_dtype

    if not hasattr(args, "dtype"):  # a command that loads no model
        return
    try:
        args.device = check_device(args.device)
    except ValueError as error:
        raise UsageError.of(error) from error
    on = compute_device(args.device)
    if args.dtype == "auto" and getattr(args, "mode", None) is not None and HealingSettings(mode=args.mode).needs_float32:
        import torch

        choice = DtypeChoice(torch.float32, "auto: --mode adjacent trains the block weights, which needs float32")
    else:
        try:
            saved = checkpoint_dtype(args.model) if args.dtype == "auto" and on.startswith("cuda") else None
            choice = choose_dtype(args.dtype, device=on, checkpoint_dtype=saved)
        except ValueError as error:  # a bad LORP_DTYPE, or a model that cannot be found
            raise UsageError.of(error) from error
    args.dtype = choice.name
    print(choice)


def load(model: str, dtype: str, quiet: bool, device: str = "cpu"):
    from lorp_lightning.assets import load_model

    try:
        return load_model(model, dtype=dtype, progress=not quiet, device=device)
    except ValueError as error:
        raise UsageError.of(error) from error


def held_out_text(name_or_path: str, calibration: str | None = None) -> str:
    """The held-out text of ``--eval-text``: a bundled text's held-out split, or a whole file, except
    the file that is also the calibration ``--text``, of which only the held-out split is read."""
    from lorp_lightning.assets import BUNDLED_TEXTS, load_text
    from lorp_lightning.data import text_documents

    if name_or_path in BUNDLED_TEXTS:
        return load_text(name_or_path, "heldout")
    path = Path(name_or_path)
    if not path.is_file():
        raise UsageError(f"unknown evaluation text {name_or_path!r}: not a bundled text ({', '.join(BUNDLED_TEXTS)}) nor a file")
    if calibration is None or not Path(calibration).is_file() or Path(calibration).resolve() != path.resolve():
        return path.read_text(encoding="utf-8")
    documents = text_documents(name_or_path, "heldout")
    if not documents:
        raise UsageError(
            f"--eval-text {name_or_path!r} is also --text, and has no held-out documents to measure on "
            "(about 1 in 5 paragraphs is held out); give another --eval-text"
        )
    print(f"eval text: the held-out split of {name_or_path} ({len(documents)} documents), as it is also --text")
    return "\n\n".join(documents)


def check_calibration_text(text: str) -> None:
    """``--text`` checked before any model is loaded: a bundled name or a file with calibration documents."""
    from lorp_lightning.data import calibration_documents

    try:
        calibration_documents(text)
    except ValueError as error:
        raise UsageError.of(error) from error


def calibration_windows(tokenizer, text: str, window: int, count: int):
    """The first ``count`` windows of ``window`` tokens of the calibration split of ``text`` (--text)."""
    from lorp_lightning.data import calibration_windows as windows_of

    try:
        return windows_of(tokenizer, text, window=window, num_windows=count)
    except ValueError as error:  # no such text, shorter than one window, or fewer windows than asked
        raise UsageError.of(error) from error


def calibrate(
    model,
    tokenizer,
    *,
    stats_file: str | None,
    text: str,
    window: int,
    count: int,
    batch_size: int,
    quiet: bool,
    per_window: bool = False,
):
    """The statistics: read from ``stats_file`` (--stats), or one pass over the calibration windows; and its seconds.
    With ``per_window`` (--stability), each window's own sums too."""
    from lorp_lightning.stats import LayerStats, collect_layer_stats

    if stats_file:
        stats = LayerStats.load(stats_file)
        from lorp_lightning.architectures import decoder_layers

        if stats.num_layers != len(decoder_layers(model)):
            raise UsageError(
                f"--stats {stats_file} holds statistics of {stats.num_layers} blocks; the model has {len(decoder_layers(model))}"
            )
        if per_window and stats.per_window is None:
            raise UsageError(
                f"--stats {stats_file} holds no per-window statistics, which --stability resamples: write them with "
                "`lorp analyze --stability B`, or leave out --stats to calibrate here"
            )
        return stats, 0.0
    windows = calibration_windows(tokenizer, text, window, count)
    start = time.perf_counter()
    stats = collect_layer_stats(model, windows.split(batch_size), progress=not quiet, per_window=per_window)
    return stats, time.perf_counter() - start


def stability_reports(
    stats, amount, methods: list[str], resamples: int, *, seed: int, quiet: bool, plans=None, model=None, windows=None, **options
):
    """``plan_stability`` of each of ``methods`` at ``amount`` (--stability B); ``plans``: their full-data plans, where chosen."""
    from lorp_lightning.stability import plan_stability

    reports = []
    for method in methods:
        try:
            reports.append(
                plan_stability(
                    stats,
                    amount,
                    method,
                    resamples,
                    plan=(plans or {}).get(method),
                    model=model,
                    windows=windows,
                    seed=seed,
                    progress=not quiet,
                    **options,
                )
            )
        except ValueError as error:
            raise UsageError.of(error) from error
    return reports


def check_method(method: str) -> None:
    from lorp_lightning.methods import METHODS

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")


def select_plan(
    stats,
    amount,
    method,
    *,
    seed: int,
    quiet: bool,
    model=None,
    windows=None,
    num_clusters=None,
    compensate: bool = False,
    rounds: int = 1,
):
    """The plan of ``method``; a method that tries plans on the model checks them on ``windows``
    (the calibration windows of --text), the others read ``stats`` alone (with ``compensate``, the
    strength is checked on ``windows`` too; with ``rounds`` > 1, later rounds collect statistics on them)."""
    from lorp_lightning.methods import get_method, select_layers

    on_model = get_method(method).reads_model or compensate or rounds > 1
    try:
        return select_layers(
            stats,
            amount,
            method=method,
            num_clusters=num_clusters,
            seed=seed,
            model=model if on_model else None,
            windows=windows if on_model else None,
            progress=not quiet,
            compensate=compensate,
            rounds=rounds,
        )
    except ValueError as error:
        raise UsageError.of(error) from error


def windows_for_checks(methods: list[str], tokenizer, text: str, window: int, count: int, on_model: bool = False):
    """The calibration windows of --text, read once, if one of ``methods`` tries plans on the model (or
    ``on_model``: compensation checks its strength, or rounds collect statistics); else None."""
    from lorp_lightning.methods import get_method

    if not on_model and not any(get_method(method).reads_model for method in methods):
        return None
    return calibration_windows(tokenizer, text, window, count)


def stats_summary(stats, analysis_plan) -> dict[str, Any]:
    return {
        "num_layers": stats.num_layers,
        "num_tokens": stats.num_tokens,
        "num_sequences": stats.num_sequences,
        "rls": analysis_plan.rls,
        "num_clusters": analysis_plan.num_clusters,
        "labels": analysis_plan.labels,
    }


def held_out_windows(tokenizer, eval_text: str, text: str | None, window: int, count: int):
    """The held-out windows of ``eval_text`` (--eval-text; ``text`` is --text, whose held-out split alone
    is read when the two are one file), ``window`` tokens each, at most ``count``."""
    from lorp_lightning.evaluation import token_windows

    return token_windows(tokenizer, held_out_text(eval_text, text), window=window, max_windows=count)


@contextlib.contextmanager
def lightning_warnings_only():
    """Lightning's logger at WARNING inside the ``with`` block: no "GPU available: False" lines around a healing."""
    import logging

    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lightning_logger.setLevel(level)


def run_healing(model, tokenizer, quiet: bool, **options) -> tuple[dict, list[float]]:
    """heal(model, ...) with Lightning's progress bar (unless quiet); the healing record and the loss of every step."""

    from lorp_lightning.callbacks.heal import LossCurve
    from lorp_lightning.healing.record import healing_records
    from lorp_lightning.recipes.heal import heal  # the recipe, not this module's command of that name

    curve = LossCurve()
    try:
        with lightning_warnings_only():
            heal(model, tokenizer, progress=not quiet, trainer_options={"callbacks": [curve]}, **options)
    except ValueError as error:
        raise UsageError.of(error) from error
    return healing_records(model)[-1], curve.losses


def healing_line(record: dict, before, after) -> str:
    """One line: what trained, on how much text, for how long; training loss and held-out perplexity before and after."""
    what = f"LoRA rank {record['rank']}" if record["mode"] == "lora" else f"blocks {record['trained_blocks']}, final norm, head"
    distillation = record.get("distillation")
    how = "" if distillation is None else f" by distillation from {distillation['teacher']}"
    loss = "training loss" if distillation is None else "training loss (KL to the teacher)"
    line = (
        f"healed for {record['num_steps']} steps{how} ({what}; {record['tokens']} calibration tokens of {record['text']}, "
        f"{record['seconds']:.0f} s): {loss} {record['initial_loss']:.3f} -> {record['final_loss']:.3f}"
    )
    if before is None:
        return line

    def show(x: str | float) -> str:
        return x if isinstance(x, str) else f"{x:.2f}"

    return f"{line}; held-out perplexity {show(before)} -> {show(after)}"

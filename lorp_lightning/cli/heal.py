"""``lorp heal``: heal a pruned model by a short training run on calibration text, merge, save."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from lorp_lightning._io import write_json
from lorp_lightning.cli._arguments import (
    MODEL_HELP,
    UsageError,
    add_common,
    add_settings,
    non_negative_int,
    positive_float,
    positive_int,
    settings_arguments,
)
from lorp_lightning.cli._shared import (
    COMMAND_LINE,
    check_calibration_text,
    check_model_first,
    healing_line,
    held_out_windows,
    load,
    output_directory,
    run_healing,
    versions,
)
from lorp_lightning.healing.settings import DistillationSettings, HealingSettings, TrainingSettings
from lorp_lightning.model_card import write_model_card


def add_arguments(commands) -> argparse.ArgumentParser:
    """The ``heal`` sub-command's parser, added to ``commands`` (argparse's sub-parsers)."""
    parser = commands.add_parser("heal", help="heal a pruned model by a short training run on calibration text, merge, save")
    parser.add_argument("model", help="directory of a pruned model (the output of `lorp prune`)")
    parser.add_argument(
        "--text",
        default="wiki",
        help="training text: a bundled name (wiki, c4, tinystories, lambada) or a UTF-8 "
        "text file, cut into documents at blank lines; only its calibration split "
        "is used (default: wiki)",
    )
    parser.add_argument(
        "--max-minutes",
        type=positive_float,
        default=None,
        help="a wall-clock budget: training stops before a step that would overrun it, and the learning rate decays "
        "over it (default: none, --steps alone)",
    )
    parser.add_argument(
        "--teacher",
        metavar="MODEL",
        default=None,
        help=f"heal by distillation from this model (KL between its next-token distributions and the "
        f"student's) instead of the next-token loss: the dense model DIR was pruned from, or any "
        f"causal LM with the same tokenizer, loaded in --dtype on --device; {MODEL_HELP}",
    )
    parser.add_argument(
        "--eval-text",
        default="wiki",
        help="held-out text for perplexity before and after: a bundled name or a text file (default: wiki)",
    )
    parser.add_argument(
        "--eval-windows",
        type=non_negative_int,
        default=40,
        help="evaluation windows of --eval-window tokens; 0 skips the evaluation (default: 40)",
    )
    parser.add_argument("--eval-window", type=positive_int, default=512, help="tokens per evaluation window (default: 512)")
    parser.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=25,
        metavar="N",
        help="write a Lightning checkpoint of the run every N steps to OUT.checkpoints/last.ckpt, so that a killed "
        "run can go on with --resume; removed once the healed model is saved; 0 writes none (default: 25)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from OUT.checkpoints/last.ckpt, left by a run of this command with the same arguments that was "
        "killed; the healed model equals that of the run never stopped",
    )
    for settings in (HealingSettings, TrainingSettings, DistillationSettings):  # the flags of their options
        add_settings(parser, settings)
    add_common(parser, "DIR-healed")
    return parser


def heal(
    *,
    model: str,
    out: str,
    overwrite: bool,
    dtype: str,
    device: str,
    quiet: bool,
    text: str,
    max_minutes: float | None,
    teacher: str | None,
    eval_text: str,
    eval_windows: int,
    eval_window: int,
    checkpoint_every: int = 25,
    resume: bool = False,
    **options: Any,
) -> dict:
    """``lorp heal``: the pruned model in the directory ``model`` healed (``lorp_lightning.heal``; by distillation
    from ``teacher`` when given), measured before and after on ``eval_windows`` held-out windows (0: not measured),
    and saved with a report to ``out`` (``"DIR-healed"``: beside ``model``); the report. ``options``: the flags of
    the settings' options (``add_settings``), built into the settings objects once, which ``heal`` takes."""
    from lorp_lightning.evaluation import perplexity
    from lorp_lightning.surgery import pruning_record

    if out == "DIR-healed":
        out = f"{str(model).rstrip('/')}-healed"
    distillation = settings_arguments(DistillationSettings, options)
    if distillation and teacher is None:
        name, value = next(iter(distillation.items()))
        raise UsageError(f"--{name.replace('_', '-')} {value} is a setting of distillation; it needs --teacher MODEL")
    try:  # every setting checked before anything is loaded (the teacher's, once it is loaded)
        settings = HealingSettings(**settings_arguments(HealingSettings, options))
        training = TrainingSettings(**settings_arguments(TrainingSettings, options))
        if distillation:
            DistillationSettings(teacher="dense", **distillation)  # the teacher's own checks come once it is loaded
    except ValueError as error:
        raise UsageError.of(error) from error
    if settings.needs_float32 and dtype != "float32":
        raise UsageError(
            f"--mode adjacent trains the block weights themselves and needs --dtype float32 (in {dtype}, "
            "AdamW's small updates would be lost); or heal with --mode lora"
        )
    check_calibration_text(text)
    check_model_first(model, windows={"window": training.window, **({"eval_window": eval_window} if eval_windows else {})})
    checkpoints = Path(f"{str(out).rstrip('/')}.checkpoints") if checkpoint_every else None
    if resume and checkpoints is None:
        raise UsageError("--resume goes on from the checkpoints a run wrote; it cannot go with --checkpoint-every 0")
    last = None if checkpoints is None else checkpoints / "last.ckpt"
    if resume and not last.is_file():
        raise UsageError(f"--resume: there is no checkpoint to go on from, {last} does not exist")
    if not resume and last is not None and last.exists():
        raise UsageError(
            f"{last} holds a checkpoint of a run of this command that did not end: pass --resume to go on from it, "
            "or remove it to start afresh"
        )
    with output_directory(out, overwrite) as output:
        student, tokenizer = load(model, dtype, quiet, device)
        if pruning_record(student) is None:
            raise UsageError(
                f"{model} holds a model that was not pruned (no lorp_pruning record in its config); "
                "heal the output directory of `lorp prune`"
            )
        distill = {}
        if teacher is not None:  # loaded and checked before any evaluation or training
            from lorp_lightning.distillation import check_teacher

            teacher_model, teacher_tokenizer = load(teacher, dtype, quiet, device)
            try:
                check_teacher(student, teacher_model, tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer)
            except ValueError as error:
                raise UsageError(f"--teacher {teacher}: {error}") from error
            distill = {"teacher": teacher_model, "teacher_tokenizer": teacher_tokenizer, "teacher_name": teacher}
        held_out = before = after = None
        if eval_windows:
            held_out = held_out_windows(tokenizer, eval_text, text, eval_window, eval_windows)
            before = perplexity(student, held_out, progress=not quiet)
        record, losses = run_healing(
            student,
            tokenizer,
            quiet,
            text=text,
            settings=settings,
            training=training,
            max_seconds=None if max_minutes is None else 60 * max_minutes,
            checkpoint_dir=checkpoints,
            checkpoint_every=max(checkpoint_every, 1),
            resume=resume,
            **distillation,
            **distill,
        )
        if held_out is not None:
            after = perplexity(student, held_out, progress=not quiet)
        student.save_pretrained(output.path)
        tokenizer.save_pretrained(output.path)
        report = {
            "command": "heal",
            "model": model,
            "dtype": dtype,
            "device": device,
            "teacher": teacher,
            "healing": record,
            "losses": losses,
            "evaluation": None
            if held_out is None
            else {
                "text": eval_text,
                "split": "heldout",
                "windows": int(held_out.shape[0]),
                "window": eval_window,
                "perplexity_before": before,
                "perplexity_after": after,
            },
            "versions": versions(),
        }
        write_json(output.path / "report.json", report)
        write_model_card(output.path, report, COMMAND_LINE.get(), model)
    final = output.final
    if checkpoints is not None:  # the healed model is saved: the run's checkpoints have done their job
        shutil.rmtree(checkpoints, ignore_errors=True)
    print(healing_line(record, before, after))
    print(f"saved the healed model to {final} (report.json beside it)")
    return report

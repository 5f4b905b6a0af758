"""``lorp prune``: analyze, select, prune, save, and compare dense and pruned (optionally healed, or in rounds)."""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

from lorp_lightning._io import write_json
from lorp_lightning.cli._arguments import (
    DEFAULT_MODEL,
    MODEL_HELP,
    UsageError,
    add_calibration,
    add_common,
    add_evaluation,
    add_settings,
    add_stability,
    non_negative_int,
    settings_arguments,
    unit_float,
)
from lorp_lightning.cli._shared import (
    COMMAND_LINE,
    calibrate,
    check_calibration_text,
    check_method,
    check_model_first,
    healing_line,
    held_out_windows,
    lightning_warnings_only,
    load,
    output_directory,
    run_healing,
    select_plan,
    stability_reports,
    stats_summary,
    versions,
    windows_for_checks,
)
from lorp_lightning.evaluation import compare_models, comparison_table
from lorp_lightning.methods import PruneSettings
from lorp_lightning.model_card import write_model_card

RENAMED = {"num_prune": "amount", "steps": "heal_steps", "num_windows": "windows", "resamples": "stability"}
"""The library's parameters that are this command's arguments under other names (see ``_arguments.flags``)."""


def add_arguments(commands) -> argparse.ArgumentParser:
    """The ``prune`` sub-command's parser, added to ``commands`` (argparse's sub-parsers)."""
    parser = commands.add_parser("prune", help="analyze, select, prune, save, and evaluate dense against pruned")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    add_settings(parser, PruneSettings)  # --amount, --method, --num-clusters, --seed, --compensate, --rounds
    add_calibration(parser)
    add_evaluation(parser)
    add_stability(parser, "the plan of --method")
    parser.add_argument(
        "--heal-steps",
        type=non_negative_int,
        default=0,
        help="heal the pruned model for N steps (LoRA, on the calibration split of --text) before "
        "evaluating and saving it; see `lorp heal` (default: 0, no healing)",
    )
    parser.add_argument(
        "--distill",
        action="store_true",
        help="heal by distillation from the dense model just pruned (KL between its next-token "
        "distributions and the pruned model's; no second load) instead of the next-token loss; "
        "needs --heal-steps",
    )
    parser.add_argument(
        "--lm-weight",
        type=unit_float,
        default=None,
        help="with --distill: the share of the next-token loss mixed into the distillation loss, in "
        "[0, 1] (default: 0, pure distillation)",
    )
    add_common(parser, "pruned/MODEL-METHOD-AMOUNT")
    return parser


def prune(
    *,
    model: str,
    out: str,
    overwrite: bool,
    dtype: str,
    device: str,
    quiet: bool,
    text: str,
    windows: int,
    window: int,
    batch_size: int,
    stats: str | None,
    eval_text: str,
    eval_windows: int,
    speed_repeats: int,
    prompt_tokens: int,
    new_tokens: int,
    heal_steps: int,
    distill: bool,
    lm_weight: float | None,
    stability: int | None = None,
    **options: Any,
) -> dict:
    """``lorp prune``: the statistics, the plan of ``method`` for ``amount`` (compensated with ``compensate``,
    in ``rounds`` rounds), the pruned model (healed for
    ``heal_steps`` first, by distillation from the dense model with ``distill``), dense and pruned measured side
    by side, the pruned model and the report saved to ``out`` (``"pruned/MODEL-METHOD-AMOUNT"``: named from
    them); the report. ``options``: the flags of ``PruneSettings`` (``add_settings``), checked before anything is
    loaded."""
    settings = _checked_settings(options, heal_steps=heal_steps, distill=distill, lm_weight=lm_weight, text=text)
    if stability is not None and settings.rounds > 1:
        raise UsageError(f"--stability resamples one-shot plans; it cannot be combined with --rounds {settings.rounds}")
    check_model_first(model, windows={"window": window}, amounts=[settings.amount], protect=settings.protect)
    if out == "pruned/MODEL-METHOD-AMOUNT":
        out = f"pruned/{Path(model).name}-{settings.method}-{settings.amount}"
    with output_directory(out, overwrite) as output:
        timings = {}
        start = time.perf_counter()
        dense, tokenizer = load(model, dtype, quiet, device)
        timings["load_seconds"] = time.perf_counter() - start
        if settings.compensate:  # a family where no fold is exact: refused before the calibration pass
            from lorp_lightning.compensation import check_compensable

            try:
                check_compensable(dense)
            except ValueError as error:
                raise UsageError(f"--compensate: {error}") from error
        layer_stats, timings["calibration_seconds"] = calibrate(
            dense,
            tokenizer,
            stats_file=stats,
            text=text,
            window=window,
            count=windows,
            batch_size=batch_size,
            quiet=quiet,
            per_window=stability is not None,
        )
        analysis = select_plan(layer_stats, 1, "lorp", seed=settings.seed, quiet=quiet)
        on_model = settings.compensate or settings.rounds > 1
        calibration = windows_for_checks([settings.method], tokenizer, text, window, windows, on_model)
        held_out = held_out_windows(tokenizer, eval_text, text, window, eval_windows)
        teacher = {"teacher": dense, "teacher_name": model, "lm_weight": lm_weight} if distill else {}  # still in memory
        healing_options = dict(text=text, window=window, batch_size=batch_size, seed=settings.seed, **teacher)
        plan, pruned, healing = _pruned(
            dense, tokenizer, layer_stats, settings, calibration, held_out, heal_steps, healing_options, timings, quiet=quiet
        )
        start = time.perf_counter()
        metrics = compare_models(
            {"dense": dense, "pruned": pruned},
            held_out,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            repeats=speed_repeats,
            progress=not quiet,
        )
        timings["evaluation_seconds"] = time.perf_counter() - start
        reports = []
        if stability is not None:  # the plan's stability, before the files are written (on the dense model, as selected)
            from lorp_lightning.plots import save_stability_heatmap

            start = time.perf_counter()
            reports = stability_reports(
                layer_stats,
                settings.amount,
                [settings.method],
                stability,
                seed=settings.seed,
                quiet=quiet,
                plans={settings.method: plan},
                model=dense,
                windows=calibration,
                num_clusters=settings.num_clusters,
                protect=settings.protect,
            )
            timings["stability_seconds"] = time.perf_counter() - start
            save_stability_heatmap(reports, output.path / "stability.png", title=f"{model}: {stability} resamples")
        eval_setup = {"text": eval_text, "split": "heldout", "windows": int(held_out.shape[0]), "window": window}
        pruned.save_pretrained(output.path)
        tokenizer.save_pretrained(output.path)
        report = {
            "command": "prune",
            "model": model,
            "dtype": dtype,
            "device": device,
            "plan": plan.to_dict(),
            "calibration": {"text": text, "windows": windows, "window": window, "stats_file": stats},
            "statistics": stats_summary(layer_stats, analysis),
            "evaluation": eval_setup,
            "metrics": metrics,
            "timings": timings,
            "versions": versions(),
        }
        if healing is not None:
            report["healing"] = healing
        if reports:
            report["stability"] = reports[0].summary()
        write_json(output.path / "report.json", report)
        write_model_card(output.path, report, COMMAND_LINE.get(), model)
    _print_summary(plan, healing, metrics, output.final)
    for r in reports:
        print(r.describe())
    return report


def _checked_settings(
    options: dict[str, Any], *, heal_steps: int, distill: bool, lm_weight: float | None, text: str
) -> PruneSettings:
    """The selection's settings and the healing's flags, checked before anything is loaded."""
    if options.get("method") is not None:
        check_method(options["method"])
    try:
        settings = PruneSettings(**settings_arguments(PruneSettings, options))
    except ValueError as error:
        raise UsageError.of(error) from error
    if distill and not heal_steps:
        raise UsageError("--distill heals by distillation from the dense model, which needs --heal-steps N (N >= 1)")
    if lm_weight is not None and not distill:
        raise UsageError(f"--lm-weight {lm_weight} mixes the next-token loss into distillation; it needs --distill")
    if settings.rounds > 1 and heal_steps and heal_steps < settings.rounds:
        raise UsageError(
            f"--heal-steps {heal_steps} are split over the --rounds {settings.rounds}, each round healed after its "
            f"pruning: give each round at least one (--heal-steps >= {settings.rounds})"
        )
    if heal_steps:  # healing trains on --text's calibration split, also when --stats spares the calibration
        check_calibration_text(text)
    return settings


def _pruned(
    dense,
    tokenizer,
    layer_stats,
    settings: PruneSettings,
    calibration,
    held_out,
    heal_steps: int,
    healing_options: dict[str, Any],
    timings: dict[str, float],
    *,
    quiet: bool,
) -> tuple[Any, Any, dict | None]:
    """The plan, the pruned copy of ``dense`` and its healing (None without ``heal_steps``): in rounds each healed
    before the next (``--rounds R --heal-steps N``), or selected, pruned, then healed; the seconds of each part in
    ``timings``."""
    from lorp_lightning.surgery import prune_layers

    start = time.perf_counter()
    if settings.rounds > 1 and heal_steps:  # progressive: each round healed before the next is selected
        pruned = copy.deepcopy(dense)
        plan, healing = _prune_and_heal(
            pruned,
            tokenizer,
            layer_stats,
            settings.amount,
            settings.method,
            quiet=quiet,
            rounds=settings.rounds,
            steps=heal_steps,
            windows=calibration,
            compensate=settings.compensate,
            num_clusters=settings.num_clusters,
            **healing_options,
        )
        timings["selection_seconds"] = plan.cost["seconds"]
        timings["heal_seconds"] = sum(record["seconds"] for record in healing["records"])
        timings["prune_seconds"] = time.perf_counter() - start - timings["selection_seconds"] - timings["heal_seconds"]
        return plan, pruned, healing
    plan = select_plan(
        layer_stats,
        settings.amount,
        settings.method,
        seed=settings.seed,
        quiet=quiet,
        model=dense,
        compensate=settings.compensate,
        rounds=settings.rounds,
        windows=calibration,
        num_clusters=settings.num_clusters,
    )
    timings["selection_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    pruned = prune_layers(dense, plan, inplace=False)
    timings["prune_seconds"] = time.perf_counter() - start
    healing = None
    if heal_steps:
        healing = _heal_pruned(pruned, tokenizer, held_out, quiet=quiet, steps=heal_steps, **healing_options)
        timings["heal_seconds"] = healing["record"]["seconds"]
    return plan, pruned, healing


def _print_summary(plan, healing: dict | None, metrics: dict[str, dict[str, Any]], final: Path) -> None:
    """What ``lorp prune`` prints at the end: the plan, each healing, dense against pruned, and where it saved."""
    print(plan)
    if healing is not None and "records" in healing:  # one healing per round
        for r, record in enumerate(healing["records"], 1):
            after = metrics["pruned"]["perplexity"] if r == len(healing["records"]) else None
            print(f"round {r}: " + healing_line(record, None, after))
    elif healing is not None:
        print(healing_line(healing["record"], healing["perplexity_before_healing"], metrics["pruned"]["perplexity"]))
    print(comparison_table(metrics))
    print(f"saved the pruned model to {final} (report.json beside it)")


def _heal_pruned(pruned, tokenizer, eval_windows, *, quiet: bool, **healing) -> dict:
    """`lorp prune --heal-steps N [--distill]`: the pruned model's perplexity on ``eval_windows``, then
    ``heal(pruned, tokenizer, **healing)`` (LoRA on the calibration text, by the next-token loss or, with a
    ``teacher``, by distillation)."""
    from lorp_lightning.evaluation import perplexity

    before = perplexity(pruned, eval_windows, progress=not quiet)
    record, losses = run_healing(pruned, tokenizer, quiet, **healing)
    return {"record": record, "losses": losses, "perplexity_before_healing": before}


def _prune_and_heal(model, tokenizer, stats, amount, method, *, quiet: bool, **options) -> tuple[Any, dict]:
    """`lorp prune --rounds R --heal-steps N`: ``healing.prune_and_heal`` (Lightning's progress bar unless quiet); the
    plan, and the healing records of the rounds with the loss of every step."""

    from lorp_lightning.callbacks.heal import LossCurve
    from lorp_lightning.healing.record import healing_records
    from lorp_lightning.recipes.prune_and_heal import prune_and_heal

    curve = LossCurve()
    before = len(healing_records(model))
    try:
        with lightning_warnings_only():
            plan = prune_and_heal(
                model,
                tokenizer,
                stats,
                amount,
                method=method,
                progress=not quiet,
                trainer_options={"callbacks": [curve]},
                **options,
            )
    except ValueError as error:
        raise UsageError.of(error) from error
    return plan, {"records": healing_records(model)[before:], "losses": curve.losses}

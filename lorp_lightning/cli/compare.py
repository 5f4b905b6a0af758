"""``lorp compare``: every method at every budget, from one calibration pass, by held-out perplexity."""

from __future__ import annotations

import argparse

from lorp_lightning._io import write_json
from lorp_lightning.cli._arguments import (
    DEFAULT_MODEL,
    MODEL_HELP,
    UsageError,
    add_calibration,
    add_common,
    fraction_or_count,
    positive_int,
)
from lorp_lightning.cli._shared import (
    calibrate,
    check_method,
    check_model_first,
    held_out_windows,
    load,
    output_directory,
    select_plan,
    stats_summary,
    versions,
    windows_for_checks,
)

RENAMED = {"num_prune": "amounts", "num_windows": "windows"}
"""The library's parameters that are this command's arguments under other names (see ``_arguments.flags``)."""


def add_arguments(commands) -> argparse.ArgumentParser:
    """The ``compare`` sub-command's parser, added to ``commands`` (argparse's sub-parsers)."""
    parser = commands.add_parser("compare", help="every method at every budget, from one calibration pass")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    parser.add_argument("--amounts", default="0.125,0.25,0.33", help="comma-separated budgets (default: 0.125,0.25,0.33)")
    parser.add_argument(
        "--methods",
        default=",".join(COMPARED),
        help=f"comma-separated methods (default: {','.join(COMPARED)}; sleb, left out, checks about 4x as "
        "many plans as lorp_search)",
    )
    parser.add_argument("--seed", type=int, default=0)
    add_calibration(parser)
    parser.add_argument("--eval-text", default="wiki")
    parser.add_argument("--eval-windows", type=positive_int, default=40)
    add_common(parser, "lorp-compare")
    return parser


COMPARED = ("lorp_search", "lorp", "lorp_checked", "ppl", "shortgpt", "streamline", "angular", "random", "last")


def compare(
    *,
    model: str,
    out: str,
    overwrite: bool,
    dtype: str,
    device: str,
    quiet: bool,
    amounts: str,
    methods: str,
    seed: int,
    text: str,
    windows: int,
    window: int,
    batch_size: int,
    stats: str | None,
    eval_text: str,
    eval_windows: int,
) -> dict:
    """``lorp compare``: every method of ``methods`` at every budget of ``amounts`` (comma-separated), from one
    calibration pass, by held-out perplexity; a report and a picture written to ``out``; the report."""
    from lorp_lightning.evaluation import perplexity
    from lorp_lightning.plots import save_perplexity_by_budget
    from lorp_lightning.surgery import prune_layers

    method_names = [m for m in methods.split(",") if m]
    for method in method_names:
        check_method(method)
    budgets = [_fraction_or_count_or_usage(a) for a in amounts.split(",") if a]
    check_model_first(model, windows={"window": window}, amounts=budgets)
    with output_directory(out, overwrite) as output:
        dense, tokenizer = load(model, dtype, quiet, device)
        layer_stats, seconds = calibrate(
            dense, tokenizer, stats_file=stats, text=text, window=window, count=windows, batch_size=batch_size, quiet=quiet
        )
        check_windows = windows_for_checks(method_names, tokenizer, text, window, windows)
        held_out = held_out_windows(tokenizer, eval_text, text, window, eval_windows)
        dense_ppl = perplexity(dense, held_out)
        rows = []
        for amount in budgets:
            for method in method_names:
                plan = select_plan(layer_stats, amount, method, seed=seed, quiet=quiet, model=dense, windows=check_windows)
                pruned = prune_layers(dense, plan, inplace=False)
                rows.append(
                    {
                        "amount": amount,
                        "method": method,
                        "pruned": plan.pruned,
                        "num_pruned": len(plan.pruned),
                        "perplexity": perplexity(pruned, held_out),
                    }
                )
                del pruned
        analysis = select_plan(layer_stats, 1, "lorp", seed=seed, quiet=quiet)
        report = {
            "command": "compare",
            "model": model,
            "dtype": dtype,
            "device": device,
            "dense_perplexity": dense_ppl,
            "calibration": {"text": text, "windows": windows, "window": window, "seconds": seconds},
            "statistics": stats_summary(layer_stats, analysis),
            "evaluation": {"text": eval_text, "split": "heldout", "windows": int(held_out.shape[0]), "window": window},
            "results": rows,
            "versions": versions(),
        }
        write_json(output.path / "report.json", report)
        save_perplexity_by_budget(
            rows, dense_ppl, output.path / "perplexity.png", title=model, ylabel=f"held-out perplexity ({eval_text})"
        )
    final = output.final
    print(f"{model}: dense perplexity {dense_ppl:.2f} on {eval_text} (held-out)")
    print(f"{'amount':>7} {'blocks':>6} " + " ".join(f"{m:>11}" for m in method_names))
    for amount in budgets:
        cells = {r["method"]: r for r in rows if r["amount"] == amount}
        ppl = [cells[m]["perplexity"] for m in method_names]
        print(f"{amount!s:>7} {cells[method_names[0]]['num_pruned']:>6} " + " ".join(f"{p:>11.2f}" for p in ppl))
    print(f"wrote {final}/report.json, perplexity.png")
    return report


def _fraction_or_count_or_usage(text: str):
    try:
        return fraction_or_count(text)
    except argparse.ArgumentTypeError as error:
        raise UsageError(str(error)) from error

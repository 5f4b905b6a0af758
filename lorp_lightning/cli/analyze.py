"""``lorp analyze``: calibration statistics, RLS, K, clusters and a heatmap."""

from __future__ import annotations

import argparse

from lorp_lightning._io import write_json
from lorp_lightning.cli._arguments import (
    DEFAULT_MODEL,
    MODEL_HELP,
    add_calibration,
    add_common,
    add_stability,
    fraction_or_count,
    positive_int,
)
from lorp_lightning.cli._shared import (
    calibrate,
    check_model_first,
    load,
    output_directory,
    select_plan,
    stability_reports,
    stats_summary,
    versions,
)
from lorp_lightning.selection import format_clusters

RENAMED = {"num_windows": "windows", "resamples": "stability", "num_prune": "amount"}
"""The library's parameters that are this command's arguments under other names (see ``_arguments.flags``)."""

STABILITY_METHODS = ["lorp", "shortgpt", "streamline", "angular"]
"""The methods whose plan stability ``--stability`` reports: those that read the statistics alone and draw nothing."""


def add_arguments(commands) -> argparse.ArgumentParser:
    """The ``analyze`` sub-command's parser, added to ``commands`` (argparse's sub-parsers)."""
    parser = commands.add_parser("analyze", help="calibration statistics, RLS, K, clusters and a heatmap")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    add_calibration(parser)
    parser.add_argument("--num-clusters", type=positive_int, help="force K instead of deriving it from the RLS")
    parser.add_argument("--seed", type=int, default=0, help="spectral clustering seed (default: 0)")
    add_stability(parser, "the plans of " + ", ".join(STABILITY_METHODS) + " at --amount")
    parser.add_argument(
        "--amount",
        type=fraction_or_count,
        default=0.25,
        help="with --stability: the budget the plans are chosen at, a fraction of the blocks or a count (default: 0.25)",
    )
    add_common(parser, "lorp-analysis")
    return parser


def analyze(
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
    seed: int,
    num_clusters: int | None,
    stability: int | None = None,
    amount: float | int = 0.25,
) -> dict:
    """``lorp analyze``: the statistics of ``model`` (one calibration pass, or read from ``stats``), its RLS, K and
    clusters, and a heatmap, written to ``out``; with ``stability`` B, the plan stability of ``STABILITY_METHODS`` at
    ``amount`` over B bootstrap resamples of the windows, and its heatmap; the report."""
    from lorp_lightning.plots import save_similarity_heatmap

    check_model_first(model, windows={"window": window}, amounts=[amount] if stability is not None else ())
    with output_directory(out, overwrite) as output:
        lm, tokenizer = load(model, dtype, quiet, device)
        layer_stats, seconds = calibrate(
            lm,
            tokenizer,
            stats_file=stats,
            text=text,
            window=window,
            count=windows,
            batch_size=batch_size,
            quiet=quiet,
            per_window=stability is not None,
        )
        plan = select_plan(layer_stats, 1, "lorp", seed=seed, quiet=quiet, num_clusters=num_clusters)
        layer_stats.save(output.path / "stats.pt")
        save_similarity_heatmap(
            layer_stats,
            output.path / "similarity.png",
            labels=plan.labels,
            title=f"{model}: RLS {plan.rls:.3f}, K {plan.num_clusters}",
        )
        report = {
            "command": "analyze",
            "model": model,
            "dtype": dtype,
            "device": device,
            "calibration": {"text": text, "windows": windows, "window": window, "seconds": seconds, "stats_file": stats},
            "statistics": stats_summary(layer_stats, plan),
            "versions": versions(),
        }
        reports = []
        if stability is not None:
            from lorp_lightning.plots import save_stability_heatmap

            reports = stability_reports(
                layer_stats, amount, STABILITY_METHODS, stability, seed=seed, quiet=quiet, num_clusters=num_clusters
            )
            report["stability"] = [r.summary() for r in reports]
            save_stability_heatmap(
                reports, output.path / "stability.png", title=f"{model}: removal frequency over {stability} resamples"
            )
        write_json(output.path / "report.json", report)
    final = output.final
    print(f"{model}: {layer_stats.num_layers} blocks, {layer_stats.num_tokens} calibration tokens")
    print(f"RLS {plan.rls:.3f}  ->  K {plan.num_clusters}")
    print(f"clusters: {format_clusters(plan.labels)}")
    for r in reports:
        print(r.describe())
    print(f"wrote {final}/stats.pt, report.json, similarity.png" + (", stability.png" if reports else ""))
    return report

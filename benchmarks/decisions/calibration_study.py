"""How much calibration is enough, and which? Calibration size, source and locality metric (issue 39).

For each model (dtype="auto"), one calibration pass per text keeps each window's own sums
(``collect_layer_stats(..., per_window=True)``) over up to 128 windows of 512 tokens of the
calibration splits of ``wiki``, ``c4``, ``tinystories`` and ``lambada`` (as many as a split holds).
Every cell's statistics are then taken from those passes without another forward pass
(``WindowStats.take`` / ``WindowStats.concat``):

- **size:** the first 4, 8, 16, 32, 64 and 128 windows of ``wiki``;
- **source:** the first 32 windows of ``c4``, ``tinystories`` and ``lambada``, and a mix (the first 8 of
  each of the four);
- **metric:** the 32 ``wiki`` windows, the cosine similarity replaced by ``1 - arccos(S) / pi``
  (``locality.angular_similarity``) before the same RLS, clustering and allocation.

In each cell the default ``lorp_search`` and the paper's ``lorp`` choose a quarter of the blocks.
``lorp_search`` checks plans on a quarter of the cell's windows (8 at the default 32; the mix: the first
2 of each text), cut to 256 tokens and scored on the last 128, as the library does. Each plan's
stability is ``plan_stability`` over ``--resamples`` bootstrap resamples of the cell's windows (the
searched method's checks resampled too, over ``--search-resamples``). Each distinct plan is then scored
on held-out text, 40 windows of 512 tokens of the held-out splits of ``wiki`` and ``lambada``, as the
quality study does (whose held-out losses are reused for plans it has measured). The tables give each
plan's perplexity ratio to the default cell's (32 ``wiki`` windows) plan of the same method, with a 95%
paired-bootstrap interval over the held-out windows.

    python benchmarks/decisions/calibration_study.py run [--models smollm2-135m ...] [--out benchmarks/results/calibration]
    python benchmarks/decisions/calibration_study.py render [--results benchmarks/results/calibration] [--docs docs]

``run`` writes one JSON per model; ``render`` writes the tables between the study's markers of
docs/calibration.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from datetime import date
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_study import MODELS, TEXTS, _earlier_held_out, _losses, perplexity, ratio_interval  # noqa: E402

from lorp_lightning._io import write_json  # noqa: E402
from lorp_lightning.assets import load_model, load_text  # noqa: E402
from lorp_lightning.evaluation import token_windows  # noqa: E402
from lorp_lightning.locality import angular_similarity  # noqa: E402
from lorp_lightning.methods import CHECK_TOKENS, SCORE_LAST, select_layers  # noqa: E402
from lorp_lightning.search import PlanLoss  # noqa: E402
from lorp_lightning.stability import plan_stability  # noqa: E402
from lorp_lightning.stats import WindowStats, collect_layer_stats  # noqa: E402

SOURCES = ("wiki", "c4", "tinystories", "lambada")
SIZES = (4, 8, 16, 32, 64, 128)
DEFAULT_SIZE = 32
AMOUNT = Fraction(1, 4)
METHODS = ("lorp_search", "lorp")
WINDOW = 512
MARKERS = ("<!-- calibration study: start -->", "<!-- calibration study: end -->")


def angular(stats):
    """The statistics with the cosine similarity replaced by ``angular_similarity`` (no per-window sums)."""
    return replace(
        stats,
        similarity=torch.from_numpy(angular_similarity(stats.similarity)),
        last_token_similarity=torch.from_numpy(angular_similarity(stats.last_token_similarity)),
        per_window=None,
    )


def cells(passes: dict[str, WindowStats], windows: dict[str, torch.Tensor]) -> list[dict]:
    """Every cell: its name, its statistics (with per-window sums) and its check windows."""
    out = []

    def cell(axis: str, source: str, size: int, stats, checks: torch.Tensor, metric: str = "cosine") -> None:
        name = f"{size} {source}" + (f", {metric}" if metric != "cosine" else "")
        out.append(dict(cell=name, axis=axis, source=source, size=size, metric=metric, stats=stats, checks=checks))

    for n in (n for n in SIZES if n <= passes["wiki"].num_windows):
        cell("size", "wiki", n, passes["wiki"].take(slice(0, n)), windows["wiki"][: max(1, n // 4)])
    for source in SOURCES[1:]:
        n = min(DEFAULT_SIZE, passes[source].num_windows)
        cell("source", source, n, passes[source].take(slice(0, n)), windows[source][: max(1, n // 4)])
    part = DEFAULT_SIZE // len(SOURCES)  # the mix: the first 8 windows of each text, and the first 2 of each checked
    mix = WindowStats.concat([passes[s].take(slice(0, part)).per_window for s in SOURCES])
    cell("source", "mix", DEFAULT_SIZE, mix, torch.cat([windows[s][: part // 4] for s in SOURCES]))
    wiki = passes["wiki"].take(slice(0, DEFAULT_SIZE))
    cell("metric", "wiki", DEFAULT_SIZE, wiki, windows["wiki"][: DEFAULT_SIZE // 4], metric="angular")
    return out


def run_model(name: str, args) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_model(name, progress=False)
    dtype = str(model.dtype).removeprefix("torch.")
    passes, windows, seconds = {}, {}, {}
    for source in SOURCES:
        windows[source] = token_windows(tokenizer, load_text(source, "calibration"), window=WINDOW, max_windows=max(SIZES))
        start = time.perf_counter()
        passes[source] = collect_layer_stats(model, windows[source].split(4), progress=False, per_window=True).per_window
        seconds[source] = time.perf_counter() - start
        print(f"{name}: {source}, {len(windows[source])} windows, {seconds[source]:.0f} s", flush=True)
    N = passes["wiki"].gram.shape[1] - 1
    k = int(AMOUNT * N)
    rows = []
    for cell in cells(passes, windows):
        stats = cell.pop("stats")
        checks_windows = cell.pop("checks")
        for method in METHODS if "all" in args.methods else args.methods:
            searched = method != "lorp"
            checks = PlanLoss(model, checks_windows[:, :CHECK_TOKENS], score_last=SCORE_LAST) if searched else None
            start = time.perf_counter()
            selected = angular(stats) if cell["metric"] == "angular" else stats
            plan = select_layers(selected, k, method=method, shared_checks=checks)
            select_seconds = time.perf_counter() - start
            resamples = args.search_resamples if searched else args.resamples
            transform = angular if cell["metric"] == "angular" else None
            report = plan_stability(stats, k, method, resamples, plan=plan, shared_checks=checks, transform=transform)
            row = dict(
                cell,
                method=method,
                pruned=plan.pruned,
                rls=plan.rls,
                num_clusters=plan.num_clusters,
                check_windows=len(checks_windows) if searched else 0,
                cost={"check_windows": plan.cost["check_windows"], "seconds": select_seconds},
                stability=report.summary(),
            )
            rows.append(row)
            print(
                f"  {cell['cell']:<18} {method:<11} {plan.pruned} RLS {plan.rls:.3f} K {plan.num_clusters}; "
                f"{select_seconds:.0f} s; stability {report.agreement:.0%} agree, overlap {report.mean_overlap:.0%} "
                f"({report.seconds:.0f} s, {report.window_passes} window passes)",
                flush=True,
            )

    evaluation = {
        t: PlanLoss(
            model,
            token_windows(tokenizer, load_text(t, "heldout"), window=WINDOW, max_windows=args.eval_windows),
            score_last=None,
        )
        for t in TEXTS
    }
    counts = {t: len(evaluation[t].windows) for t in TEXTS}
    earlier = [json.loads(p.read_text()) for p in [Path(args.reuse_from) / f"{name}.json"] if p.is_file()]
    held_out = _earlier_held_out(earlier, dtype, counts, WINDOW)
    reused = 0
    for plan in [()] + sorted({tuple(r["pruned"]) for r in rows}):
        if plan in held_out:
            reused += 1
            continue
        start = time.perf_counter()
        for t in TEXTS:
            evaluation[t](list(plan))
        held_out[plan] = {t: evaluation[t].window_losses[plan] for t in TEXTS}
        print(
            f"  held-out {list(plan)}: "
            + ", ".join(f"{t} {math.exp(np.mean(v)):.1f}" for t, v in held_out[plan].items())
            + f" ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    for row in rows:
        row["window_losses"] = held_out[tuple(row["pruned"])]
    return {
        "model": name,
        "num_layers": N,
        "num_pruned": k,
        "dtype": dtype,
        "calibration": {s: {"windows": len(windows[s]), "window": WINDOW, "seconds": seconds[s]} for s in SOURCES},
        "check_tokens": CHECK_TOKENS,
        "score_last": SCORE_LAST,
        "resamples": args.resamples,
        "search_resamples": args.search_resamples,
        "evaluation": {"texts": list(TEXTS), "windows": counts, "window": WINDOW},
        "dense": {"window_losses": held_out[()]},
        "rows": rows,
        "held_out_reused": reused,
        "command": " ".join(["python", *sys.argv]),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }


def cmd_run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        start = time.perf_counter()
        result = run_model(name, args)
        result["seconds"] = time.perf_counter() - start
        write_json(out / f"{name}.json", result)
        print(f"{name}: {result['seconds'] / 60:.1f} min, wrote {out / f'{name}.json'}", flush=True)


# --------------------------------------------------------------------------------------------
# render


def _ratio(row: dict, base: dict, text: str) -> str:
    if row is base:
        return "1"
    if row["pruned"] == base["pruned"]:
        return "same plan"
    r, low, high = ratio_interval(_losses(row, text), _losses(base, text))
    return f"{r:.3f} [{low:.3f}, {high:.3f}]"


def _times(x: float) -> str:
    """A multiple of dense: two decimals below 100, none below 1000, above (a collapsed model) its order."""
    return f"{x:.2f}" if x < 100 else f"{x:.0f}" if x < 1000 else f"{x:.0e}"


def model_table(result: dict) -> list[str]:
    dense = result["dense"]
    lines = []
    for method in METHODS:
        rows = [r for r in result["rows"] if r["method"] == method]
        if not rows:
            continue
        base = next(r for r in rows if r["axis"] == "size" and r["size"] == DEFAULT_SIZE)
        b = rows[0]["stability"]["resamples"]
        lines += [
            f"**`{method}`** (ratios to its plan on {DEFAULT_SIZE} `wiki` windows; stability over {b} resamples)",
            "",
            "| calibration | check windows: the selection's passes | plan | RLS, K | wiki × dense | wiki ratio | lambada × dense | lambada ratio "
            "| same plan | overlap | resample cost |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            s = r["stability"]
            cost = f"{s['cost']['check_windows']} passes" if r["check_windows"] else f"{s['cost']['seconds']:.2f} s"
            checks = f"{r['check_windows']}: {r['cost']['check_windows']} passes" if r["check_windows"] else "–"
            lines.append(
                f"| {r['cell']} | {checks} | {r['pruned']} | {r['rls']:.3f}, {r['num_clusters']} "
                f"| {_times(perplexity(r, 'wiki') / perplexity(dense, 'wiki'))} | {_ratio(r, base, 'wiki')} "
                f"| {_times(perplexity(r, 'lambada') / perplexity(dense, 'lambada'))} | {_ratio(r, base, 'lambada')} "
                f"| {s['agreement']:.0%} | {s['mean_overlap']:.0%} | {cost} |"
            )
        lines.append("")
    return lines


def cmd_render(args) -> None:
    results = [
        json.loads((Path(args.results) / f"{m}.json").read_text()) for m in MODELS if (Path(args.results) / f"{m}.json").is_file()
    ]
    lines = [MARKERS[0], ""]
    for result in results:
        cal = result["calibration"]
        lines += [
            f"### {result['model']}: {result['num_pruned']} of {result['num_layers']} blocks",
            "",
            f"{result['dtype']}; calibration splits held "
            + ", ".join(f"{s} {c['windows']}" for s, c in cal.items())
            + f" windows of {WINDOW} tokens; held-out {result['evaluation']['windows']['wiki']} windows of each text. "
            f"The whole run took {result['seconds'] / 60:.0f} minutes on {result['machine']}.",
            "",
            f"    {result['command']}",
            "",
            *model_table(result),
        ]
    lines.append(MARKERS[1])
    page = Path(args.docs) / "calibration.md"
    text = page.read_text()
    start, end = text.index(MARKERS[0]), text.index(MARKERS[1]) + len(MARKERS[1])
    page.write_text(text[:start] + "\n".join(lines) + text[end:])
    print(f"wrote {page}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--models", nargs="+", default=list(MODELS))
    run.add_argument("--methods", nargs="+", default=["all"], choices=["all", *METHODS])
    run.add_argument("--resamples", type=int, default=20, help="stability resamples of lorp (default 20)")
    run.add_argument("--search-resamples", type=int, default=10, help="stability resamples of lorp_search (default 10)")
    run.add_argument("--eval-windows", type=int, default=40)
    run.add_argument("--out", default="benchmarks/results/calibration")
    run.add_argument("--reuse-from", default="benchmarks/results", help="the quality study's results, for held-out losses")
    render = sub.add_parser("render")
    render.add_argument("--results", default="benchmarks/results/calibration")
    render.add_argument("--docs", default="docs")
    args = parser.parse_args()
    {"run": cmd_run, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    main()

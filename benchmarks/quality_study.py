"""The quality study: every method at every budget on every bundled family, from ONE calibration pass.

For each model: one calibration pass (``wiki`` calibration split, 32 windows of 512 tokens)
gives the statistics every method selects from; ``lorp_checked`` also runs its loss checks on
the first 4 of those windows. Each plan is applied with ``temporarily_pruned`` (the weights are
never copied) and evaluated on the held-out splits of ``wiki``, ``c4`` and ``lambada``
(perplexity over non-overlapping windows of 512 tokens) and on the nine zero-shot tasks with a
fixed ``--limit`` of documents per task. Identical plans are evaluated once.

Budgets are 1/8, 1/4 and 1/3 of the N blocks, rounded down. Cost is counted two ways: window
passes (one window of 512 tokens through the model; the faithful method and the baselines run
the 32 calibration windows once) and seconds on this machine.

    python benchmarks/quality_study.py run [--models smollm2-135m gemma3-270m qwen2.5-0.5b] [--out benchmarks/results]
    python benchmarks/quality_study.py render [--results benchmarks/results] [--docs docs]

``run`` writes one JSON per model; ``render`` turns them into ``docs/study.md`` (the tables,
the target check) and the plots ``docs/images/study_<model>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import date
from fractions import Fraction
from pathlib import Path

import torch

from lorp_lightning.assets import load_model, load_text
from lorp_lightning.evaluation import perplexity, token_windows
from lorp_lightning.checked import METHOD as CHECKED, select_checked
from lorp_lightning.selection import METHODS, select_layers
from lorp_lightning.stats import collect_layer_stats
from lorp_lightning.surgery import temporarily_pruned

BUDGETS = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 3))
TEXTS = ("wiki", "c4", "lambada")
ALL_METHODS = (CHECKED,) + METHODS
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b")


def _finite(x: float):
    return x if math.isfinite(x) else str(x)


def _evaluate(model, tokenizer, eval_windows: dict, zs_limit: int) -> dict:
    out = {"perplexity": {}, "seconds": {}}
    for text, windows in eval_windows.items():
        start = time.perf_counter()
        out["perplexity"][text] = _finite(perplexity(model, windows))
        out["seconds"][text] = time.perf_counter() - start
    if zs_limit:
        from lorp_lightning.zeroshot import evaluate_zero_shot

        start = time.perf_counter()
        zs = evaluate_zero_shot(model, tokenizer, limit=zs_limit, batch_size=8, progress=False)
        out["zero_shot"] = {task: r["acc"] for task, r in zs.items() if task != "average"}
        out["zero_shot_average"] = zs["average"]["acc"]
        out["seconds"]["zero_shot"] = time.perf_counter() - start
    return out


def run_model(name: str, args) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_model(name, progress=False)  # dtype="auto", recorded in the results
    calibration = token_windows(tokenizer, load_text("wiki", "calibration"), window=args.window, max_windows=args.calibration_windows)
    start = time.perf_counter()
    stats = collect_layer_stats(model, calibration.split(1), progress=False)
    stats_seconds = time.perf_counter() - start
    N = stats.num_layers
    budgets = [int(b * N) for b in BUDGETS]  # rounded down
    print(f"{name}: {N} blocks, budgets {budgets}; statistics {stats_seconds:.1f} s", flush=True)

    plans = {}
    for method in METHODS:
        for k in budgets:
            start = time.perf_counter()
            plan = select_layers(stats, k, method=method)
            plans[(method, k)] = (plan.pruned, stats_seconds + time.perf_counter() - start, args.calibration_windows)
    checked = {}
    for k in budgets:
        plan = select_checked(model, calibration, k, stats=stats, progress=False)
        checked[k] = plan.to_dict()
        plans[(CHECKED, k)] = (plan.pruned, stats_seconds + plan.cost["seconds"],
                               args.calibration_windows + plan.cost["check_windows"])
        print(f"  {CHECKED} k={k}: {plan.pruned} ({len(plan.candidates)} candidates, {plan.cost['seconds']:.1f} s)", flush=True)

    eval_windows = {t: token_windows(tokenizer, load_text(t, "heldout"), window=args.window, max_windows=args.eval_windows) for t in TEXTS}
    dense = _evaluate(model, tokenizer, eval_windows, args.zs_limit)
    print(f"  dense {dense['perplexity']}", flush=True)
    evaluated: dict[tuple, dict] = {}
    rows = []
    for (method, k), (pruned, seconds, window_passes) in plans.items():
        key = tuple(pruned)
        if key not in evaluated:
            with temporarily_pruned(model, list(pruned)):
                evaluated[key] = _evaluate(model, tokenizer, eval_windows, args.zs_limit)
        rows.append({"method": method, "num_pruned": k, "pruned": pruned, "selection_seconds": seconds,
                     "window_passes": window_passes, **{k2: v for k2, v in evaluated[key].items() if k2 != "seconds"}})
        print(f"  {method:>15} k={k:<2} {pruned} {evaluated[key]['perplexity']}", flush=True)
    return {
        "model": name, "num_layers": N, "budgets": budgets, "dtype": str(model.dtype).removeprefix("torch."),
        "calibration": {"text": "wiki", "windows": args.calibration_windows, "window": args.window, "seconds": stats_seconds},
        "evaluation": {"texts": list(TEXTS), "windows": args.eval_windows, "window": args.window, "zero_shot_limit": args.zs_limit},
        "checked_plans": checked, "dense": dense, "rows": rows,
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }


def cmd_run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        result = run_model(name, args)
        result["command"] = "python benchmarks/quality_study.py run " + " ".join(sys.argv[2:])
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, allow_nan=False, default=str) + "\n")
        print(f"wrote {out / (name + '.json')}", flush=True)


def _ppl(value) -> float:
    return float(value)  # "inf" / "nan" strings back to floats


def _fmt(value) -> str:
    x = _ppl(value)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if x >= 1e4 else f"{x:.1f}"


def target_cells(result: dict) -> list[dict]:
    """For every budget: lorp_checked's wiki and lambada perplexity against the lowest of every other method."""
    cells = []
    for k in result["budgets"]:
        rows = {r["method"]: r for r in result["rows"] if r["num_pruned"] == k}
        cell = {"num_pruned": k}
        for text in ("wiki", "lambada"):
            others = min(_ppl(r["perplexity"][text]) for m, r in rows.items() if m != CHECKED)
            mine = _ppl(rows[CHECKED]["perplexity"][text])
            cell[text] = (mine, others, mine <= others)
        cells.append(cell)
    return cells


def cmd_render(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [json.loads((Path(args.results) / f"{m}.json").read_text()) for m in MODELS
               if (Path(args.results) / f"{m}.json").is_file()]
    if not results:
        raise SystemExit(f"no results in {args.results}: run `python benchmarks/quality_study.py run` first")
    docs = Path(args.docs)
    (docs / "images").mkdir(parents=True, exist_ok=True)
    first = results[0]
    zs = next((r.get("zero_shot_limit") for res in results for r in res["rows"] if r.get("zero_shot_limit")), None)
    lines = [
        "# Quality study: every method, every budget, three families",
        "",
        "<!-- generated by `python benchmarks/quality_study.py render`; do not edit by hand -->",
        "",
        f"Made on {first['date']} ({first['machine']}, torch {first['torch']}) by the command under each model's "
        "heading, then `python benchmarks/quality_study.py render`. The raw figures are in `benchmarks/results/*.json`.",
        "",
        f"Per model, ONE calibration pass ({first['calibration']['windows']} windows of {first['calibration']['window']} "
        "tokens of the `wiki` calibration split, bf16) gives the statistics every method selects from; `lorp_checked` "
        "also checks its candidate plans on the calibration loss of the first 4 of those windows. Perplexity is over "
        "non-overlapping held-out windows of 512 tokens of each text (`wiki`, `c4`, `lambada` stand in for WikiText-2, "
        "C4 and PTB): " + ", ".join(f"{r['evaluation']['windows']} windows per text for {r['model']}" for r in results)
        + " (fewer for the larger models, to fit the CPU time; small differences between methods are within noise). "
        + (f"Zero-shot: average accuracy over the nine tasks with the first {zs} documents of each (lm-eval `--limit {zs}`), "
           "measured at the 1/4 budget only (the command is under each model's heading; on 2 CPU cores the full grid "
           "would take hours); with 90 documents in all, differences under about 0.05 are noise." if zs else
           "Zero-shot tasks: not run in this study."),
        "",
        "Cost: window passes (one window of 512 tokens through the model) of the selection, and its seconds on this "
        "machine, the calibration pass included; every method but `lorp_checked` costs the calibration pass alone.",
        "",
    ]
    met = total = 0
    for result in results:
        name, N = result["model"], result["num_layers"]
        commands = f"`{result['command']}`" + (f", then `{result['zero_shot_command']}`" if "zero_shot_command" in result else "")
        lines += [f"## {name} ({N} blocks)", "", commands, "", f"Dense: " + ", ".join(
            f"{t} {_fmt(result['dense']['perplexity'][t])}" for t in TEXTS)
            + (f", zero-shot average {result['dense']['zero_shot_average']:.3f}" if "zero_shot_average" in result["dense"] else ""), ""]
        header = "| blocks removed | method | pruned blocks | wiki | c4 | lambada |" + (" zero-shot avg |" if zs else "") + " cost (window passes, s) |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for k in result["budgets"]:
            rows = [r for r in result["rows"] if r["num_pruned"] == k]
            best = {t: min(_ppl(r["perplexity"][t]) for r in rows) for t in TEXTS}
            for r in sorted(rows, key=lambda r: ALL_METHODS.index(r["method"])):
                cells = [f"**{_fmt(r['perplexity'][t])}**" if _ppl(r["perplexity"][t]) == best[t] else _fmt(r["perplexity"][t]) for t in TEXTS]
                zcell = ([f"{r['zero_shot_average']:.3f}" if "zero_shot_average" in r else "-"]) if zs else []
                lines.append(f"| {k}/{N} | {r['method']} | {', '.join(map(str, r['pruned']))} | " + " | ".join(cells + zcell)
                             + f" | {r['window_passes']}, {r['selection_seconds']:.0f} |")
        lines.append("")
        for cell in target_cells(result):
            total += 1
            met += cell["wiki"][2] and cell["lambada"][2]
        fig, axes = plt.subplots(1, len(TEXTS), figsize=(13, 3.8))
        for ax, text in zip(axes, TEXTS):
            for method in ALL_METHODS:
                points = sorted((r["num_pruned"], _ppl(r["perplexity"][text])) for r in result["rows"] if r["method"] == method)
                ax.plot(*zip(*points), marker="o", label=method, linewidth=2.5 if method == CHECKED else 1)
            ax.axhline(_ppl(result["dense"]["perplexity"][text]), color="gray", linestyle=":", label="dense")
            ax.set_yscale("log"); ax.set_xlabel("blocks removed"); ax.set_title(f"{name}: {text} held-out perplexity")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(docs / "images" / f"study_{name}.png", dpi=100)
        plt.close(fig)
        lines += [f"![{name}: held-out perplexity against blocks removed](images/study_{name}.png)", ""]

    lines += ["## The target", "",
              "`lorp_checked`'s held-out perplexity on `wiki` and `lambada` against the lowest of every other method "
              "(faithful LoRP included), at every family and budget:", "",
              "| model | blocks removed | wiki: lorp_checked / best other | lambada: lorp_checked / best other | met |", "|---|---|---|---|---|"]
    for result in results:
        for cell in target_cells(result):
            w, l = cell["wiki"], cell["lambada"]
            lines.append(f"| {result['model']} | {cell['num_pruned']}/{result['num_layers']} | {_fmt(w[0])} / {_fmt(w[1])} | "
                         f"{_fmt(l[0])} / {_fmt(l[1])} | {'yes' if w[2] and l[2] else 'no'} |")
    lines += ["", f"Met at {met} of {total} family and budget cells."
              + (" The target is to be met at every one before `lorp_checked` becomes the default of "
                 "`LoRPPruneCallback` and `lorp prune`; until then the faithful `lorp` stays the default and "
                 "`lorp_checked` is one argument away (`method=\"lorp_checked\"`, `--method lorp_checked`)."
                 if met < total else " `lorp_checked` is the default of `LoRPPruneCallback` and `lorp prune`."), ""]
    (docs / "study.md").write_text("\n".join(lines))
    print(f"wrote {docs / 'study.md'} and {len(results)} plots; target met at {met} of {total} cells")


def cmd_zeroshot(args) -> None:
    """Add the zero-shot average (first ``--limit`` documents per task) to one budget's rows of a model's results."""
    from lorp_lightning.zeroshot import evaluate_zero_shot

    for name in args.models:
        path = Path(args.results) / f"{name}.json"
        result = json.loads(path.read_text())
        model, tokenizer = load_model(name, dtype=result["dtype"], progress=False)  # the dtype the plans were chosen in
        k = int(Fraction(args.budget) * result["num_layers"])
        done: dict[tuple, dict] = {}

        def zero_shot(pruned: list[int]) -> dict:
            key = tuple(pruned)
            if key not in done:
                start = time.perf_counter()
                if pruned:
                    with temporarily_pruned(model, list(pruned)):
                        zs = evaluate_zero_shot(model, tokenizer, limit=args.limit, batch_size=8, progress=False)
                else:
                    zs = evaluate_zero_shot(model, tokenizer, limit=args.limit, batch_size=8, progress=False)
                done[key] = {"zero_shot": {t: r["acc"] for t, r in zs.items() if t != "average"},
                             "zero_shot_average": zs["average"]["acc"], "zero_shot_limit": args.limit}
                print(f"  {name} {list(pruned)}: zero-shot average {zs['average']['acc']:.3f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            return done[key]

        result["dense"].update(zero_shot([]))
        for row in result["rows"]:
            if row["num_pruned"] == k:
                row.update(zero_shot(row["pruned"]))
        result["zero_shot_command"] = "python benchmarks/quality_study.py zeroshot " + " ".join(sys.argv[2:])
        path.write_text(json.dumps(result, indent=1, allow_nan=False, default=str) + "\n")
        print(f"wrote {path}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the study for some models, one JSON each")
    run.add_argument("--models", nargs="+", default=list(MODELS))
    run.add_argument("--out", default="benchmarks/results")
    run.add_argument("--window", type=int, default=512)
    run.add_argument("--calibration-windows", type=int, default=32)
    run.add_argument("--eval-windows", type=int, default=16, help="held-out windows per text (default 16)")
    run.add_argument("--zs-limit", type=int, default=10, help="documents per zero-shot task; 0 skips them (default 10)")
    render = sub.add_parser("render", help="write docs/study.md and its plots from the JSON results")
    render.add_argument("--results", default="benchmarks/results")
    render.add_argument("--docs", default="docs")
    zeroshot = sub.add_parser("zeroshot", help="add the zero-shot average of one budget's plans to the results")
    zeroshot.add_argument("--models", nargs="+", default=list(MODELS))
    zeroshot.add_argument("--results", default="benchmarks/results")
    zeroshot.add_argument("--budget", default="1/4", help="the budget whose plans are evaluated (default 1/4)")
    zeroshot.add_argument("--limit", type=int, default=10, help="documents per task (default 10)")
    args = parser.parse_args()
    if args.command == "run":
        cmd_run(args)
    elif args.command == "zeroshot":
        cmd_zeroshot(args)
    else:
        cmd_render(args)


if __name__ == "__main__":
    main()

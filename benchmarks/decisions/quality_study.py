"""The quality study: every method of the registry at every budget on the bundled families.

For each model: one calibration pass (``wiki`` calibration split, 32 windows of 512 tokens) gives
the statistics every method that reads them selects from. The methods that try plans on the model
(``lorp_search``, ``lorp_checked``, ``sleb``, ``ppl``) check them on the first 256 tokens of the
same first 8 of those windows, scoring the last 128 predicted tokens of each (the library's
defaults); one
``PlanLoss`` serves them all, so a plan met twice is computed once, while each plan's cost counts
what its selection asked for as if run alone.

Each plan is then scored on held-out text: the first ``--eval-windows`` non-overlapping windows of
512 tokens of the held-out splits of ``wiki`` and ``lambada``, every token scored. Perplexity is
exp(mean window loss). The per-window losses are kept: for each budget, the default method's
perplexity ratio to the best other method has a 95% paired-bootstrap interval over the windows.

    python benchmarks/decisions/quality_study.py run [--models smollm2-135m ...] [--eval-windows 40] [--out benchmarks/results]
    python benchmarks/decisions/quality_study.py zeroshot --models smollm2-135m [--limit 100]
    python benchmarks/decisions/quality_study.py render [--results benchmarks/results] [--docs docs]

``run`` writes one JSON per model. With ``--merge`` it reruns only the ``--methods`` given and keeps
the other methods' rows of the model's existing JSON (for a change to one method: the others'
code, and so their plans, are unchanged). Either way a plan whose held-out losses an existing JSON
already holds, for the same model, dtype, windows and window length, is not evaluated again: its
per-window losses are copied, and the command that made them stays in the JSON's ``commands``.
``zeroshot`` adds zero-shot accuracy at the 1/4 budget for the
default, the faithful ``lorp`` and the two best baselines by held-out wiki perplexity whose plans
differ from the default's; ``render`` writes ``docs/study.md`` (a summary per model, the plots
``docs/images/study_<model>.png``, every method's table folded, then the sections of
``rounds_study.py``, ``prune_heal_study.py`` and of the sweep).

The sweep, every budget k = 1 .. N // 3 (issue 35), written to its own folder and reusing the held-out
losses of the plans the study has already measured:

    python benchmarks/decisions/quality_study.py run --every-budget --out benchmarks/results/sweep --reuse-from benchmarks/results \
        --methods lorp_search lorp lorp_checked sleb ppl shortgpt streamline angular

A stopped run keeps its plans in ``<out>/<model>.selection.json`` and the held-out losses it measured in
``<out>/<model>.partial.json``; the same command run again reuses them (the plans only if the library's
and this script's sources are unchanged), and removes both files when it writes the model's JSON.

It also records every plan's check loss and, for the default, whether any plan one swap away has a
lower check loss (``swap_check``, each neighbour checked again with ``PlanLoss.below``).
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

import numpy as np
import torch

from lorp_lightning._io import write_json
from lorp_lightning.assets import load_model, load_text
from lorp_lightning.evaluation import token_windows
from lorp_lightning.methods import CHECK_TOKENS, CHECK_WINDOWS, DEFAULT_METHOD, METHODS, REGISTRY, SCORE_LAST, select_layers
from lorp_lightning.search import PlanLoss, neighbours
from lorp_lightning.stats import collect_layer_stats

BUDGETS = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 3))
TEXTS = ("wiki", "lambada")
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b")
OPTIONAL_MODELS = ("qwen2.5-1.5b",)  # installed by `bash setup.sh --large`: run by name, rendered when its results exist
BOOTSTRAP = 10_000


def _commands(result: dict) -> list[str]:
    """The commands that made a result (older results hold one, under "command")."""
    return result.get("commands") or [result["command"]]


def _earlier_held_out(earlier: list[dict], dtype: str, windows: dict, window: int) -> dict[tuple, dict]:
    """The held-out losses by plan of earlier results with the same evaluation (empty if none)."""
    held_out = {}
    for result in earlier:
        if (
            result.get("dtype") != dtype
            or result.get("evaluation", {}).get("windows") != windows
            or result["evaluation"].get("window") != window
            or "window_losses" not in result.get("dense", {})
        ):
            continue
        held_out[()] = result["dense"]["window_losses"]
        for row in result["rows"]:
            held_out[tuple(row["pruned"])] = row["window_losses"]
    return held_out


def every_budget(num_layers: int) -> list[int]:
    """The sweep's budgets: every k from 1 to N // 3 blocks."""
    return list(range(1, num_layers // 3 + 1))


def swap_check(checks: PlanLoss, plan: list[int], num_layers: int, protected: list[int]) -> dict:
    """Whether ``plan`` is a local optimum of the check loss under the default's swap neighbourhood
    (``search.neighbours``): every neighbour is checked (each only as far as it can still beat the
    plan, ``PlanLoss.below``), and those with a lower loss are listed with their losses."""
    loss = checks(plan)
    around = neighbours(plan, num_layers, set(protected))
    better = [p for p in around if checks.below(p, loss)]
    return {"neighbours": len(around), "better": [{"pruned": p, "check_loss": checks(p)} for p in better]}


def code_fingerprint() -> str:
    """The sha256 of the library's and this script's sources: a kept selection is reused only by the same code."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]  # benchmarks/decisions/ -> the repository
    for path in sorted((root / "lorp_lightning").rglob("*.py")) + [Path(__file__).resolve()]:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_model(name: str, args, earlier: list[dict] = (), partial: Path | None = None, selection: Path | None = None) -> dict:
    """One model's results. ``earlier``: results whose held-out losses are reused; ``partial``: where
    this run's held-out losses are written as they come (read back as an earlier result by a rerun);
    ``selection``: where its plans are kept once selected (reused by a rerun of the same code)."""
    torch.manual_seed(0)
    model, tokenizer = load_model(name, progress=False)  # dtype="auto", recorded in the results
    calibration = token_windows(
        tokenizer, load_text("wiki", "calibration"), window=args.window, max_windows=args.calibration_windows
    )
    start = time.perf_counter()
    stats = collect_layer_stats(model, calibration.split(4), progress=False)
    stats_seconds = time.perf_counter() - start
    N = stats.num_layers
    budgets = every_budget(N) if args.every_budget else [int(b * N) for b in BUDGETS]  # rounded down
    print(f"{name}: {N} blocks, budgets {budgets}, {model.dtype}; statistics {stats_seconds:.1f} s", flush=True)

    checks = PlanLoss(model, calibration[:CHECK_WINDOWS, :CHECK_TOKENS], score_last=SCORE_LAST)
    rows = []
    key = {
        "code": code_fingerprint(),
        "methods": list(args.methods),
        "budgets": budgets,
        "only_at": args.only_at,
        "window": args.window,
        "calibration_windows": args.calibration_windows,
    }
    only_at = dict(item.split("=", 1) for item in args.only_at)
    only_at = {m: budgets.split(",") for m, budgets in only_at.items()}
    kept = json.loads(selection.read_text()) if selection is not None and selection.is_file() else None
    if kept is not None and kept["key"] == key:  # a stopped run's selection, by the same code: not run again
        rows, stats_seconds = kept["rows"], kept["statistics_seconds"]
        print(f"  the selection of a stopped run, by the same code, read from {selection}", flush=True)
    # Method by method, each at every budget, the default first (METHODS' order): its seconds are its own,
    # while a later method's checks may have been computed by an earlier one (its window passes count them
    # all). Greedy SLEB takes the big budget first: the smaller ones reuse its checks.
    for method in args.methods if not rows else ():
        entry = REGISTRY[method]
        for k in sorted(budgets, reverse=True):
            if method in only_at and k not in [int(Fraction(b) * N) for b in only_at[method]]:
                continue
            plan = select_layers(stats, k, method=method, shared_checks=checks if entry.reads_model else None)
            cost = dict(plan.cost)
            cost["window_passes"] = cost["statistics_windows"] + cost["check_windows"]
            cost["seconds_with_statistics"] = cost["seconds"] + (stats_seconds if entry.reads_stats else 0.0)
            row = {"method": method, "num_pruned": k, "pruned": plan.pruned, "cost": cost, "candidates": plan.candidates}
            if args.every_budget:  # the sweep: every plan's check loss, and the default's neighbourhood
                row["check_loss"] = checks(plan.pruned)
                if method == DEFAULT_METHOD:
                    row["swap_check"] = swap_check(checks, plan.pruned, N, plan.protected)
            rows.append(row)
            print(
                f"  k={k:<2} {method:>12} {plan.pruned} {cost['window_passes']} window passes, {cost['seconds']:.0f} s"
                + (f", check loss {row['check_loss']:.3f}" if "check_loss" in row else "")
                + (
                    f", {len(row['swap_check']['better'])} better of {row['swap_check']['neighbours']} neighbours"
                    if "swap_check" in row
                    else ""
                ),
                flush=True,
            )
    if selection is not None:
        write_json(selection, {"key": key, "rows": rows, "statistics_seconds": stats_seconds})

    evaluation = {
        t: PlanLoss(
            model,
            token_windows(tokenizer, load_text(t, "heldout"), window=args.window, max_windows=args.eval_windows),
            score_last=None,
        )
        for t in TEXTS
    }
    windows = {t: len(evaluation[t].windows) for t in TEXTS}
    held_out = _earlier_held_out(earlier, str(model.dtype).removeprefix("torch."), windows, args.window)
    reused = set(held_out)
    if held_out:
        print(f"  {len(held_out)} plans' held-out losses reused from the earlier results", flush=True)
    measured = {}  # this run's held-out losses, kept in `partial` after each plan so a stopped run loses none
    for plan in [()] + [tuple(r["pruned"]) for r in rows]:
        if plan not in held_out:
            start = time.perf_counter()
            for t in TEXTS:
                evaluation[t](list(plan))
            losses = {t: evaluation[t].window_losses[plan] for t in TEXTS}
            held_out[plan] = measured[plan] = losses
            print(
                f"  held-out {list(plan)}: "
                + ", ".join(f"{t} {math.exp(np.mean(window_losses)):.1f}" for t, window_losses in losses.items())
                + f" ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if partial is not None:
                write_json(
                    partial,
                    {
                        "dtype": str(model.dtype).removeprefix("torch."),
                        "evaluation": {"texts": list(TEXTS), "windows": windows, "window": args.window},
                        "dense": {"window_losses": held_out[()]},
                        "rows": [{"pruned": list(p), "window_losses": v} for p, v in measured.items() if p],
                    },
                )
    for row in rows:
        row["window_losses"] = held_out[tuple(row["pruned"])]
    rows.sort(key=lambda r: (-r["num_pruned"], METHODS.index(r["method"])))
    reused &= {()} | {tuple(r["pruned"]) for r in rows}
    if args.merge:
        rows = [r for r in earlier[0]["rows"] if r["method"] not in args.methods] + rows
        rows.sort(key=lambda r: (-r["num_pruned"], METHODS.index(r["method"])))
    return {
        "model": name,
        "num_layers": N,
        "budgets": budgets,
        "dtype": str(model.dtype).removeprefix("torch."),
        "calibration": {
            "text": "wiki",
            "windows": args.calibration_windows,
            "window": args.window,
            "seconds": stats_seconds,
            "check_windows": CHECK_WINDOWS,
            "check_tokens": CHECK_TOKENS,
            "score_last": SCORE_LAST,
        },
        "evaluation": {"texts": list(TEXTS), "windows": windows, "window": args.window},
        "dense": {"window_losses": held_out[()]},
        "rows": rows,
        "held_out_reused": len(reused),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }


def kept_zero_shot(earlier: dict | None, result: dict) -> dict | None:
    """The earlier results' zero-shot figures if every plan they were measured on is still its
    method's plan in ``result``; else None (and a line that says so: run ``zeroshot`` again)."""
    if not earlier or "zero_shot" not in earlier:
        return None
    zero_shot, k = earlier["zero_shot"], earlier["zero_shot"]["num_pruned"]
    measured = zero_shot.get("plans") or {r["method"]: r["pruned"] for r in earlier["rows"] if r["num_pruned"] == k}
    now = {r["method"]: r["pruned"] for r in result["rows"] if r["num_pruned"] == k}
    changed = [
        m
        for m in list(zero_shot["results"]) + zero_shot.get("same_plan_as_default", [])
        if m != "dense" and now.get(m) != measured.get(m)
    ]
    if changed:
        print(f"  zero-shot figures dropped: the plans of {changed} changed; run `zeroshot` again", flush=True)
        return None
    return zero_shot


def cmd_run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        path = out / f"{name}.json"
        earlier = json.loads(path.read_text()) if path.is_file() else None
        if args.merge and earlier is None:
            raise SystemExit(f"--merge: there are no earlier results at {path} to merge into")
        others = [Path(d) / f"{name}.json" for d in args.reuse_from]
        others = [p for p in others if p.is_file() and p.resolve() != path.resolve()]
        partial = out / f"{name}.partial.json"  # a stopped run's held-out losses: reused, then removed
        if partial.is_file():
            others.append(partial)
            print(f"  reading the held-out losses of a stopped run from {partial}", flush=True)
        selection = out / f"{name}.selection.json"
        result = run_model(
            name, args, ([earlier] if earlier else []) + [json.loads(p.read_text()) for p in others], partial, selection
        )
        command = "python benchmarks/decisions/quality_study.py run " + " ".join(sys.argv[2:])
        earlier_commands = _commands(earlier) if earlier and (args.merge or result["held_out_reused"]) else []
        result["commands"] = earlier_commands + [command]
        also_from = [str(p) for p in others if p != partial]  # whose commands made the losses copied
        if also_from and result["held_out_reused"]:
            result["held_out_also_from"] = also_from
        zero_shot = kept_zero_shot(earlier, result)
        if zero_shot is not None:
            result["zero_shot"] = zero_shot
        write_json(out / f"{name}.json", result, indent=1)
        partial.unlink(missing_ok=True)
        selection.unlink(missing_ok=True)
        print(f"wrote {out / (name + '.json')}", flush=True)


# --------------------------------------------------------------------------- the figures


def _losses(row: dict, text: str) -> np.ndarray:
    return np.array([float(x) for x in row["window_losses"][text]])


def perplexity(row: dict, text: str) -> float:
    """exp(mean window loss): the perplexity of windows of one length, every token scored."""
    with np.errstate(over="ignore"):
        return float(np.exp(_losses(row, text).mean()))


def ratio_interval(mine: np.ndarray, other: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """The perplexity ratio exp(mean(mine) - mean(other)) and its 95% paired-bootstrap interval over the windows."""
    diff = mine - other
    if not np.isfinite(diff).all():
        return (math.inf, math.inf, math.inf) if np.isinf(mine).any() else (0.0, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    with np.errstate(over="ignore"):
        return float(np.exp(diff.mean())), float(np.exp(low)), float(np.exp(high))


def ratio_cells(row: dict, base: dict, dense: dict) -> list[str]:
    """Per text of ``TEXTS``: the row's perplexity relative to dense, and its ratio to ``base`` with the 95%
    paired-bootstrap interval ("1" for the base itself): the cells of the rounds and prune-heal tables."""
    cells = []
    for t in TEXTS:
        cells.append(f"{perplexity(row, t) / perplexity(dense, t):.2f}")
        if row is base:
            cells.append("1")
        else:
            r, low, high = ratio_interval(_losses(row, t), _losses(base, t))
            cells.append(f"{r:.3f} [{low:.3f}, {high:.3f}]")
    return cells


def target_cells(result: dict, default: str = DEFAULT_METHOD) -> list[dict]:
    """For every budget and text: the default's ratio to the best other method, with its interval."""
    cells = []
    for k in result["budgets"]:
        rows = {r["method"]: r for r in result["rows"] if r["num_pruned"] == k}
        if default not in rows:
            continue
        mine = rows[default]
        cell = {
            "num_pruned": k,
            "sleb_passes": rows["sleb"]["cost"]["window_passes"] if "sleb" in rows else None,
            "passes": mine["cost"]["window_passes"],
        }
        for text in TEXTS:
            others = {m: perplexity(r, text) for m, r in rows.items() if m != default}
            best = min(others, key=others.get)
            ratio, low, high = ratio_interval(_losses(mine, text), _losses(rows[best], text))
            cell[text] = {
                "best_other": best,
                "ratio": ratio,
                "low": low,
                "high": high,
                "met": low <= 1.0,
                "significantly_worse": low > 1.0,
            }
        cells.append(cell)
    return cells


def _fmt(x: float | None) -> str:
    if x is None:  # strict JSON writes a diverged figure as null
        return "inf"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.2g}" if x >= 1e4 else f"{x:.1f}"


def _times(x: float) -> str:
    """A multiple of dense: two decimals below 10 (2.42), else as ``_fmt``."""
    return f"{x:.2f}" if math.isfinite(x) and x < 10 else _fmt(x)


def _runs(blocks: list[int]) -> str:
    """Blocks as runs, for narrow tables: [3, 9, 12, 13, 14, 26] -> "3, 9, 12-14, 26"."""
    parts, start = [], 0
    for i in range(1, len(blocks) + 1):
        if i == len(blocks) or blocks[i] != blocks[i - 1] + 1:
            parts.append(str(blocks[start]) if i - 1 == start else f"{blocks[start]}-{blocks[i - 1]}")
            start = i
    return ", ".join(parts)


def _folded(title: str, body: list[str]) -> list[str]:
    """A section folded on the page (pymdownx.details), its lines indented under the title."""
    return [f'??? note "{title}"', ""] + [f"    {line}" if line else "" for line in body] + [""]


def _plot(result: dict, docs: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = result["model"]
    dense = {t: perplexity(result["dense"], t) for t in TEXTS}
    # perplexity relative to dense, on a clipped axis, so that the good methods can be told apart
    fig, axes = plt.subplots(1, len(TEXTS), figsize=(12, 4))
    for ax, text in zip(axes, TEXTS, strict=True):
        for method in METHODS:
            points = sorted((r["num_pruned"], perplexity(r, text) / dense[text]) for r in result["rows"] if r["method"] == method)
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    marker="o",
                    label=method,
                    linewidth=3 if method == DEFAULT_METHOD else 1.2,
                    zorder=3 if method == DEFAULT_METHOD else 2,
                )
        ax.set_yscale("log")
        ax.set_ylim(1, 30)
        ax.axhline(1, color="gray", linestyle=":")
        ax.set_xticks(result["budgets"])
        ax.set_xlabel("blocks removed")
        ax.set_ylabel("perplexity / dense (clipped at 30)")
        ax.set_title(f"{name}: {text} held-out")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(docs / "images" / f"study_{name}.png", dpi=100)
    plt.close(fig)
    return f"![{name}: held-out perplexity relative to dense against blocks removed](images/study_{name}.png)"


def _full_table(result: dict) -> list[str]:
    """Every method at every budget: plan, held-out perplexity (x dense), window passes, plans checked, seconds."""
    dense = {t: perplexity(result["dense"], t) for t in TEXTS}
    lines = [
        "; then ".join(f"`{c}`" for c in _commands(result)),
        "",
        "Dense: " + ", ".join(f"{t} {_fmt(dense[t])}" for t in TEXTS),
        "",
        "| k | method | pruned | " + " | ".join(f"{t} (x dense)" for t in TEXTS) + " | passes (plans), seconds |",
        "|---|---|---|" + "---|" * len(TEXTS) + "---|",
    ]
    for k in result["budgets"]:
        rows = [r for r in result["rows"] if r["num_pruned"] == k]
        best = {t: min(perplexity(r, t) for r in rows) for t in TEXTS}
        for r in sorted(rows, key=lambda r: METHODS.index(r["method"])):
            cells = []
            for t in TEXTS:
                p = perplexity(r, t)
                text = f"{_fmt(p)} ({_fmt(p / dense[t])})"
                cells.append(f"**{text}**" if p == best[t] else text)
            c = r["cost"]
            lines.append(
                f"| {k} | {r['method']} | {_runs(r['pruned'])} | "
                + " | ".join(cells)
                + f" | {c['window_passes']} ({c.get('plans_checked', 0)}), {c['seconds_with_statistics']:.0f} s |"
            )
    return lines


def _zero_shot_table(result: dict) -> list[str]:
    """Zero-shot accuracy, one row per task (the models as columns keep the table narrow)."""
    zs, N = result["zero_shot"], result["num_layers"]
    labels = list(zs["results"])
    lines = [
        f"Zero-shot at {zs['num_pruned']}/{N} blocks removed: accuracy over the nine tasks, the first {zs['limit']} "
        f"documents of each (`{zs['command']}`); ± is lm-eval's standard error.",
        "",
        "| task | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for task in zs["tasks"]:
        lines.append(
            f"| {task} | "
            + " | ".join(f"{zs['results'][m][task]['acc']:.3f} ± {zs['results'][m][task]['acc_stderr']:.3f}" for m in labels)
            + " |"
        )
    lines.append("| average | " + " | ".join(f"{zs['results'][m]['average']['acc']:.3f}" for m in labels) + " |")
    if zs.get("same_plan_as_default"):
        same = zs["same_plan_as_default"]
        lines += [
            "",
            f"{', '.join(f'`{m}`' for m in same)} chose the default's own plan at this budget, so "
            f"{'its' if len(same) == 1 else 'their'} accuracy is the default's; the two baselines shown are the "
            "best by held-out wiki perplexity among those whose plans differ from it.",
        ]
    return lines


def _missed_on_calibration(result: dict, cells: list[dict], rows_by: dict) -> list[str]:
    """Where the default is significantly worse on held-out text, the calibration check loss of its plan against
    that of the better plan, when the default's search checked that plan too (its candidates keep every loss)."""
    said = []
    for cell in cells:
        k = cell["num_pruned"]
        checked = {tuple(c["pruned"]): c["loss"] for c in rows_by[(k, DEFAULT_METHOD)].get("candidates", []) if "loss" in c}
        mine = checked.get(tuple(rows_by[(k, DEFAULT_METHOD)]["pruned"]))
        for other in dict.fromkeys(cell[t]["best_other"] for t in TEXTS if not cell[t]["met"]):
            theirs = checked.get(tuple(rows_by[(k, other)]["pruned"]))
            if mine is not None and theirs is not None:
                said.append(f"{k}/{result['num_layers']}: {mine:.3f} against `{other}`'s {theirs:.3f}")
    if not said:
        return []
    return [
        "Where the default is worse, the calibration check loss (the only text a method reads) of its plan against "
        "that of the better plan, both checked by its search: " + "; ".join(said) + ".",
        "",
    ]


def _partial_methods(result: dict) -> dict[str, list[int]]:
    """The methods run at some of the result's budgets only (``--only-at``): method -> its budgets."""
    at: dict[str, list[int]] = {}
    for row in result["rows"]:
        at.setdefault(row["method"], []).append(row["num_pruned"])
    return {m: sorted(b) for m, b in at.items() if len(b) < len(result["budgets"])}


def cmd_render(args) -> None:
    results = [
        json.loads((Path(args.results) / f"{m}.json").read_text())
        for m in MODELS + OPTIONAL_MODELS
        if (Path(args.results) / f"{m}.json").is_file()
    ]
    if not results:
        raise SystemExit(f"no results in {args.results}: run `python benchmarks/decisions/quality_study.py run` first")
    results = [r for r in results if "window_losses" in r["dense"]]  # this study's format; older results are not read
    docs = Path(args.docs)
    (docs / "images").mkdir(parents=True, exist_ok=True)
    first = results[0]
    cal = first["calibration"]
    lines = [
        "# Quality study: every method, every budget",
        "",
        "<!-- generated by `python benchmarks/decisions/quality_study.py render`; do not edit by hand -->",
        "",
        f"Made on {first['date']} ({first['machine']}, torch {first['torch']}, {first['dtype']}) by the commands in "
        "each model's full table, then `python benchmarks/decisions/quality_study.py render`. The raw figures, every window's loss "
        "included, are in `benchmarks/results/*.json`.",
        "",
        f"**Calibration, the same for every method.** One pass over {cal['windows']} windows of {cal['window']} tokens "
        "of the `wiki` calibration split gives the statistics. The methods that try plans on the model (`lorp_search`, "
        f"`lorp_checked`, `sleb`, `ppl`) check them on the first {cal['check_tokens']} tokens of the first "
        f"{cal['check_windows']} of those windows, scoring the last {cal['score_last']} predicted tokens of each. "
        "No held-out text is read by any method.",
        "",
        "**Held-out text.** Perplexity (exp of the mean window loss, every token scored) over the first "
        + ", ".join(
            f"{n} non-overlapping windows of {first['evaluation']['window']} tokens of `{t}`"
            for t, n in first["evaluation"]["windows"].items()
        )
        + " (held-out splits; `wiki` stands in for WikiText-2, `lambada` is the LAMBADA test set)."
        + "".join(
            f" For {r['model']}: {', '.join(f'{n} windows of `{t}`' for t, n in r['evaluation']['windows'].items())}"
            + "".join(f", `{m}` at {' and '.join(map(str, at))} blocks only" for m, at in _partial_methods(r).items())
            + " (a larger model on the same CPU)."
            for r in results
            if r["evaluation"]["windows"] != first["evaluation"]["windows"]
        ),
        "",
        "## Summary",
        "",
        f"Per budget and text: the default's (`{DEFAULT_METHOD}`) held-out perplexity as a multiple of dense, the best "
        "other method's, and the ratio of the two with its 95% paired-bootstrap interval over the held-out windows "
        "(10,000 resamples). The target (the default at least as good as every other method) is met where the interval "
        "reaches 1.0 or below. Cost: the default's window passes against `sleb`'s.",
        "",
    ]
    met, cells_measured = 0, 0
    for result in results:
        name, N = result["model"], result["num_layers"]
        dense = {t: perplexity(result["dense"], t) for t in TEXTS}
        rows_by = {(r["num_pruned"], r["method"]): r for r in result["rows"]}
        lines += [
            f"### {name} ({N} blocks)",
            "",
            "| k | text | default (x dense) | best other (x dense) | default / best other [95%] | passes / sleb's |",
            "|---|---|---|---|---|---|",
        ]
        cells = target_cells(result)
        for cell in cells:
            k = cell["num_pruned"]
            cells_measured += 1
            met += cell["wiki"]["met"] and cell["lambada"]["met"]
            for text in TEXTS:
                c = cell[text]
                mine = perplexity(rows_by[(k, DEFAULT_METHOD)], text) / dense[text]
                other = perplexity(rows_by[(k, c["best_other"])], text) / dense[text]
                passes = f"{cell['passes']} / {cell['sleb_passes']}" if text == TEXTS[0] and cell["sleb_passes"] else ""
                lines.append(
                    f"| {k}/{N} | {text} | {_times(mine)} | {c['best_other']} {_times(other)} | {c['ratio']:.3f} "
                    f"[{c['low']:.3f}, {c['high']:.3f}] | {passes} |"
                )
        lines.append("")
        lines += _missed_on_calibration(result, cells, rows_by)
    lines += [f"Met at {met} of {cells_measured} cells measured (both texts).", ""]
    missing = [m for m in MODELS if m not in {r["model"] for r in results}]
    if missing:
        lines += [
            f"Not yet measured in this study: {', '.join(missing)} (`python benchmarks/decisions/quality_study.py run --models "
            f"{' '.join(missing)}`, then `render`).",
            "",
        ]
    lines += ["## Plots", ""]
    for result in results:
        lines += [_plot(result, docs), ""]
    lines += [
        "## Every method, in full",
        "",
        "Each model's table, folded: every method's plan (blocks as runs), held-out perplexity (x dense; the best of "
        "each budget in bold), window passes (one calibration window through the model: the statistics pass of the "
        "methods that read the statistics, and every loss check, as if the method ran alone), plans checked, and "
        "seconds of the selection with the statistics pass. The loss checks are shared between methods and budgets "
        "(each plan computed once), so the seconds of `sleb`, `ppl` and `lorp_checked` at the smaller budgets are "
        "lower than a run of its own; the window passes are not.",
        "",
    ]
    for result in results:
        body = _full_table(result)
        if "zero_shot" in result:
            body += [""] + _zero_shot_table(result)
        lines += _folded(f"{result['model']} ({result['num_layers']} blocks): every method at every budget", body)

    from rounds_study import rounds_section  # a sibling script (its folder is on the path when run as a script)

    lines += rounds_section(Path(args.rounds))
    from prune_heal_study import prune_heal_section

    lines += prune_heal_section(Path(args.prune_heal))
    lines += sweep_section(Path(args.sweep))
    (docs / "study.md").write_text("\n".join(lines))
    print(f"wrote {docs / 'study.md'} and {len(results)} plots; target met at {met} of {cells_measured} cells")


def sweep_section(folder: Path) -> list[str]:
    """docs/study.md's section on every budget k = 1 .. N // 3 (``run --every-budget``), from the JSON in ``folder``."""
    results = [json.loads((folder / f"{m}.json").read_text()) for m in MODELS if (folder / f"{m}.json").is_file()]
    if not results:
        return []
    methods = sorted({r["method"] for r in results[0]["rows"]}, key=METHODS.index)
    lines = [
        "## Every budget",
        "",
        f"The default at every k from 1 to N/3 (rounded down), against the other methods measured here "
        f"({', '.join(f'`{m}`' for m in methods if m != DEFAULT_METHOD)}; the floors `random` and `last` are left "
        "out). Same calibration, checks and held-out windows as above; the plans of the three budgets above are the "
        "same, and their held-out losses are reused. Per cell: the default's plan; the check loss (the calibration "
        "loss every method that tries plans is judged by) of the default and of `sleb`; how many of the default's "
        "swap neighbours (one removed block kept, one kept block next to a removed one removed instead: the "
        "neighbourhood its search moves in) have a lower check loss, of how many, each checked again here; the "
        "held-out perplexity ratio to the best other method with its 95% paired-bootstrap interval; and the "
        "default's window passes against `sleb`'s.",
        "",
    ]
    summary = []
    for result in results:
        name, N = result["model"], result["num_layers"]
        lines += [
            f"### {name} ({N} blocks)",
            "",
            "; then ".join(f"`{c}`" for c in _commands(result)),
            "",
            "| k | default's plan | check loss, default / sleb | better neighbours | text | best other: ratio [95%] "
            "| passes / sleb's |",
            "|---|---|---|---|---|---|---|",
        ]
        cells = {c["num_pruned"]: c for c in target_cells(result)}
        for k in sorted(result["budgets"]):
            rows = {r["method"]: r for r in result["rows"] if r["num_pruned"] == k}
            mine, sleb, cell = rows[DEFAULT_METHOD], rows["sleb"], cells[k]
            swap = mine["swap_check"]
            for text in TEXTS:
                c = cell[text]
                ratio = f"{c['best_other']}: {c['ratio']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"
                if text == TEXTS[0]:
                    lines.append(
                        f"| {k} | {_runs(mine['pruned'])} | {mine['check_loss']:.3f} / {sleb['check_loss']:.3f} "
                        f"| {len(swap['better'])} of {swap['neighbours']} | {text} | {ratio} "
                        f"| {cell['passes']} / {cell['sleb_passes']} |"
                    )
                else:
                    lines.append(f"| | | | | {text} | {ratio} | |")
            summary.append((name, k, N, mine, sleb, cell))
        lines.append("")
    local = sum(not len(m["swap_check"]["better"]) for _, _, _, m, _, _ in summary)
    above = [(n, k, N, m["check_loss"], s["check_loss"]) for n, k, N, m, s, _ in summary if m["check_loss"] > s["check_loss"]]
    worse = [(n, k, N, t, c[t]) for n, k, N, _, _, c in summary for t in TEXTS if c[t]["significantly_worse"]]
    cheaper = sum(c["passes"] < c["sleb_passes"] for *_, c in summary)
    lines += [
        f"Over the {len(summary)} cells: the default's plan is a local optimum of its check loss at {local}; its "
        f"check loss is at most `sleb`'s at {len(summary) - len(above)}"
        + (" (above it: " + "; ".join(f"{n} {k}/{N}: {a:.3f} against {b:.3f}" for n, k, N, a, b in above) + ")" if above else "")
        + "; it is significantly worse than the best other method on held-out text at "
        + (
            ", ".join(
                f"{n} {k}/{N} {t} ({c['best_other']}, {c['ratio']:.3f} [{c['low']:.3f}, {c['high']:.3f}])"
                for n, k, N, t, c in worse
            )
            if worse
            else "none"
        )
        + f"; it runs fewer window passes than `sleb` at {cheaper}.",
        "",
    ]
    missing = [m for m in MODELS if m not in {r["model"] for r in results}]
    if missing:
        lines += [f"Not yet swept: {', '.join(missing)} (the command above with `--models {' '.join(missing)}`).", ""]
    return lines


BASELINES = ("sleb", "ppl", "shortgpt", "streamline", "angular", "random", "last")  # the peers' methods


def best_baselines(rows: dict[str, dict], count: int = 2) -> tuple[list[str], list[str]]:
    """The ``count`` baselines of lowest held-out wiki perplexity whose plans differ from the default's
    and from each other, and the baselines that chose the default's own plan (their accuracy is the default's)."""
    default = rows[DEFAULT_METHOD]["pruned"]
    ranked = sorted((m for m in BASELINES if m in rows), key=lambda m: (perplexity(rows[m], "wiki"), BASELINES.index(m)))
    same = [m for m in ranked if rows[m]["pruned"] == default]
    chosen: list[str] = []
    for m in ranked:
        if m not in same and all(rows[m]["pruned"] != rows[c]["pruned"] for c in chosen) and len(chosen) < count:
            chosen.append(m)
    return chosen, same


def cmd_zeroshot(args) -> None:
    """Zero-shot accuracy at one budget: dense, the default, the faithful lorp and the two best baselines
    (by held-out wiki perplexity) whose plans differ from the default's. Task by task: each finished task
    is kept in ``<model>.zeroshot.partial.json``, which the same command run again continues from."""
    from lorp_lightning.surgery import temporarily_pruned
    from lorp_lightning.zeroshot import ZERO_SHOT_TASKS, evaluate_zero_shot

    for name in args.models:
        path = Path(args.results) / f"{name}.json"
        result = json.loads(path.read_text())
        model, tokenizer = load_model(name, dtype=result["dtype"], progress=False)  # the dtype the plans were chosen in
        k = int(Fraction(args.budget) * result["num_layers"])
        rows = {r["method"]: r for r in result["rows"] if r["num_pruned"] == k}
        baselines, same = best_baselines(rows)
        chosen = [DEFAULT_METHOD, "lorp"] + baselines
        configs = [("dense", [])] + [(m, rows[m]["pruned"]) for m in chosen]
        partial = path.with_suffix(".zeroshot.partial.json")
        state = {"limit": args.limit, "num_pruned": k, "plans": dict(configs)}
        figures = stopped_zero_shot(partial, state)
        for label, pruned in configs:
            done = figures.setdefault(label, {})
            for task in [t for t in ZERO_SHOT_TASKS if t not in done]:
                with temporarily_pruned(model, pruned) if pruned else torch.no_grad():
                    done[task] = evaluate_zero_shot(model, tokenizer, task, limit=args.limit, batch_size=8, progress=False)[task]
                write_json(partial, {**state, "results": figures}, indent=1)
                print(f"  {name} {label} {task}: acc {done[task]['acc']:.3f} ({done[task]['seconds']:.0f} s)", flush=True)
            accs = [done[t]["acc"] for t in ZERO_SHOT_TASKS]
            done["average"] = {"acc": sum(accs) / len(accs), "num_tasks": len(accs)}
            print(f"  {name} {label} {pruned}: average {done['average']['acc']:.3f}", flush=True)
        result["zero_shot"] = {
            "num_pruned": k,
            "limit": args.limit,
            "tasks": list(ZERO_SHOT_TASKS),
            "results": figures,
            "same_plan_as_default": same,
            "plans": {m: rows[m]["pruned"] for m in chosen + same},
            "command": "python benchmarks/decisions/quality_study.py zeroshot " + " ".join(sys.argv[2:]),
        }
        write_json(path, result, indent=1)
        partial.unlink(missing_ok=True)
        print(f"wrote {path}", flush=True)


def stopped_zero_shot(partial: Path, state: dict) -> dict:
    """The per-task figures a stopped ``zeroshot`` run kept in ``partial``, if it measured the same plans
    with the same limit; else none."""
    if not partial.is_file():
        return {}
    kept = json.loads(partial.read_text())
    if {key: kept.get(key) for key in state} != state:
        print(f"  {partial} measured other plans or another limit: starting again", flush=True)
        return {}
    done = sum(len([t for t in tasks if t != "average"]) for tasks in kept["results"].values())
    print(f"  continuing from {partial}: {done} task figures kept", flush=True)
    return kept["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the study for some models, one JSON each")
    run.add_argument("--models", nargs="+", default=list(MODELS))
    run.add_argument("--methods", nargs="+", default=list(METHODS))
    run.add_argument("--out", default="benchmarks/results")
    run.add_argument("--window", type=int, default=512)
    run.add_argument("--calibration-windows", type=int, default=32)
    run.add_argument("--eval-windows", type=int, default=40, help="held-out windows per text (default 40)")
    run.add_argument(
        "--merge", action="store_true", help="rerun only --methods and keep the other methods' rows of the existing JSON"
    )
    run.add_argument(
        "--every-budget",
        action="store_true",
        help="the sweep: every k from 1 to N // 3 (not 1/8, 1/4, 1/3), with every plan's check loss and "
        "the default's swap neighbourhood checked; write it under --out benchmarks/results/sweep",
    )
    run.add_argument(
        "--only-at",
        nargs="*",
        default=[],
        metavar="METHOD=BUDGETS",
        help="run METHOD only at these budgets, fractions separated by commas (sleb=1/8: the 1.5B model's SLEB)",
    )
    run.add_argument(
        "--reuse-from",
        nargs="*",
        default=[],
        metavar="DIR",
        help="other results folders whose held-out losses of the same plans are copied, not recomputed",
    )
    render = sub.add_parser("render", help="write docs/study.md and its plots from the JSON results")
    render.add_argument("--results", default="benchmarks/results")
    render.add_argument("--docs", default="docs")
    render.add_argument("--sweep", default="benchmarks/results/sweep", help="the results of run --every-budget, if any")
    render.add_argument("--rounds", default="benchmarks/results/rounds", help="the results of rounds_study.py run, if any")
    render.add_argument(
        "--prune-heal", default="benchmarks/results/prune_heal", help="the results of prune_heal_study.py run, if any"
    )
    zeroshot = sub.add_parser("zeroshot", help="add zero-shot accuracy at one budget to a model's results")
    zeroshot.add_argument("--models", nargs="+", default=list(MODELS))
    zeroshot.add_argument("--results", default="benchmarks/results")
    zeroshot.add_argument("--budget", default="1/4", help="the budget whose plans are evaluated (default 1/4)")
    zeroshot.add_argument("--limit", type=int, default=100, help="documents per task (default 100)")
    args = parser.parse_args()
    {"run": cmd_run, "zeroshot": cmd_zeroshot, "render": cmd_render}[args.command](args)


if __name__ == "__main__":
    main()

"""Pruning in rounds and compensation (issue 36), training-free: each configuration against the one-shot default.

For each bundled model and each budget of the quality study (1/8, 1/4, 1/3 of the blocks), on the study's
calibration (statistics from 32 windows of 512 tokens of the `wiki` calibration split; checks on the first 256
tokens of the first 8, the last 128 scored) and its held-out windows (40 of 512 tokens of `wiki` and of
`lambada`, every token scored):

    one-shot                     the default's plan (lorp_search), as in docs/study.md
    one-shot + compensation      the same plan, with the compensation select_layers(..., compensate=True) chooses:
                                 the strength of the stream's norm ratio at each gap with the lowest check loss
    R rounds                     select_layers(..., rounds=R): the default in R rounds, the statistics collected
                                 again on the partly pruned model between rounds
    R rounds + compensation      the same with compensate=True: each round's strength chosen on its checks and
                                 folded before the next round measures

Every row records its check loss (the calibration loss the configurations are chosen by) and its window passes.
Held-out losses are computed with the factors applied as the fold would apply them (``PlanLoss.compensated``,
equal to the folded model's, tests/test_compensation.py), so no weight is copied. The results hold every
window's loss; ``render`` (called by ``quality_study.py render``) gives each configuration's ratio to dense and
its ratio to the one-shot default with a 95% paired-bootstrap interval. The JSON is written after each row.
A budget of fewer blocks than R has no R-rounds rows.

    python benchmarks/decisions/rounds_study.py run [--models smollm2-135m ...] [--budgets 1/8 1/4 1/3] [--rounds 2 3]
        [--out benchmarks/results/rounds]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from datetime import date
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from lorp_lightning._io import write_json
from lorp_lightning.assets import load_model, load_text
from lorp_lightning.evaluation import token_windows
from lorp_lightning.methods import CHECK_TOKENS, CHECK_WINDOWS, DEFAULT_METHOD, SCORE_LAST, select_layers
from lorp_lightning.search import PlanLoss
from lorp_lightning.stats import collect_layer_stats

BUDGETS = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 3))
TEXTS = ("wiki", "lambada")
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b")
ROUNDS = (2, 3)  # the iterative configurations: R rounds, each with and without compensation


def configurations(rounds: tuple[int, ...] = ROUNDS) -> list[tuple[str, int, bool]]:
    """(name, rounds, compensate) of every configuration, the one-shot default first."""
    out = [("one-shot", 1, False), ("one-shot + compensation", 1, True)]
    for r in rounds:
        out += [(f"{r} rounds", r, False), (f"{r} rounds + compensation", r, True)]
    return out


def keep_other_budgets(result: dict, previous: dict | None, budgets: list[int]) -> dict:
    """``result`` with the rows of ``previous`` (the model's file of an earlier run) at budgets this run does not
    measure, when both runs measured the same model on the same held-out windows (the dense losses agree to 1e-3 per
    window); its command then names both runs. Otherwise ``result`` as it is: the file is written anew."""
    if previous is None or (previous["model"], previous["num_layers"], previous["evaluation"]) != (
        result["model"],
        result["num_layers"],
        result["evaluation"],
    ):
        return result
    for t, losses in result["dense"]["window_losses"].items():
        earlier, losses = [float(x) for x in previous["dense"]["window_losses"][t]], [float(x) for x in losses]
        if len(earlier) != len(losses) or max(abs(a - b) for a, b in zip(earlier, losses, strict=True)) > 1e-3:
            return result
    kept = [row for row in previous["rows"] if row["num_pruned"] not in budgets]
    if kept:
        result["rows"] = kept
        result["command"] = f"{previous['command']}; {result['command']}"
    return result


def run_model(name: str, args, save, previous: dict | None = None) -> dict:
    """One model's rows, budget by budget; ``save(result)`` after each row, so a stopped run keeps what it measured.
    The rows of ``previous`` (the model's file of an earlier run) at other budgets are kept (``keep_other_budgets``)."""
    torch.manual_seed(0)
    model, tokenizer = load_model(name, progress=False)
    calibration = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=32)
    stats = collect_layer_stats(model, calibration.split(4), progress=False)
    N = stats.num_layers
    checks = PlanLoss(model, calibration[:CHECK_WINDOWS, :CHECK_TOKENS], score_last=SCORE_LAST)
    evaluation = {
        t: PlanLoss(
            model, token_windows(tokenizer, load_text(t, "heldout"), window=512, max_windows=args.eval_windows), score_last=None
        )
        for t in TEXTS
    }
    for t in TEXTS:
        evaluation[t]([])
    dense = {t: evaluation[t].window_losses[()] for t in TEXTS}
    result = {
        "model": name,
        "num_layers": N,
        "dtype": str(model.dtype).removeprefix("torch."),
        "dense": {"window_losses": dense},
        "rows": [],
        "evaluation": {"texts": list(TEXTS), "windows": args.eval_windows, "window": 512},
        "command": "python benchmarks/decisions/rounds_study.py run " + " ".join(sys.argv[2:]),
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    result = keep_other_budgets(result, previous, [int(Fraction(b) * N) for b in args.budgets])
    for budget in args.budgets:
        k = int(Fraction(budget) * N)
        one_shot = None
        for configuration, rounds, compensate in configurations(tuple(args.rounds)):
            if rounds > k:  # more rounds than blocks: not a configuration at this budget
                continue
            if rounds == 1 and one_shot is not None:  # compensation is chosen after the selection: the same plan
                plan = one_shot
            else:
                plan = select_layers(
                    stats,
                    k,
                    method=DEFAULT_METHOD,
                    shared_checks=checks,
                    model=model,
                    windows=calibration,
                    compensate=rounds == 1 or compensate,
                    rounds=rounds,
                )
                one_shot = plan if rounds == 1 else one_shot
            factors = plan.factors if compensate else {}
            losses = {}
            for t in TEXTS:
                evaluation[t].compensated(plan.pruned, factors)  # factors all 1 or none: the plan itself
                losses[t] = evaluation[t].window_losses[PlanLoss.key(plan.pruned, factors)]
            cost = dict(plan.cost)
            if rounds == 1 and not compensate:  # the one-shot plan was chosen with compensation: its checks are not the default's
                cost["check_windows"] -= plan.compensation["check_windows"]
            cost["window_passes"] = cost["statistics_windows"] + cost["check_windows"]
            row = {
                "configuration": configuration,
                "num_pruned": k,
                "pruned": plan.pruned,
                "rounds": plan.rounds,
                "check_loss": checks.compensated(plan.pruned, factors),
                "cost": cost,
                "window_losses": losses,
            }
            if compensate:
                row["compensation"] = plan.compensation
            result["rows"].append(row)
            print(
                f"  {name} k={k} {configuration}: {plan.pruned}, check loss {row['check_loss']:.3f}, "
                f"{cost['window_passes']} window passes; "
                + ", ".join(f"{t} {math.exp(np.mean(v)):.2f}" for t, v in losses.items()),
                flush=True,
            )
            save(result)
    return result


def rounds_section(folder: Path) -> list[str]:
    """docs/study.md's section on compensation and rounds, from the JSON in ``folder`` (none: no section)."""
    from quality_study import ratio_cells

    results = [json.loads((folder / f"{m}.json").read_text()) for m in MODELS if (folder / f"{m}.json").is_file()]
    if not results:
        return []
    lines = [
        "## Compensation and rounds",
        "",
        "Training-free configurations against the one-shot default at the study's budgets: held-out perplexity "
        "relative to dense, and the ratio to the one-shot default with its 95% paired-bootstrap interval (below 1: "
        "better). Compensation's strength is chosen on the check windows (`select_layers(..., compensate=True)`, "
        "docs/method.md). Made by the command under each model's heading, then `python benchmarks/decisions/quality_study.py render`.",
        "",
    ]
    for result in results:
        name, N = result["model"], result["num_layers"]
        dense = result["dense"]
        lines += [
            f"### {name} ({N} blocks)",
            "",
            f"`{result['command']}`",
            "",
            "| k | configuration | check loss | window passes | wiki (x dense) | wiki: / one-shot [95%] | lambada (x dense) "
            "| lambada: / one-shot [95%] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in sorted({r["num_pruned"] for r in result["rows"]}):
            rows = {r["configuration"]: r for r in result["rows"] if r["num_pruned"] == k}
            base = rows["one-shot"]
            for configuration, row in rows.items():
                cells = ratio_cells(row, base, dense)
                shown = configuration
                if "compensation" in row:
                    strengths = (
                        [r["compensation"]["strength"] for r in row["rounds"]]
                        if row.get("rounds")
                        else [row["compensation"]["strength"]]
                    )
                    shown += " (strength " + "/".join(f"{x:g}" for x in strengths) + ")"
                check = f"{row['check_loss']:.3f}" if "check_loss" in row else "-"
                passes = row["cost"]["window_passes"] if "cost" in row else "-"
                lines.append(f"| {k}/{N} | {shown} | {check} | {passes} | " + " | ".join(cells) + " |")
        lines.append("")
    missing = [m for m in MODELS if m not in {r["model"] for r in results}]
    if missing:
        lines += [
            f"Not yet run: {', '.join(missing)} (`python benchmarks/decisions/rounds_study.py run --models {' '.join(missing)}`).",
            "",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--models", nargs="+", default=list(MODELS))
    run.add_argument("--out", default="benchmarks/results/rounds")
    run.add_argument("--eval-windows", type=int, default=40)
    run.add_argument(
        "--budgets", nargs="+", default=[str(b) for b in BUDGETS], help="fractions of the blocks (default 1/8 1/4 1/3)"
    )
    run.add_argument("--rounds", type=int, nargs="+", default=list(ROUNDS), help="the rounds of the iterative configurations")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        path = out / f"{name}.json"
        previous = json.loads(path.read_text()) if path.is_file() else None
        run_model(name, args, lambda result, path=path: write_json(path, result, indent=1), previous)
        print(f"wrote {out / (name + '.json')}", flush=True)


if __name__ == "__main__":
    main()

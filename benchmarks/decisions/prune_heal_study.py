"""Progressive prune-heal against pruning once then healing (issue 36): the same steps, and the same minutes.

For each model and budget, on the quality study's calibration (32 windows of 512 tokens of the `wiki`
calibration split) and held-out windows (40 of 512 tokens of `wiki` and of `lambada`, every token scored):

    one-shot, then heal          the default's plan (``select_layers``, ``DEFAULT_METHOD``), pruned, then
                                 ``heal`` for ``--minutes`` of training (LoRA rank 8 on every linear layer,
                                 lr 1e-3, windows of 256 tokens of the `wiki` calibration split, 4 per step);
                                 its steps, N, are the budget of the next row
    progressive, same steps      ``healing.prune_and_heal`` in ``--rounds`` rounds (at most k), healing N steps in all
    progressive, same minutes    the same with ``--minutes`` of training in all (each round its share), the
                                 steps as many as fit

Every configuration starts from the dense model loaded again, with the same seed (``prune_and_heal`` heals
round r with seed + r, so that the rounds do not train on the same windows again). The results hold each
window's held-out loss; ``render`` (called by ``quality_study.py render``) gives each row's ratio to dense
and its ratio to "one-shot, then heal" with a 95% paired-bootstrap interval. The JSON is written after each
configuration, a rerun of the same command skips what it holds, and the file's ``command`` names every run
that made its rows (``; ``-separated).

    python benchmarks/decisions/prune_heal_study.py run [--models smollm2-135m gemma3-270m] [--budgets 1/4] [--minutes 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
import warnings
from datetime import date
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from lorp_lightning._io import write_json
from lorp_lightning.architectures import decoder_layers
from lorp_lightning.assets import load_model, load_text
from lorp_lightning.evaluation import token_windows
from lorp_lightning.methods import DEFAULT_METHOD, select_layers
from lorp_lightning.search import PlanLoss
from lorp_lightning.stats import collect_layer_stats

TEXTS = ("wiki", "lambada")
MODELS = ("smollm2-135m", "gemma3-270m")
HEALING = dict(text="wiki", window=256, batch_size=4, rank=8, lr=1e-3)
MANY_STEPS = 1_000_000  # with a time budget, the time decides


def window_losses(model, windows: torch.Tensor) -> list[float]:
    """The model's loss on every window (each a forward pass of the model as it is, every token scored)."""
    loss = PlanLoss(model, windows, score_last=None, reuse_prefix=False)
    loss([])
    return loss.window_losses[()]


def run_cell(name: str, k: int, args, result: dict, save) -> None:
    from lorp_lightning.healing import heal, healing_records, prune_and_heal
    from lorp_lightning.surgery import prune_layers

    done = {r["configuration"] for r in result["rows"] if r["num_pruned"] == k}

    def fresh():
        torch.manual_seed(0)
        model, tokenizer = load_model(name, progress=False)
        return model, tokenizer

    model, tokenizer = fresh()
    calibration = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=32)
    evaluation = {t: token_windows(tokenizer, load_text(t, "heldout"), window=512, max_windows=args.eval_windows) for t in TEXTS}
    if "dense" not in result:
        result["dense"] = {"window_losses": {t: window_losses(model, w) for t, w in evaluation.items()}}
        save(result)

    def add(configuration: str, pruned: list[int], records: list[dict], extra: dict, model) -> None:
        row = {
            "configuration": configuration,
            "num_pruned": k,
            "pruned": pruned,
            "healing": records,
            "steps": sum(r["num_steps"] for r in records),
            "training_seconds": sum(r["seconds"] for r in records),
            "window_losses": {t: window_losses(model, w) for t, w in evaluation.items()},
            **extra,
        }
        result["rows"].append(row)
        save(result)
        print(
            f"  {name} k={k} {configuration}: {pruned}, {row['steps']} steps in {row['training_seconds']:.0f} s; "
            + ", ".join(f"{t} {math.exp(np.mean(v)):.2f}" for t, v in row["window_losses"].items()),
            flush=True,
        )

    one_shot = [r for r in result["rows"] if r["num_pruned"] == k and r["configuration"] == "one-shot, then heal"]
    if not one_shot:
        stats = collect_layer_stats(model, calibration.split(4), progress=False)
        start = time.perf_counter()
        plan = select_layers(stats, k, method=DEFAULT_METHOD, model=model, windows=calibration)
        selection = time.perf_counter() - start
        prune_layers(model, plan)
        heal(model, tokenizer, steps=MANY_STEPS, max_seconds=60 * args.minutes, seed=0, **HEALING)
        add("one-shot, then heal", plan.pruned, healing_records(model), {"selection_seconds": selection}, model)
        one_shot = result["rows"][-1:]
    steps = one_shot[0]["steps"]
    rounds = min(args.rounds, k)  # at most a block a round: 2 blocks (Gemma 3 at an eighth) go in 2 rounds
    for configuration, options in (
        (f"progressive ({rounds} rounds), same steps", {"steps": steps}),
        (
            f"progressive ({rounds} rounds), same minutes",
            {"steps": MANY_STEPS, "max_seconds": 60 * args.minutes / rounds},
        ),
    ):
        if configuration in done:
            continue
        model, tokenizer = fresh()
        stats = collect_layer_stats(model, calibration.split(4), progress=False)
        plan = prune_and_heal(
            model,
            tokenizer,
            stats,
            k,
            rounds=rounds,
            windows=calibration,
            method=DEFAULT_METHOD,
            seed=0,
            **HEALING,
            **options,
        )
        add(
            configuration,
            plan.pruned,
            healing_records(model),
            {"rounds": plan.rounds, "selection_seconds": plan.cost["seconds"]},
            model,
        )


def prune_heal_section(folder: Path) -> list[str]:
    """docs/study.md's section on progressive prune-heal, from the JSON in ``folder`` (none: no section)."""
    from quality_study import ratio_cells

    results = [json.loads((folder / f"{m}.json").read_text()) for m in MODELS if (folder / f"{m}.json").is_file()]
    results = [r for r in results if r["rows"]]
    if not results:
        return []
    lines = [
        "## Progressive prune-heal",
        "",
        "Pruning once and then healing against pruning in rounds with healing between them (`healing.prune_and_heal`), "
        "with the same optimizer steps and with the same minutes of training; every row from the dense model loaded "
        "again, with the same seed (round r of a progressive row heals with seed + r: its own order of the healing "
        'windows). Held-out perplexity relative to dense, and the ratio to "one-shot, then heal" with '
        "its 95% paired-bootstrap interval (below 1: better). Made by the command under each model's heading, then "
        "`python benchmarks/decisions/quality_study.py render`.",
        "",
    ]
    for result in results:
        name, N = result["model"], result["num_layers"]
        lines += [
            f"### {name} ({N} blocks)",
            "",
            f"`{result['command']}`",
            "",
            "| k | configuration | steps | training | wiki (x dense) | wiki: / one-shot [95%] | lambada (x dense) "
            "| lambada: / one-shot [95%] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in sorted({r["num_pruned"] for r in result["rows"]}):
            rows = [r for r in result["rows"] if r["num_pruned"] == k]
            base = next(r for r in rows if r["configuration"] == "one-shot, then heal")
            for row in rows:
                cells = ratio_cells(row, base, result["dense"])
                lines.append(
                    f"| {k}/{N} | {row['configuration']} | {row['steps']} | {row['training_seconds'] / 60:.1f} min | "
                    + " | ".join(cells)
                    + " |"
                )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--models", nargs="+", default=list(MODELS))
    run.add_argument("--budgets", nargs="+", default=["1/8", "1/4", "1/3"])
    run.add_argument("--minutes", type=float, default=10.0, help="minutes of training of each configuration (default 10)")
    run.add_argument("--rounds", type=int, default=3)
    run.add_argument("--eval-windows", type=int, default=40)
    run.add_argument("--out", default="benchmarks/results/prune_heal")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/decisions/prune_heal_study.py run " + " ".join(sys.argv[2:])
    for name in args.models:
        path = out / f"{name}.json"
        result = (
            json.loads(path.read_text())
            if path.is_file()
            else {
                "model": name,
                "rows": [],
                "evaluation": {"texts": list(TEXTS), "windows": args.eval_windows, "window": 512},
                "healing": HEALING,
                "minutes": args.minutes,
                "rounds": args.rounds,
            }
        )
        runs = [c for c in result.get("command", "").split("; ") if c and c != command]  # the runs of the other rows
        result.update(
            command="; ".join([*runs, command]),
            date=date.today().isoformat(),
            torch=torch.__version__,
            machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
        )
        model, _ = load_model(name, progress=False)
        result["num_layers"] = N = len(decoder_layers(model))
        del model
        for budget in args.budgets:
            run_cell(name, int(Fraction(budget) * N), args, result, lambda r, p=path: write_json(p, r, indent=1))
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()

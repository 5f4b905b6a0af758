"""Recovery by healing: SmolLM2-135M pruned by 25% with LoRP and with ShortGPT, then healed.

For each method: held-out perplexity on ``wiki`` and ``lambada`` of the dense, the pruned and the
healed model, the recovery (pruned - healed) / (pruned - dense) on each text, and the training
time. Target: at least half of the gap recovered with at most 10 minutes of training per method
on 2 CPU cores.

    python benchmarks/heal_recovery.py [--model smollm2-135m] [--amount 0.25] [--methods lorp,shortgpt]
                                       [--max-minutes 10] [--steps 5000] [--mode lora] [--rank 8] [--lr 1e-3]
                                       [--window 256] [--batch-size 4] [--eval-windows 40] [--threads N]
                                       [--json out.json]

Set-up, as ``lorp prune`` does it: the model in bfloat16; statistics from 32 windows of 512
tokens of the ``wiki`` calibration split; the plans by ``select_layers``. Healing: ``heal()`` on the
``wiki`` calibration split (windows of ``--window`` tokens, shuffled; the held-out split is never
read), LoRA on every linear layer of every block (float32 adapters on the frozen bfloat16
weights), merged into the bfloat16 weights at the end; the perplexities of the healed model are
those of the merged model, as it would be saved. The training runs for ``--max-minutes`` of wall
clock (or ``--steps``, whichever comes first), and the learning-rate schedule follows the time
spent. Perplexity: ``--eval-windows`` windows of 512 tokens of each text's held-out split.

The load average of the machine is printed before and after: on a shared machine the same
minutes buy fewer steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import warnings

import torch

TEXTS = ("wiki", "lambada")


def recovery(dense: float, pruned: float, healed: float) -> float:
    """(pruned - healed) / (pruned - dense): 1 when healing wins back the whole gap, 0 when nothing."""
    return (pruned - healed) / (pruned - dense)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--amount", type=float, default=0.25)
    parser.add_argument("--methods", default="lorp,shortgpt")
    parser.add_argument("--max-minutes", type=float, default=10.0, help="training budget per method (default: 10)")
    parser.add_argument("--steps", type=int, default=5000, help="at most this many steps (default: 5000, so the time decides)")
    parser.add_argument("--mode", default="lora", choices=("lora", "adjacent"))
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-text", default="wiki")
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    from lorp_lightning import collect_layer_stats, load_model, load_text, prune_layers, select_layers
    from lorp_lightning.evaluation import perplexity, token_windows
    from lorp_lightning.heal import heal, healing_records

    dtype = "float32" if args.mode == "adjacent" else "auto"  # adjacent trains block weights: float32
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    model, tokenizer = load_model(args.model, dtype=dtype, progress=False)
    calibration = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=args.calibration_windows)
    stats = collect_layer_stats(model, calibration.split(4), progress=False)
    evaluation = {text: token_windows(tokenizer, load_text(text, "heldout"), window=512, max_windows=args.eval_windows)
                  for text in TEXTS}

    def perplexities(m) -> dict[str, float]:
        return {text: perplexity(m, windows, batch_size=4) for text, windows in evaluation.items()}

    dense = perplexities(model)
    print(f"{args.model}, {model.dtype}, {torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}; "
          f"started {started}, load average {load_before[0]:.1f}", flush=True)
    print(f"dense perplexity: " + ", ".join(f"{t} {p:.2f}" for t, p in dense.items()), flush=True)
    rows = []
    for method in args.methods.split(","):
        plan = select_layers(stats, args.amount, method=method)
        pruned = prune_layers(model, plan, inplace=False)
        before = perplexities(pruned)
        options = {k: v for k, v in (("rank", args.rank), ("lr", args.lr)) if v is not None}
        heal(pruned, tokenizer, steps=args.steps, max_seconds=60 * args.max_minutes, mode=args.mode,
             text=args.train_text, window=args.window, batch_size=args.batch_size, **options)
        record = healing_records(pruned)[-1]
        after = perplexities(pruned)
        row = {"method": method, "pruned_layers": plan.pruned, "pruned": before, "healed": after,
               "recovery": {t: recovery(dense[t], before[t], after[t]) for t in TEXTS}, "healing": record}
        rows.append(row)
        print(f"{method}: removed {plan.pruned}; {record['num_steps']} steps, {record['tokens']} tokens, "
              f"{record['seconds']:.0f} s; training loss {record['initial_loss']:.3f} -> {record['final_loss']:.3f}", flush=True)
        del pruned

    load_after = os.getloadavg()
    print()
    print(f"| method | blocks removed | text | dense | pruned | healed | recovery | training |")
    print(f"|---|---|---|---|---|---|---|---|")
    for row in rows:
        record = row["healing"]
        training = f"{record['seconds'] / 60:.1f} min, {record['num_steps']} steps"
        for text in TEXTS:
            print(f"| {row['method']} | {', '.join(map(str, row['pruned_layers']))} | {text} | {dense[text]:.2f} | "
                  f"{row['pruned'][text]:.2f} | {row['healed'][text]:.2f} | {row['recovery'][text]:.0%} | {training} |")
    met = all(r["recovery"][t] >= 0.5 and r["healing"]["seconds"] <= 600 for r in rows for t in TEXTS)
    print()
    print(f"target (>= 50% of the gap recovered on every text, <= 10 min of training per method): {'met' if met else 'NOT met'}")
    print(f"load average: {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end (2 CPU cores)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "started": started, "dense": dense, "rows": rows,
                       "load_average": [load_before, load_after], "threads": torch.get_num_threads()}, handle, indent=2)


if __name__ == "__main__":
    main()

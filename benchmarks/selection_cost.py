"""The default's selection against the faithful method's, start to finish, side by side in one run.

Both start from the same calibration windows (32 windows of 512 tokens of the ``wiki``
calibration split, as ``lorp prune`` uses) and include the statistics pass; the default also
checks plans on the model. Runs alternate (faithful, default, faithful, ...) and the median of
each is compared.

    python benchmarks/selection_cost.py [--model smollm2-135m] [--amount 0.25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lorp_lightning.assets import load_model, load_text
from lorp_lightning.evaluation import token_windows
from lorp_lightning.methods import DEFAULT_METHOD, select_layers
from lorp_lightning.stats import collect_layer_stats


def selection(model, windows, amount, method) -> tuple[float, list[int], dict]:
    start = time.perf_counter()
    stats = collect_layer_stats(model, windows.split(4), progress=False)
    plan = select_layers(stats, amount, method=method, model=model, windows=windows)
    return time.perf_counter() - start, plan.pruned, plan.cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--amount", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, progress=False)
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=32)
    times = {"lorp": [], DEFAULT_METHOD: []}
    for _ in range(args.repeats):
        for method in times:
            seconds, pruned, cost = selection(model, windows, args.amount, method)
            times[method].append(seconds)
            print(f"  {method:>12}: {seconds:6.1f} s  {pruned}  window passes {cost['statistics_windows']} + {cost['check_windows']}",
                  flush=True)
    faithful, default = (statistics.median(times[m]) for m in times)
    print(f"{args.model}, amount {args.amount}, {model.dtype}, {torch.get_num_threads()} threads: faithful lorp {faithful:.1f} s, "
          f"{DEFAULT_METHOD} {default:.1f} s (medians of {args.repeats}); ratio {default / faithful:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()

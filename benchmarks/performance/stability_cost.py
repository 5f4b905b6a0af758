"""Cost of plan stability (``--stability B``) against the calibration pass it reuses.

    python benchmarks/performance/stability_cost.py [--models smollm2-135m,gemma3-270m,qwen2.5-0.5b] [--resamples 20]

For each model (dtype="auto", as ``lorp analyze`` runs it), on the first 32 windows of 512 tokens of the
`wiki` calibration split in batches of 4 (the CLI's defaults), in one process:

- the calibration pass, plain and keeping the per-window sums (``per_window=True``), interleaved,
  ``--repeats`` times each; the median of each, and their ratio;
- ``plan_stability`` of each method that reads the statistics alone at a quarter of the blocks, B
  resamples: its seconds (selection only; the full-data plan not counted), and their ratio to the
  plain pass. The issue's target: under 5% of the calibration pass for B = 20.

Prints one table per model; stored in benchmarks/results/stability_cost.txt by
``... | tee benchmarks/results/stability_cost.txt``.
"""

from __future__ import annotations

import argparse
import statistics
import time

METHODS = ("lorp", "shortgpt", "streamline", "angular")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-0.5b")
    parser.add_argument("--resamples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from lorp_lightning import collect_layer_stats, load_model, plan_stability
    from lorp_lightning.data import calibration_windows

    for name in args.models.split(","):
        model, tokenizer = load_model(name, progress=False)
        windows = calibration_windows(tokenizer, "wiki", window=512, num_windows=32)
        seconds: dict[bool, list[float]] = {False: [], True: []}
        stats = None
        for _ in range(args.repeats):
            for per_window in (False, True):
                start = time.perf_counter()
                result = collect_layer_stats(model, windows.split(4), progress=False, per_window=per_window)
                seconds[per_window].append(time.perf_counter() - start)
                stats = result if per_window else stats
        plain, kept = statistics.median(seconds[False]), statistics.median(seconds[True])
        print(f"\n{name} ({next(model.parameters()).dtype}), 32 x 512 tokens, median of {args.repeats}:")
        print(f"  calibration pass {plain:.1f} s; keeping the per-window sums {kept:.1f} s ({kept / plain:.3f}x)")
        print(f"  {'method':<11} {'B':>5} {'seconds':>8} {'of the pass':>12} {'agreement':>10} {'mean overlap':>13}")
        for method in METHODS:
            report = plan_stability(stats, 0.25, method, args.resamples)
            print(
                f"  {method:<11} {args.resamples:>5} {report.seconds:>8.2f} {report.seconds / plain:>11.1%} "
                f"{report.agreement:>10.2f} {report.mean_overlap:>13.2f}"
            )


if __name__ == "__main__":
    main()

"""How many check windows to run per forward pass: seconds and memory of the loss checks, side by side.

``PlanLoss`` runs a selection's check windows (8 windows of 256 tokens, the last 128 predicted tokens scored) in
batches of ``batch_windows`` per forward pass; by default as many as keep their scored logits, counted in float32,
within ``search.LOGITS_BYTES``. For each model and each batch size given, a fresh Python process loads the model
(bf16), builds the checks and asks four plans (one pass of the dense prefix, then the four plans from it), while a
thread samples its resident memory every 5 ms (``scale.Phases``). Runs alternate between the batch sizes, ``--repeats`` times; the
script prints each run, then per model the median seconds and the peak growth above the start of the checks, their
ratios against the first batch size, and whether every plan's loss came out the same bit for bit.

    python benchmarks/performance/check_batch.py [--models qwen2.5-1.5b qwen2.5-0.5b gemma3-270m smollm2-135m] \
        [--batches 8 default] [--repeats 2]

A batch of ``default`` is the library's choice for that model. Threads: what torch takes (set ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from scale import Phases

PLANS = ([10, 11, 12, 13], [12, 13, 14, 15], [5, 6, 7], [14, 15, 16])


def child(model_name: str, batch: str) -> None:
    import time

    import torch

    from lorp_lightning import load_model, load_text
    from lorp_lightning.evaluation import token_windows
    from lorp_lightning.methods import CHECK_TOKENS, CHECK_WINDOWS, SCORE_LAST
    from lorp_lightning.search import PlanLoss

    phases = Phases()
    model, tokenizer = load_model(model_name, dtype=torch.bfloat16, progress=False)
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=CHECK_WINDOWS)
    windows = windows[:, :CHECK_TOKENS]
    with phases.phase("checks") as phase:
        checks = PlanLoss(model, windows, score_last=SCORE_LAST, batch_windows=None if batch == "default" else int(batch))
        began = time.perf_counter()
        losses = [checks(plan) for plan in PLANS]
        seconds = time.perf_counter() - began
    growth = phase["peak_rss_mb"] - phase["start_rss_mb"]
    print(json.dumps({"batch_windows": checks.batch_windows, "seconds": seconds, "growth_mb": growth, "losses": losses}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["qwen2.5-1.5b", "qwen2.5-0.5b", "gemma3-270m", "smollm2-135m"])
    parser.add_argument("--batches", nargs=2, default=["8", "default"], help="two batch sizes, or 'default'")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    for name in args.models:
        runs: dict[str, list[dict]] = {b: [] for b in args.batches}
        for _ in range(args.repeats):
            for batch in args.batches:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, batch], check=True, capture_output=True, text=True
                ).stdout
                run = json.loads(out.strip().splitlines()[-1])
                runs[batch].append(run)
                print(
                    f"  {name} {run['batch_windows']} window(s) per pass: {run['seconds']:.1f} s, "
                    f"peak growth {run['growth_mb']:.0f} MB",
                    flush=True,
                )
        first, second = (runs[b] for b in args.batches)
        time_a, time_b = (statistics.median(r["seconds"] for r in rs) for rs in (first, second))
        mem_a, mem_b = (statistics.median(r["growth_mb"] for r in rs) for rs in (first, second))
        same = all(r["losses"] == first[0]["losses"] for r in first + second)
        print(
            f"{name}: {first[0]['batch_windows']} -> {second[0]['batch_windows']} windows per pass: "
            f"{time_a:.1f} s -> {time_b:.1f} s ({time_b / time_a:.2f}x the time), peak growth {mem_a:.0f} -> "
            f"{mem_b:.0f} MB (medians of {args.repeats}); every plan's loss the same bit for bit: {same}",
            flush=True,
        )


if __name__ == "__main__":
    main()

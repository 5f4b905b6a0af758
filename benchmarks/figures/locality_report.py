"""RLS, K, clusters and the 25% LoRP plan of each bundled model, from one calibration pass each.

    python benchmarks/figures/locality_report.py [--models ...] [--windows 32] [--window 512] [--amount 0.25]

Calibration: the first ``--windows`` windows of ``--window`` tokens of the ``wiki`` calibration
split, bf16, batch size 4. Prints one block per model.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-0.5b")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--amount", type=float, default=0.25)
    args = parser.parse_args()

    from lorp_lightning import collect_layer_stats, load_model, load_text, select_layers
    from lorp_lightning.evaluation import token_windows

    text = load_text("wiki", "calibration")
    for name in args.models.split(","):
        model, tokenizer = load_model(name, progress=False)  # dtype="auto"
        windows = token_windows(tokenizer, text, window=args.window, max_windows=args.windows)
        start = time.perf_counter()
        stats = collect_layer_stats(model, windows.split(4), progress=False)
        seconds = time.perf_counter() - start
        plan = select_layers(stats, args.amount)
        print(f"{name} ({model.dtype}): {windows.shape[0]} x {windows.shape[1]} tokens of wiki calibration, {seconds:.1f} s")
        print(f"  RLS {plan.rls:.3f}, K {plan.num_clusters}")
        print(f"  {plan}")
        del model


if __name__ == "__main__":
    main()

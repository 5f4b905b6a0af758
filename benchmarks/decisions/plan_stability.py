"""Do the plans of every method flip between bf16 and float32? (The check behind the notebooks' budgets.)

    python benchmarks/decisions/plan_stability.py [--windows 8,16] [--window 256] [--models smollm2-135m,...]
    python benchmarks/decisions/plan_stability.py --windows 8 --amounts 0.25 --methods lorp_search   # notebook 2

For each bundled model, collects the statistics in bfloat16 and in float32 from the first W
windows of the `wiki` calibration split (W from --windows), and prints, for every method and
budget of notebook 3 (1/8, 1/4, 1/3 of the blocks; or those given), the plans that differ
between the two precisions. Methods that try plans on the model check them on the same windows.
A plan that differs sits on a near-tie that the two precisions break differently,
so a notebook that shows it exactly would hold on one CPU and not another.
"""

from __future__ import annotations

import argparse

AMOUNTS = "0.125,0.25,0.33"
METHODS = "lorp,shortgpt,streamline,angular,random,last"  # notebook 3's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-0.5b")
    parser.add_argument("--windows", default="8,16", help="numbers of calibration windows to try")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--amounts", default=AMOUNTS)
    parser.add_argument("--methods", default=METHODS)
    args = parser.parse_args()
    amounts = [float(a) for a in args.amounts.split(",")]
    methods = args.methods.split(",")

    from lorp_lightning import collect_layer_stats, load_model, load_text, select_layers
    from lorp_lightning.evaluation import token_windows

    text = load_text("wiki", "calibration")
    counts = [int(n) for n in args.windows.split(",")]
    for name in args.models.split(","):
        plans: dict[tuple, list[int]] = {}
        for dtype in ("bfloat16", "float32"):
            model, tokenizer = load_model(name, dtype=dtype, progress=False)
            for count in counts:
                windows = token_windows(tokenizer, text, window=args.window, max_windows=count)
                stats = collect_layer_stats(model, windows.split(4), progress=False)
                for amount in amounts:
                    for method in methods:
                        plans[dtype, count, amount, method] = select_layers(
                            stats, amount, method=method, model=model, windows=windows
                        ).pruned
            del model
        for count in counts:
            flips = [
                f"{method} at {amount}: {plans['bfloat16', count, amount, method]} in bf16, "
                f"{plans['float32', count, amount, method]} in float32"
                for amount in amounts
                for method in methods
                if plans["bfloat16", count, amount, method] != plans["float32", count, amount, method]
            ]
            print(
                f"{name}, {count} x {args.window} tokens: "
                + ("; ".join(flips) if flips else f"all {len(amounts) * len(methods)} plans agree"),
                flush=True,
            )


if __name__ == "__main__":
    main()

"""The default's selection against the faithful method's, start to finish, side by side in one run.

Both start from the same calibration windows (32 windows of 512 tokens of the ``wiki``
calibration split, as ``lorp prune`` uses) and include the statistics pass; the default also
checks plans on the model. Runs alternate (faithful, default, faithful, ...) and the median of
each is compared.

With ``--batching``, the default's search then runs again on one statistics pass, alternating
one check window per forward pass with the default batch of windows
(``PlanLoss(batch_windows=...)``), and the script prints the ratio, whether the plans agree and
whether every window's loss came out the same bit for bit.

    python benchmarks/performance/selection_cost.py [--model smollm2-135m] [--amount 0.25] [--repeats 3] [--batching]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lorp_lightning.assets import load_model, load_text
from lorp_lightning.evaluation import token_windows
from lorp_lightning.methods import CHECK_TOKENS, CHECK_WINDOWS, DEFAULT_METHOD, SCORE_LAST, select_layers
from lorp_lightning.search import PlanLoss
from lorp_lightning.stats import collect_layer_stats


def selection(model, windows, amount, method) -> tuple[float, object]:
    start = time.perf_counter()
    stats = collect_layer_stats(model, windows.split(4), progress=False)
    plan = select_layers(stats, amount, method=method, model=model, windows=windows)
    return time.perf_counter() - start, plan


def batching(model, windows, amount, repeats: int) -> None:
    """The default's checks, one window per forward pass against the default batch, alternating."""
    stats = collect_layer_stats(model, windows.split(4), progress=False)
    checks = windows[:CHECK_WINDOWS, :CHECK_TOKENS]
    times: dict[int, list[float]] = {}
    losses, plans = {}, {}
    for _ in range(repeats):
        for batch in (1, None):
            loss = PlanLoss(model, checks, score_last=SCORE_LAST, batch_windows=batch)
            start = time.perf_counter()
            plan = select_layers(stats, amount, method=DEFAULT_METHOD, shared_checks=loss)
            times.setdefault(loss.batch_windows, []).append(time.perf_counter() - start)
            losses[loss.batch_windows], plans[loss.batch_windows] = loss.window_losses, plan.pruned
            print(
                f"  {loss.batch_windows} window(s) per pass: {times[loss.batch_windows][-1]:6.1f} s  {plan.pruned}  "
                f"{loss.plans_checked} plans, {loss.window_passes} window passes",
                flush=True,
            )
    one, batched = (statistics.median(times[b]) for b in times)
    (_, alone), (size, together) = losses.items()
    print(
        f"{DEFAULT_METHOD}'s checks with {size} windows per pass instead of 1: {one:.1f} s -> {batched:.1f} s, "
        f"{one / batched:.2f}x (medians of {repeats}); same plan: {len(set(map(tuple, plans.values()))) == 1}; "
        f"every window's loss the same bit for bit: {alone == together}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--amount", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batching", action="store_true", help="then time the checks one window per pass against batched")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, progress=False)
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=32)
    times = {"lorp": [], DEFAULT_METHOD: []}
    for _ in range(args.repeats):
        for method in times:
            seconds, plan = selection(model, windows, args.amount, method)
            times[method].append(seconds)
            print(
                f"  {method:>12}: {seconds:6.1f} s  {plan.pruned}  window passes {plan.cost['statistics_windows']} + "
                f"{plan.cost['check_windows']}",
                flush=True,
            )
    faithful, default = (statistics.median(times[m]) for m in times)
    print(
        f"{args.model}, amount {args.amount}, {model.dtype}, {torch.get_num_threads()} threads: faithful lorp {faithful:.1f} s, "
        f"{DEFAULT_METHOD} {default:.1f} s (medians of {args.repeats}); ratio {default / faithful:.2f}x (target <= 3x)"
    )
    if args.batching:
        batching(model, windows, args.amount, args.repeats)


if __name__ == "__main__":
    main()

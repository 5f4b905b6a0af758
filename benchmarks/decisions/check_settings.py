"""How many check windows, and how many scored tokens each, the loss checks need: decided on calibration text only.

For one model and budget, ``lorp_search`` (and optionally ``sleb``) choose plans with loss checks of
different settings on the first windows of the ``wiki`` calibration split. Each chosen plan is then
scored on OTHER windows of the same calibration split (windows 32-55, never seen by any check and
not part of the statistics pass), every token scored. No held-out text is read.

    python benchmarks/decisions/check_settings.py [--model smollm2-135m] [--amount 0.25] [--methods lorp_search]
"""

from __future__ import annotations

import argparse
import time

import torch
from decision_data import decision_data

from lorp_lightning.methods import select_layers
from lorp_lightning.search import PlanLoss

SETTINGS = ((4, 512, 256), (8, 512, 256), (8, 256, 128), (16, 256, 128))  # (check windows, tokens each, scored tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--amount", type=float, default=0.25)
    parser.add_argument("--methods", nargs="+", default=["lorp_search"])
    parser.add_argument("--validation-windows", type=int, default=24)
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[",".join(map(str, s)) for s in SETTINGS],
        help="check windows,tokens per window,scored tokens triples (default: %(default)s)",
    )
    args = parser.parse_args()
    model, _, calibration, validation, stats = decision_data(args.model, args.validation_windows)
    score = PlanLoss(model, validation, score_last=None)
    print(
        f"{args.model}, amount {args.amount}, dtype {model.dtype}; validation: {len(validation)} other calibration "
        f"windows of 512 tokens, all tokens scored"
    )
    for method in args.methods:
        for setting in args.settings:
            check_windows, check_tokens, score_last = map(int, setting.split(","))
            start = time.perf_counter()
            plan = select_layers(
                stats,
                args.amount,
                method=method,
                model=model,
                windows=calibration,
                check_windows=check_windows,
                check_tokens=check_tokens,
                score_last=score_last,
            )
            seconds = time.perf_counter() - start
            print(
                f"{method:>12} check {check_windows:>2} windows of {check_tokens} tokens, last {score_last} scored: {plan.pruned} "
                f"validation loss {score(plan.pruned):.4f}; {plan.cost['plans_checked']} plans, "
                f"{plan.cost['check_windows']} window passes, {seconds:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

"""Recovery by healing: SmolLM2-135M pruned by 25% with LoRP and with ShortGPT, then healed;
with ``--distill``, healing by the next-token loss against healing by distillation from the dense model.

For each method: held-out perplexity on ``wiki`` and ``lambada`` of the dense, the pruned and the
healed model, the recovery (pruned - healed) / (pruned - dense) on each text, and the training
time. Target: at least half of the gap recovered with at most 10 minutes of training per method
on 2 CPU cores.

    python benchmarks/decisions/heal_recovery.py [--model smollm2-135m] [--amount 0.25] [--methods lorp,shortgpt]
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

``--distill`` (issue 20): one method (default: the default method, ``lorp_search``, its plans
checked on the 32 calibration windows), and side by side in one run the dense model, the pruned
one, the pruned one healed with the next-token loss, and the pruned one healed by distillation
from the dense model (``heal(..., teacher=model)``: KL between the dense model's next-token
distributions and the student's), each healing on the same ``--max-minutes`` budget, from the
same pruned model, with the same seed, windows and learning rate. For each: held-out perplexity
on ``wiki`` and ``lambada`` (``--eval-windows`` windows of 512 tokens), its ratio to the dense
model's and the share of the pruning's gap won back, and zero-shot accuracy on the first
``--zero-shot-limit`` documents of each task (``evaluate_zero_shot``; 0 skips it). The per-step
training losses of both healings go to ``--json`` (for a loss-curve plot; the next-token loss of
one, the KL of the other). Target: the distilled model's wiki perplexity at most 1.3x the dense
model's, and lower than the next-token healing's on both texts.

    python benchmarks/decisions/heal_recovery.py --distill [--method lorp_search] [--lm-weight 0] [--max-minutes 10]
                                       [--eval-windows 40] [--zero-shot-limit 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
import warnings

import torch

from lorp_lightning._io import write_json
from lorp_lightning.healing import LossCurve

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
    parser.add_argument(
        "--distill",
        action="store_true",
        help="compare healing with the next-token loss and by distillation from the dense model (issue 20)",
    )
    parser.add_argument("--method", default=None, help="--distill: the pruning method (default: lorp_search, the default)")
    parser.add_argument(
        "--lm-weight",
        type=float,
        default=0.0,
        help="--distill: the share of the next-token loss in the distillation loss (default: 0)",
    )
    parser.add_argument(
        "--zero-shot-limit",
        type=int,
        default=100,
        help="--distill: zero-shot on the first N documents of each task; 0 skips it (default: 100)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)

    from lorp_lightning import collect_layer_stats, load_model, load_text, prune_layers, select_layers
    from lorp_lightning.evaluation import perplexity, token_windows
    from lorp_lightning.healing import heal, healing_records

    dtype = "float32" if args.mode == "adjacent" else "auto"  # adjacent trains block weights: float32
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    model, tokenizer = load_model(args.model, dtype=dtype, progress=False)
    calibration = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=args.calibration_windows)
    stats = collect_layer_stats(model, calibration.split(4), progress=False)
    evaluation = {
        text: token_windows(tokenizer, load_text(text, "heldout"), window=512, max_windows=args.eval_windows) for text in TEXTS
    }

    def perplexities(m) -> dict[str, float]:
        return {text: perplexity(m, windows, batch_size=4) for text, windows in evaluation.items()}

    def plan_of(method: str):
        """As `lorp prune` chooses: methods that try plans on the model check them on the calibration windows."""
        from lorp_lightning.methods import get_method

        reads_model = get_method(method).reads_model
        return select_layers(
            stats, args.amount, method=method, model=model if reads_model else None, windows=calibration if reads_model else None
        )

    dense = perplexities(model)
    print(
        f"{args.model}, {model.dtype}, {torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}; "
        f"started {started}, load average {load_before[0]:.1f}",
        flush=True,
    )
    print("dense perplexity: " + ", ".join(f"{t} {p:.2f}" for t, p in dense.items()), flush=True)
    if args.distill:
        compare_distillation(args, model, tokenizer, plan_of, perplexities, dense, started, load_before)
        return
    rows = []
    for method in args.methods.split(","):
        plan = plan_of(method)
        pruned = prune_layers(model, plan, inplace=False)
        before = perplexities(pruned)
        options = {k: v for k, v in (("rank", args.rank), ("lr", args.lr)) if v is not None}
        heal(
            pruned,
            tokenizer,
            steps=args.steps,
            max_seconds=60 * args.max_minutes,
            mode=args.mode,
            text=args.train_text,
            window=args.window,
            batch_size=args.batch_size,
            **options,
        )
        record = healing_records(pruned)[-1]
        after = perplexities(pruned)
        row = {
            "method": method,
            "pruned_layers": plan.pruned,
            "pruned": before,
            "healed": after,
            "recovery": {t: recovery(dense[t], before[t], after[t]) for t in TEXTS},
            "healing": record,
        }
        rows.append(row)
        print(
            f"{method}: removed {plan.pruned}; {record['num_steps']} steps, {record['tokens']} tokens, "
            f"{record['seconds']:.0f} s; training loss {record['initial_loss']:.3f} -> {record['final_loss']:.3f}",
            flush=True,
        )
        del pruned

    load_after = os.getloadavg()
    print()
    print("| method | blocks removed | text | dense | pruned | healed | recovery | training |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        record = row["healing"]
        training = f"{record['seconds'] / 60:.1f} min, {record['num_steps']} steps"
        for text in TEXTS:
            print(
                f"| {row['method']} | {', '.join(map(str, row['pruned_layers']))} | {text} | {dense[text]:.2f} | "
                f"{row['pruned'][text]:.2f} | {row['healed'][text]:.2f} | {row['recovery'][text]:.0%} | {training} |"
            )
    met = all(r["recovery"][t] >= 0.5 and r["healing"]["seconds"] <= 600 for r in rows for t in TEXTS)
    print()
    print(f"target (>= 50% of the gap recovered on every text, <= 10 min of training per method): {'met' if met else 'NOT met'}")
    print(f"load average: {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end (2 CPU cores)")
    if args.json:
        write_json(
            args.json,
            {
                "args": vars(args),
                "started": started,
                "dense": dense,
                "rows": rows,
                "load_average": [load_before, load_after],
                "threads": torch.get_num_threads(),
            },
        )


def compare_distillation(args, model, tokenizer, plan_of, perplexities, dense, started, load_before) -> None:
    """Dense, pruned, healed with the next-token loss, healed by distillation from the dense model: one table."""
    from lorp_lightning import DEFAULT_METHOD, prune_layers
    from lorp_lightning.healing import heal, healing_records

    zero_shot = None
    if args.zero_shot_limit:
        from lorp_lightning.zeroshot import evaluate_zero_shot

        def zero_shot(m):
            return evaluate_zero_shot(m, tokenizer, limit=args.zero_shot_limit, progress=False)

    method = args.method or DEFAULT_METHOD
    start = time.perf_counter()
    plan = plan_of(method)
    print(f"{plan} (selected in {time.perf_counter() - start:.0f} s)", flush=True)
    pruned = prune_layers(model, plan, inplace=False)
    results = {"dense": {"perplexity": dense}, "pruned": {"perplexity": perplexities(pruned)}}
    if zero_shot is not None:
        results["dense"]["zero_shot"] = zero_shot(model)
        results["pruned"]["zero_shot"] = zero_shot(pruned)
    print("pruned perplexity: " + ", ".join(f"{t} {p:.2f}" for t, p in results["pruned"]["perplexity"].items()), flush=True)
    options = {k: v for k, v in (("rank", args.rank), ("lr", args.lr)) if v is not None}
    for name, distill in (("healed_lm", {}), ("healed_distill", {"teacher": model, "lm_weight": args.lm_weight})):
        curve = LossCurve()
        healed = heal(
            pruned,
            tokenizer,
            steps=args.steps,
            max_seconds=60 * args.max_minutes,
            mode=args.mode,
            text=args.train_text,
            window=args.window,
            batch_size=args.batch_size,
            inplace=False,
            trainer_options={"callbacks": [curve]},
            **options,
            **distill,
        )
        record = healing_records(healed)[-1]
        results[name] = {"perplexity": perplexities(healed), "healing": record, "losses": curve.losses}
        if zero_shot is not None:
            results[name]["zero_shot"] = zero_shot(healed)
        loss = "next-token loss" if not distill else "KL to the dense model"
        print(
            f"{name}: {record['num_steps']} steps, {record['tokens']} tokens, {record['seconds']:.0f} s; training {loss} "
            f"{record['initial_loss']:.3f} -> {record['final_loss']:.3f}; perplexity "
            + ", ".join(f"{t} {p:.2f}" for t, p in results[name]["perplexity"].items()),
            flush=True,
        )
        del healed
    for name, result in results.items():
        result["ratio_to_dense"] = {t: result["perplexity"][t] / dense[t] for t in TEXTS}
        if name.startswith("healed"):
            result["gap_recovered"] = {
                t: recovery(dense[t], results["pruned"]["perplexity"][t], result["perplexity"][t]) for t in TEXTS
            }

    load_after = os.getloadavg()
    print()
    print(
        f"{args.model}, {method} at {args.amount}: removed {plan.pruned}; healing {args.max_minutes:g} min each, "
        f"same seed, windows and learning rate"
    )
    print()
    print("| model | text | perplexity | / dense | gap recovered | training |")
    print("|---|---|---|---|---|---|")
    for name, result in results.items():
        record = result.get("healing")
        training = "" if record is None else f"{record['seconds'] / 60:.1f} min, {record['num_steps']} steps"
        for text in TEXTS:
            gap = result.get("gap_recovered", {}).get(text)
            print(
                f"| {name} | {text} | {result['perplexity'][text]:.2f} | {result['ratio_to_dense'][text]:.3f} | "
                f"{'' if gap is None else f'{gap:.0%}'} | {training} |"
            )
    if zero_shot is not None:
        tasks = [t for t in results["dense"]["zero_shot"] if t != "average"]
        print()
        print("| model | " + " | ".join(tasks) + " | average acc |")
        print("|---|" + "---|" * (len(tasks) + 1))
        for name, result in results.items():
            cells = " | ".join(f"{result['zero_shot'][t]['acc']:.3f}" for t in tasks)
            print(f"| {name} | {cells} | {result['zero_shot']['average']['acc']:.3f} |")
    distilled, lm = results["healed_distill"]["perplexity"], results["healed_lm"]["perplexity"]
    within = distilled["wiki"] <= 1.3 * dense["wiki"]
    better = all(distilled[t] < lm[t] for t in TEXTS)
    in_time = all(results[n]["healing"]["seconds"] <= 60 * args.max_minutes for n in ("healed_lm", "healed_distill"))
    print()
    print(
        f"target (distilled wiki perplexity <= 1.3x dense: {distilled['wiki'] / dense['wiki']:.3f}x, "
        f"{'yes' if within else 'no'}; better than next-token healing on "
        f"{' and '.join(TEXTS)}: {'yes' if better else 'no'}; within {args.max_minutes:g} min: "
        f"{'yes' if in_time else 'no'}): {'met' if within and better and in_time else 'NOT met'}"
    )
    print(f"load average: {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end")
    if args.json:
        write_json(
            args.json,
            {
                "args": vars(args),
                "started": started,
                "method": method,
                "pruned_layers": plan.pruned,
                "results": results,
                "target": {"within_1_3x_dense": within, "better_than_lm_healing": better, "within_budget": in_time},
                "load_average": [load_before, load_after],
                "threads": torch.get_num_threads(),
            },
        )


if __name__ == "__main__":
    main()

"""Zero-shot accuracy of a dense bundled model on the nine tasks (lm-evaluation-harness, offline).

Runs lm-eval's own task configs over the local copies of the splits lm-eval evaluates (see
``lorp_lightning.zeroshot``) and prints one row per task: documents, acc, acc_norm (where
lm-eval defines it), seconds. With ``--limit N`` only the first N documents of each task are
evaluated (a quick check; the figures are then not comparable to published ones), and a last
column projects the time of the full split from the tokens the model would process (the limited
run's seconds per token, times the full split's tokens).

The full run is long on a CPU: every choice of every document is a forward pass, about 4.3
million tokens in all for the nine tasks with SmolLM2's tokenizer (HellaSwag alone 3.1 million).
On the project's 2-core machine (AMX bfloat16 units), one thread per task, the nine tasks took
1.6 hours in bfloat16 (HellaSwag 73 minutes) and float32 about 2.3 times as long; see
docs/results.md for the figures of both dtypes.

    python benchmarks/decisions/zeroshot_dense.py [--model smollm2-135m] [--limit N] [--tasks copa piqa]
                                        [--batch-size 8] [--dtype auto|float32|bfloat16] [--threads N]
                                        [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from lorp_lightning._io import write_json
from lorp_lightning.assets import load_model
from lorp_lightning.zeroshot import (
    ZERO_SHOT_TASKS,
    _quiet_lm_eval,  # lm-eval's progress bars off while counting tokens
    build_zero_shot_task,
    evaluate_zero_shot,
    zero_shot_task_info,
)

DTYPES = ("auto", "bfloat16", "float32")


def _processed_tokens(tokenizer, task, limit: int | None) -> int:
    """Tokens lm-eval's HFLM feeds the model for the first ``limit`` documents of ``task``.

    One sequence per request (context + continuation, less its last token), except that
    requests sharing a context with a one-token continuation share one sequence (HFLM's logits
    cache). Close enough to project times; not an exact account of padding.
    """
    with _quiet_lm_eval(progress=False):
        task.build_all_requests(limit=limit, rank=0, world_size=1)
    seen, total = set(), 0
    for instance in task.instances:
        context, continuation = instance.arguments
        whole = len(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
        n_context = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        if whole - n_context <= 1:
            if context in seen:
                continue
            seen.add(context)
        total += whole - 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a bundled model name or a local model directory")
    parser.add_argument("--tasks", nargs="+", default=list(ZERO_SHOT_TASKS), choices=ZERO_SHOT_TASKS)
    parser.add_argument("--limit", type=int, default=None, help="first N documents per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's). On cores shared with other work, 1 can be "
        "several times faster than more: OpenMP threads spin-wait on busy cores",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, progress=False)
    args.dtype = str(model.dtype).removeprefix("torch.")  # what "auto" chose, for the printout and the record
    device = next(model.parameters()).device
    print(
        f"model {args.model} ({args.dtype}, {device}, {torch.get_num_threads()} threads), "
        f"limit {args.limit if args.limit else 'none (full splits)'}, batch size {args.batch_size}",
        flush=True,
    )
    results = evaluate_zero_shot(
        model, tokenizer, tasks=tuple(args.tasks), limit=args.limit, batch_size=args.batch_size, progress=True
    )

    projected = {}
    if args.limit is not None:
        for name in args.tasks:
            task = build_zero_shot_task(name)
            limited, full = _processed_tokens(tokenizer, task, args.limit), _processed_tokens(tokenizer, task, None)
            projected[name] = {
                "tokens_limited": limited,
                "tokens_full": full,
                "seconds_full": results[name]["seconds"] * full / max(limited, 1),
            }

    info = {row["task"]: row for row in zero_shot_task_info()}
    header = f"{'task':<14} {'split':<10} {'docs':>6} {'acc':>7} {'acc_norm':>8} {'seconds':>8}"
    if projected:
        header += f" {'full split (projected)':>23}"
    print("\n" + header + "\n" + "-" * len(header))
    for name in args.tasks:
        r = results[name]
        norm = f"{r['acc_norm']:.4f}" if "acc_norm" in r else "-"
        line = f"{name:<14} {info[name]['split']:<10} {r['num_examples']:>6} {r['acc']:>7.4f} {norm:>8} {r['seconds']:>8.1f}"
        if projected:
            p = projected[name]
            line += f" {p['seconds_full'] / 3600:>8.2f} h ({p['tokens_full'] / 1e6:.2f}M tok)"
        print(line)
    print("-" * len(header))
    total = sum(results[n]["seconds"] for n in args.tasks)
    line = f"{'average acc':<14} {'':<10} {'':>6} {results['average']['acc']:>7.4f} {'':>8} {total:>8.1f}"
    if projected:
        line += f" {sum(p['seconds_full'] for p in projected.values()) / 3600:>8.2f} h in all"
    print(line)
    print(f"wall time {time.perf_counter() - start:.1f} s")

    if args.json:
        record = {
            "model": args.model,
            "dtype": args.dtype,
            "device": str(device),
            "limit": args.limit,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(),
            "results": results,
            "projected_full_run": projected or None,
        }
        write_json(args.json, record)  # strict JSON: an undefined stderr (NaN) is null
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Cost of collecting layer statistics, against a plain forward pass over the same batches.

    python benchmarks/stats_overhead.py [--model smollm2-135m] [--batches 8] [--window 512] [--repeats 3]

Both sides run the model in bf16 over the same batches of real calibration text (batch size 1),
interleaved, in one process; each side's time is the median over repeats. The plain forward is
the whole causal LM (``model(input_ids)``, as a user would run it); ``collect_layer_stats`` skips
the language-model head, which statistics do not need; the backbone forward (the same model
without its head) is timed too, so the cost of the hooks and the statistics alone is visible.

Memory: a thread samples the process's resident memory (RSS) every 2 ms; the peak during each
side is reported, and the difference is compared with the bound the statistics are designed to
keep: one float32 copy of the N+1 hidden states of one batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from lorp_lightning import collect_layer_stats, load_model, load_text
    from lorp_lightning.evaluation import PeakRSS, token_windows

    model, tokenizer = load_model(args.model, progress=False)  # dtype="auto"
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=args.window, max_windows=args.batches)
    batches = list(windows.split(1))

    @torch.no_grad()
    def plain() -> None:
        for batch in batches:
            model(input_ids=batch, use_cache=False)

    @torch.no_grad()
    def backbone() -> None:
        for batch in batches:
            model.base_model(input_ids=batch, use_cache=False)

    def stats() -> None:
        collect_layer_stats(model, batches, progress=False)

    plain()  # warm-up
    times: dict[str, list[float]] = {"plain forward": [], "backbone forward": [], "collect_layer_stats": []}
    for _ in range(args.repeats):
        for name, run in (("plain forward", plain), ("backbone forward", backbone), ("collect_layer_stats", stats)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    plain_s = statistics.median(times["plain forward"])
    stats_s = statistics.median(times["collect_layer_stats"])
    backbone_s = statistics.median(times["backbone forward"])

    with PeakRSS() as plain_memory:
        plain()
    with PeakRSS() as stats_memory:
        stats()
    n = model.config.num_hidden_layers
    bound = (n + 1) * batches[0].numel() * model.config.hidden_size * 4
    print(f"model {args.model} ({model.dtype}), {len(batches)} x {args.window} tokens, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"plain forward        {plain_s:8.2f} s")
    print(f"backbone forward     {backbone_s:8.2f} s   (the same without the language-model head)")
    print(f"collect_layer_stats  {stats_s:8.2f} s")
    print(f"time ratio to the plain forward     {stats_s / plain_s:6.3f}   (target <= 1.10)")
    print(f"time ratio to the backbone forward  {stats_s / backbone_s:6.3f}   (the cost of the hooks and the statistics alone)")
    mib = 2**20
    print(f"peak RSS, plain      {plain_memory.peak / mib:8.1f} MiB")
    print(f"peak RSS, stats      {stats_memory.peak / mib:8.1f} MiB")
    print(f"extra peak memory    {(stats_memory.peak - plain_memory.peak) / mib:8.1f} MiB   "
          f"(bound: one float32 copy of the N+1={n + 1} states of one batch = {bound / mib:.1f} MiB)")


if __name__ == "__main__":
    main()

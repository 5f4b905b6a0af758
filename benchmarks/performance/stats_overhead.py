"""Cost of collecting layer statistics, against a plain forward pass over the same batches.

    python benchmarks/performance/stats_overhead.py [--model smollm2-135m] [--batches 8] [--window 512] [--repeats 3] [--device cpu]

Both sides run the model in bf16 over the same batches of real calibration text (batch size 1),
interleaved, in one process; each side's time is the median over repeats. The plain forward is
the whole causal LM (``model(input_ids)``, as a user would run it); ``collect_layer_stats`` skips
the language-model head, which statistics do not need; the backbone forward (the same model
without its head) is timed too, so the cost of the hooks and the statistics alone is visible.

Memory: on the CPU a thread samples the process's resident memory (RSS) every 2 ms; on a GPU
(``--device cuda``) torch's peak allocated memory is read. The peak during each side is
reported, and the difference is compared with the bound the statistics are designed to keep: one
float32 copy of the N+1 hidden states of one batch. On a GPU each timed side ends with a
synchronisation, so that the time is the work's, not the launch's.
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
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = parser.parse_args()

    from lorp_lightning import collect_layer_stats, load_model, load_text
    from lorp_lightning.evaluation import PeakRSS, token_windows

    model, tokenizer = load_model(args.model, progress=False, device=args.device)  # dtype="auto"
    device = next(model.parameters()).device
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=args.window, max_windows=args.batches)
    batches = [batch.to(device) for batch in windows.split(1)]

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

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
            synchronise()
            start = time.perf_counter()
            run()
            synchronise()
            times[name].append(time.perf_counter() - start)
    plain_s = statistics.median(times["plain forward"])
    stats_s = statistics.median(times["collect_layer_stats"])
    backbone_s = statistics.median(times["backbone forward"])

    def peak(run) -> float:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            run()
            return float(torch.cuda.max_memory_allocated(device))
        with PeakRSS() as memory:
            run()
        return float(memory.peak)

    plain_peak, stats_peak = peak(plain), peak(stats)
    n = model.config.num_hidden_layers
    bound = (n + 1) * batches[0].numel() * model.config.hidden_size * 4
    print(
        f"model {args.model} ({model.dtype}, {device}), {len(batches)} x {args.window} tokens, "
        f"median of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(f"plain forward        {plain_s:8.2f} s")
    print(f"backbone forward     {backbone_s:8.2f} s   (the same without the language-model head)")
    print(f"collect_layer_stats  {stats_s:8.2f} s")
    print(f"time ratio to the plain forward     {stats_s / plain_s:6.3f}   (target <= 1.10)")
    print(f"time ratio to the backbone forward  {stats_s / backbone_s:6.3f}   (the cost of the hooks and the statistics alone)")
    mib = 2**20
    what = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    print(f"{what}, plain      {plain_peak / mib:8.1f} MiB")
    print(f"{what}, stats      {stats_peak / mib:8.1f} MiB")
    print(
        f"extra peak memory    {(stats_peak - plain_peak) / mib:8.1f} MiB   "
        f"(bound: one float32 copy of the N+1={n + 1} states of one batch = {bound / mib:.1f} MiB)"
    )


if __name__ == "__main__":
    main()

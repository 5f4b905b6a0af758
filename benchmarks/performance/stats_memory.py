"""The memory of the statistics pass alone, against the model of docs/scaling.md.

    python benchmarks/performance/stats_memory.py [--model qwen2.5-1.5b] [--dtype bfloat16] [--windows 8]

Loads the model, cuts ``--windows`` windows of 512 tokens of the ``wiki`` calibration split, and runs
``collect_layer_stats`` over them in batches of 4 (``lorp prune``'s), while a thread samples the anonymous memory
(RSS less the mapped file pages; ``scale.Phases``). Prints the growth from the pass's start to its peak beside the
model's term, (N+1)·B·T·D·4 + 3·B·T·F·b (one batch's float32 normalised states and one block's MLP activations),
and beside twice the states (what a pass holding the last batch's states through the next batch's forward would
need). Memory only: the seconds are printed but are not a benchmark (another job may share the CPU).
"""

from __future__ import annotations

import argparse

from scale import BYTES, MB, Phases, check_batch, memory_terms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(BYTES))
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()

    from lorp_lightning import collect_layer_stats, load_model, load_text
    from lorp_lightning.evaluation import token_windows

    phases = Phases()
    model, tokenizer = load_model(args.model, dtype=args.dtype, progress=False)
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=args.windows)
    with phases.phase("statistics") as phase:
        collect_layer_stats(model, windows.split(4), progress=False)
    config = model.config
    N, D = config.num_hidden_layers, config.hidden_size
    from lorp_lightning.search import LOGITS_BYTES

    C = check_batch(config.vocab_size, LOGITS_BYTES)  # the checks' windows per pass; the statistics term does not use it
    term = memory_terms(N, D, config.intermediate_size, config.vocab_size, BYTES[args.dtype], C)["statistics"]
    states = (N + 1) * 4 * 512 * D * 4 / MB
    growth = phase["peak_anonymous_mb"] - phase["start_anonymous_mb"]
    print(f"model {args.model} ({args.dtype}), {len(windows)} windows of 512 tokens in batches of 4, {phase['seconds']:.0f} s")
    print(f"growth of the anonymous memory during the pass  {growth:8.0f} MiB")
    print(f"the model's term                                {term:8.0f} MiB   ({(term - growth) / growth:+.0%})")
    print(
        f"the term with two batches' states               {term + states:8.0f} MiB   ({(term + states - growth) / growth:+.0%})"
    )


if __name__ == "__main__":
    main()

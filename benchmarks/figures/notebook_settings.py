"""Why one quantity differs between pages: SmolLM2-135M under the settings of each page.

The README, the docs and the four notebooks show SmolLM2-135M's RLS, LoRP's plan and its dense
held-out perplexity, each under its own settings (the notebooks use fewer and shorter windows, to
run in minutes on 2 CPU cores). This script computes each quantity under each page's settings, so
the differences can be read as what they are: the windows, not the code.

    python benchmarks/figures/notebook_settings.py [--model smollm2-135m] [--threads N]

Calibration settings (the ``wiki`` calibration split; "first" = ``token_windows(..., max_windows=n)``,
the first n consecutive windows; "drawn" = ``TextDataModule``'s n windows drawn with seed 0):
RLS, K, LoRP's plan for a quarter of the blocks, and ShortGPT's. Held-out settings (the ``wiki``
held-out split): the dense perplexity, with ``perplexity(..., batch_size=1)`` as ``lorp prune``
measures it and ``batch_size=4`` as the notebooks and the healing benchmark do (in bfloat16 the
batch shape changes the rounding).
"""

from __future__ import annotations

import argparse

import torch

CALIBRATION = (  # (pages, how, windows, tokens each)
    ("lorp prune, README, docs/results.md, docs/study.md", "first", 32, 512),
    ("notebook 1", "first", 8, 256),
    ("notebook 2 (TextDataModule)", "drawn", 8, 256),
    ("notebook 3", "first", 16, 256),
    ("notebook 4 (TextDataModule)", "drawn", 48, 128),
)
HELDOUT = (
    ("lorp prune, README, docs/study.md, docs/healing.md", "first", 40, 512),
    ("notebook 2 (TextDataModule)", "drawn", 8, 256),
    ("notebook 3", "first", 4, 256),
    ("notebook 4 (TextDataModule)", "drawn", 8, 128),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lorp_lightning import TextDataModule, collect_layer_stats, load_model, load_text, select_layers
    from lorp_lightning.evaluation import perplexity, token_windows

    model, tokenizer = load_model(args.model, progress=False)

    def windows(split: str, how: str, count: int, window: int) -> torch.Tensor:
        if how == "first":
            return token_windows(tokenizer, load_text("wiki", split), window=window, max_windows=count)
        data = TextDataModule("wiki", tokenizer, window=window, num_calibration_windows=count, num_eval_windows=count)
        return data.windows(split)

    print(f"{args.model}, {model.dtype}, {torch.get_num_threads()} torch threads")
    print()
    print("| pages | calibration windows (wiki calibration split) | RLS | K | lorp, 25% | shortgpt, 25% |")
    print("|---|---|---|---|---|---|")
    for pages, how, count, window in CALIBRATION:
        stats = collect_layer_stats(model, windows("calibration", how, count, window).split(4), progress=False)
        lorp, shortgpt = (select_layers(stats, 0.25, method=method) for method in ("lorp", "shortgpt"))
        print(
            f"| {pages} | {how} {count} x {window} | {lorp.rls:.3f} | {lorp.num_clusters} | "
            f"{', '.join(map(str, lorp.pruned))} | {', '.join(map(str, shortgpt.pruned))} |",
            flush=True,
        )
    print()
    print("| pages | held-out windows (wiki held-out split) | tokens | dense perplexity, batch 1 | batch 4 |")
    print("|---|---|---|---|---|")
    for pages, how, count, window in HELDOUT:
        held_out = windows("heldout", how, count, window)
        ppl = [perplexity(model, held_out, batch_size=batch) for batch in (1, 4)]
        print(f"| {pages} | {how} {count} x {window} | {held_out.numel()} | {ppl[0]:.2f} | {ppl[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()

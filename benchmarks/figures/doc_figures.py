"""The pictures of the README and the docs, written to docs/images/ (run it again to regenerate them).

    python benchmarks/figures/doc_figures.py [--only heatmap|healing|distillation]

- ``heatmap_smollm2-135m.png`` (README, docs/method.md, docs/results.md): the similarity matrix S
  of SmolLM2-135M with LoRP's clusters, and the blocks each of two methods removes at a quarter of
  the blocks: the default, ``lorp_search``, and ``lorp`` as published. The settings of
  ``lorp prune``: the first 32 windows of 512 tokens of the ``wiki`` calibration split,
  ``dtype="auto"``; ``lorp_search`` checks its plans on the first 8 of them. Takes a minute or two.
- ``healing_perplexity.png`` and ``healing_loss.png`` (docs/healing.md): dense, pruned and healed
  perplexity, and the training loss, of the healing measurement of docs/healing.md, read from
  ``benchmarks/results/heal_recovery_2026-11-29.json``. That run kept the mean training loss of the
  first and the last tenth of its steps only, so the loss figure shows those two means per method,
  not every step. Instant.
- ``distillation.png`` (docs/healing.md): the two healings of ``heal_recovery.py --distill``, read
  from ``benchmarks/results/heal_distill_smollm2-135m.json``: every step's training loss of each
  (next-token cross-entropy and KL to the dense model are different quantities, so each has its own
  panel), and the held-out perplexity of dense, pruned and both healed models as a ratio to dense.
  Instant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]  # benchmarks/figures/ -> the repository
IMAGES = ROOT / "docs" / "images"
HEALING = ROOT / "benchmarks" / "results" / "heal_recovery_2026-11-29.json"
DISTILLATION = ROOT / "benchmarks" / "results" / "heal_distill_smollm2-135m.json"


def spans(blocks: list[int]) -> str:
    """[4, 5, 6, 17] as "4-6, 17"."""
    out, start = [], None
    for i, block in enumerate(blocks):
        if start is None:
            start = block
        if i + 1 == len(blocks) or blocks[i + 1] != block + 1:
            out.append(f"{start}-{block}" if block > start else f"{start}")
            start = None
    return ", ".join(out)


def heatmap() -> None:
    from lorp_lightning import collect_layer_stats, load_model, load_text, select_layers
    from lorp_lightning.evaluation import token_windows
    from lorp_lightning.plots import similarity_heatmap

    model, tokenizer = load_model("smollm2-135m", progress=False)
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=32)
    stats = collect_layer_stats(model, windows.split(4), progress=False)
    faithful = select_layers(stats, 0.25, method="lorp")
    default = select_layers(stats, 0.25, method="lorp_search", model=model, windows=windows)
    print(f"{default}\n{faithful}", flush=True)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    for ax, plan, name in ((axes[0], default, "lorp_search (the default)"), (axes[1], faithful, "lorp (as published)")):
        similarity_heatmap(
            stats, labels=faithful.labels, pruned=plan.pruned, ax=ax, title=f"{name}: removes {spans(plan.pruned)}"
        )
    fig.suptitle(
        f"SmolLM2-135M: similarity S of the states entering each block (RLS {faithful.rls:.3f}, "
        f"K {faithful.num_clusters}; white lines: LoRP's clusters; red: removed blocks)\n"
        f"first 32 windows of 512 tokens of the wiki calibration split, {str(model.dtype).removeprefix('torch.')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(IMAGES / "heatmap_smollm2-135m.png", dpi=90)
    print(f"wrote {IMAGES / 'heatmap_smollm2-135m.png'}")


def healing() -> None:
    run = json.loads(HEALING.read_text())
    rows, dense = run["rows"], run["dense"]
    texts = list(dense)
    fig, axes = plt.subplots(1, len(texts), figsize=(11, 4), sharey=True)
    for ax, text in zip(axes, texts, strict=True):
        x = range(len(rows))
        for offset, (stage, color) in enumerate((("pruned", "tab:red"), ("healed", "tab:green"))):
            values = [row[stage][text] for row in rows]
            bars = ax.bar([i + (offset - 0.5) * 0.35 for i in x], values, width=0.35, color=color, label=stage)
            ax.bar_label(bars, labels=[f"{v:,.1f}" for v in values], fontsize=8)
        ax.axhline(dense[text], color="black", linestyle=":", label=f"dense ({dense[text]:.2f})")
        ax.set_xticks(list(x), [f"{row['method']}\nremoves {spans(row['pruned_layers'])}" for row in rows], fontsize=8)
        ax.set_yscale("log")
        ax.set_title(f"{text} held-out split, 40 windows of 512 tokens", fontsize=9)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("perplexity (log scale)")
    fig.suptitle(
        "SmolLM2-135M, a quarter of the blocks removed, then healed for 10 minutes (LoRA, bfloat16; "
        "docs/healing.md, run of 2026-11-29)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(IMAGES / "healing_perplexity.png", dpi=90)

    fig, ax = plt.subplots(figsize=(7, 4))
    for row, color in zip(rows, ("tab:red", "tab:blue"), strict=False):
        steps = row["num_steps"]
        tenth = max(1, steps // 10)
        first, last = (tenth + 1) / 2, steps - (tenth - 1) / 2  # the middle step of each tenth
        ax.plot(
            [first, last],
            [row["initial_loss"], row["final_loss"]],
            color=color,
            linestyle="--",
            marker="o",
            label=f"{row['method']} ({steps} steps): {row['initial_loss']:.3f} -> {row['final_loss']:.3f}",
        )
        for step in (first, last):
            ax.axvspan(step - (tenth - 1) / 2 - 0.5, step + (tenth - 1) / 2 + 0.5, color=color, alpha=0.08)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss, mean of a tenth")
    ax.set_title(
        "Healing SmolLM2-135M for 10 minutes: the stored run kept the mean loss of the\n"
        "first and the last tenth of the steps, not every step's loss (dashed: no data between)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMAGES / "healing_loss.png", dpi=90)
    print(f"wrote {IMAGES / 'healing_perplexity.png'} and {IMAGES / 'healing_loss.png'}")


def distillation() -> None:
    run = json.loads(DISTILLATION.read_text())
    results, args = run["results"], run["args"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (name, label, color) in zip(
        axes[:2],
        (("healed_lm", "next-token loss (cross-entropy)", "tab:blue"), ("healed_distill", "KL(dense || pruned)", "tab:green")),
        strict=True,
    ):
        losses = results[name]["losses"]
        ax.plot(range(1, len(losses) + 1), losses, color=color, linewidth=1)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.set_title(
            f"{name}: {len(losses)} steps in {results[name]['healing']['seconds'] / 60:.1f} min, "
            f"{losses[0]:.3f} -> {losses[-1]:.3f}",
            fontsize=9,
        )
    ax = axes[2]
    names = list(results)
    texts = list(results["dense"]["perplexity"])
    for offset, (text, color) in enumerate(zip(texts, ("tab:purple", "tab:orange"), strict=True)):
        values = [results[n]["ratio_to_dense"][text] for n in names]
        bars = ax.bar([i + (offset - 0.5) * 0.35 for i in range(len(names))], values, width=0.35, color=color, label=text)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    ax.axhline(1.3, color="black", linestyle=":", label="target 1.3x (wiki)")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("held-out perplexity / dense (log scale)")
    ax.set_title(f"{args['eval_windows']} held-out windows of 512 tokens per text", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"{args['model']}, {run['method']} removes {spans(run['pruned_layers'])}, then {args['max_minutes']:g} "
        f"minutes of LoRA healing each (run of {run['started'][:10]}, heal_recovery.py --distill)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(IMAGES / "distillation.png", dpi=90)
    print(f"wrote {IMAGES / 'distillation.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("heatmap", "healing", "distillation"), default=None)
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "healing"):
        healing()
    if args.only in (None, "distillation"):
        distillation()
    if args.only in (None, "heatmap"):
        heatmap()


if __name__ == "__main__":
    main()

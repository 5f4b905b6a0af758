"""Pictures: the similarity matrix with the clusters drawn on it, and perplexity against the
number of blocks removed. The ``save_*`` functions write a PNG without touching pyplot's state
(a ``matplotlib.figure.Figure`` of their own), as the command line does."""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = [
    "save_perplexity_by_budget",
    "save_similarity_heatmap",
    "save_stability_heatmap",
    "similarity_heatmap",
    "stability_heatmap",
]


def similarity_heatmap(
    stats_or_similarity: Any,
    labels: list[int] | None = None,
    pruned: list[int] | None = None,
    ax: Any = None,
    title: str | None = None,
) -> Any:
    """Draw S as a seaborn heatmap; cluster boundaries as lines, pruned blocks as marks.

    Args:
        stats_or_similarity: a ``LayerStats`` (its N+1 hidden states are drawn, the last one
            labelled ``out``) or a plain matrix.
        labels: cluster label per block; a line is drawn wherever the label changes in depth order.
        pruned: blocks to mark along both axes (for example ``plan.pruned``).
        ax: a matplotlib ``Axes`` (default: the current one).
        title: the axis title.

    Returns:
        The matplotlib ``Axes`` drawn on.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    similarity = getattr(stats_or_similarity, "similarity", stats_or_similarity)
    matrix = np.asarray(similarity.cpu() if hasattr(similarity, "cpu") else similarity, dtype=float)
    size = matrix.shape[0]
    names = [str(i) for i in range(size)]
    if hasattr(stats_or_similarity, "similarity"):
        names[-1] = "out"
    ax = ax or plt.gca()
    sns.heatmap(
        matrix,
        ax=ax,
        cmap="viridis",
        vmin=min(0.0, float(matrix.min())),
        vmax=1.0,
        square=True,
        xticklabels=names,
        yticklabels=names,
        cbar_kws={"label": "mean cosine similarity"},
    )
    ax.tick_params(labelsize=6)
    if labels is not None:
        for boundary in [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]:
            ax.axhline(boundary, color="white", linewidth=1.5)
            ax.axvline(boundary, color="white", linewidth=1.5)
    for block in pruned or []:
        ax.add_patch(plt.Rectangle((block, block), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xlabel("hidden state entering block")
    ax.set_ylabel("hidden state entering block")
    if title:
        ax.set_title(title)
    return ax


def save_similarity_heatmap(
    stats_or_similarity: Any, path: str | os.PathLike, labels: list[int] | None = None, title: str | None = None
) -> None:
    """``similarity_heatmap`` on a figure of its own, written to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    similarity_heatmap(stats_or_similarity, labels=labels, ax=fig.subplots(), title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def save_perplexity_by_budget(
    rows: list[dict[str, Any]],
    dense_perplexity: float,
    path: str | os.PathLike,
    title: str | None = None,
    ylabel: str = "held-out perplexity",
) -> None:
    """Perplexity against blocks removed, one line per method, the dense model as a dotted line
    (log scale), written to ``path`` (PNG). ``rows``: ``{"method", "num_pruned", "perplexity"}``
    dicts; a perplexity that is not finite is left out of its line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for method in dict.fromkeys(row["method"] for row in rows):
        points = [(r["num_pruned"], r["perplexity"]) for r in rows if r["method"] == method and math.isfinite(r["perplexity"])]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=method)
    ax.axhline(dense_perplexity, color="black", linestyle=":", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("blocks removed")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def stability_heatmap(reports: Any, ax: Any = None, title: str | None = None) -> Any:
    """Each block's removal frequency over the resamples, one row per method (a seaborn heatmap).

    Args:
        reports: ``Stability`` reports (``lorp_lightning.stability``) of one model and budget.
        ax: a matplotlib ``Axes`` (default: the current one).
        title: the axis title.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    reports = list(reports)
    matrix = np.array([report.removal_frequency for report in reports], dtype=float)
    ax = ax or plt.gca()
    sns.heatmap(
        matrix,
        ax=ax,
        cmap="rocket_r",
        vmin=0.0,
        vmax=1.0,
        annot=matrix.shape[1] <= 32,
        fmt=".1f",
        annot_kws={"fontsize": 5},
        xticklabels=[str(b) for b in range(matrix.shape[1])],
        yticklabels=[f"{r.method} ({r.agreement:.0%} same)" for r in reports],
        cbar_kws={"label": "share of resamples that remove the block"},
    )
    ax.tick_params(labelsize=6)
    for row, report in enumerate(reports):  # the full-data plan, outlined
        for block in report.plan:
            ax.add_patch(plt.Rectangle((block, row), 1, 1, fill=False, edgecolor="black", linewidth=1.2))
    ax.set_xlabel("block")
    if title:
        ax.set_title(title)
    return ax


def save_stability_heatmap(reports: Any, path: str | os.PathLike, title: str | None = None) -> None:
    """``stability_heatmap`` on a figure of its own, written to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    reports = list(reports)
    fig = Figure(figsize=(max(6.0, 0.28 * reports[0].num_layers + 3), 1.2 + 0.45 * len(reports)))
    stability_heatmap(reports, ax=fig.subplots(), title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

"""Pictures of the locality analysis: the similarity matrix with the clusters drawn on it."""

from __future__ import annotations

from typing import Any

__all__ = ["similarity_heatmap"]


def similarity_heatmap(stats_or_similarity: Any, labels: list[int] | None = None, pruned: list[int] | None = None,
                       ax: Any = None, title: str | None = None) -> Any:
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
    sns.heatmap(matrix, ax=ax, cmap="viridis", vmin=min(0.0, float(matrix.min())), vmax=1.0, square=True,
                xticklabels=names, yticklabels=names, cbar_kws={"label": "mean cosine similarity"})
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

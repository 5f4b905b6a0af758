"""Layer statistics: the cosine similarity between the hidden states that enter every pair of
decoder blocks, accumulated over a calibration set in one streaming pass.

Notation (as in the LoRP paper and docs/method.md): a model with N decoder blocks has N+1 hidden
states h_0..h_N. For l < N, h_l is the state that *enters* block l (h_0 is the embedding
output); h_N is the state that leaves the last block, before the final norm.

For every non-padding token t, f_l(t) = h_l(t) / (||h_l(t)||_2 + 1e-8), in float32. Then

    G = sum_t f(t) f(t)^T          (an (N+1)x(N+1) matrix, accumulated in float64)
    S = G / count, diagonal set to 1

and S_last is the same over only the last non-padding token of each sequence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["LayerStats"]


@dataclass
class LayerStats:
    """Similarity statistics of one model over one calibration set.

    Attributes:
        similarity: S, an (N+1)x(N+1) float64 tensor; ``similarity[i, j]`` is the mean cosine
            similarity of h_i and h_j over all non-padding tokens. Unit diagonal.
        last_token_similarity: S_last, the same over the last non-padding token of each sequence.
        num_tokens: how many tokens S averages over.
        num_sequences: how many sequences (last tokens) S_last averages over.
    """

    similarity: Tensor
    last_token_similarity: Tensor
    num_tokens: int
    num_sequences: int

    @property
    def num_layers(self) -> int:
        """N, the number of decoder blocks (one less than the number of hidden states)."""
        return self.similarity.shape[0] - 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "similarity": self.similarity.tolist(),
            "last_token_similarity": self.last_token_similarity.tolist(),
            "num_tokens": self.num_tokens,
            "num_sequences": self.num_sequences,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Save to a file that :meth:`load` reads back exactly (a ``torch.save`` of tensors)."""
        torch.save(
            {
                "format": "lorp_lightning.LayerStats/1",
                "similarity": self.similarity,
                "last_token_similarity": self.last_token_similarity,
                "num_tokens": self.num_tokens,
                "num_sequences": self.num_sequences,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LayerStats":
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != "lorp_lightning.LayerStats/1":
            raise ValueError(f"{path} is not a file written by LayerStats.save")
        return cls(
            similarity=data["similarity"],
            last_token_similarity=data["last_token_similarity"],
            num_tokens=int(data["num_tokens"]),
            num_sequences=int(data["num_sequences"]),
        )

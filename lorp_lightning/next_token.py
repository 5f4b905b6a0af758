"""The next-token loss: the one rule by which a causal LM's logits are scored against its text.

The logits at position t predict the token at t + 1. A position whose next token is padding
(attention mask 0) is not scored: its label is ``IGNORE_INDEX`` (-100, the convention of
Hugging Face's ``model(..., labels=labels).loss`` and of PyTorch's ``cross_entropy``). Labels are
kept unshifted, as Hugging Face takes them, and shifted here, in one place.

Everything that scores a model builds on this module:

- perplexity, ``evaluation.perplexity`` and ``LoRPModule``'s ``val_ppl`` / ``test_ppl``
  (torchmetrics' ``Perplexity`` of ``next_token_pairs``);
- the training loss of ``LoRPModule`` and so of ``heal`` (``next_token_loss``);
- the next-token part of ``distillation_loss``;
- the calibration loss that checks pruning plans (``search.calibration_loss``, ``PlanLoss``),
  which scores only the last positions of each window (logits of the last L positions).

Pure tensor functions: no model, no Lightning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "causal_lm_labels", "next_token_loss", "next_token_pairs"]

IGNORE_INDEX = -100
"""Label of a position without a next-token loss (Hugging Face's and PyTorch's convention)."""


def causal_lm_labels(input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The labels of the next-token loss: the input ids, with ``IGNORE_INDEX`` on padding.

    Unshifted, as Hugging Face's ``model(..., labels=labels).loss`` takes them: the logits at
    position t are scored against ``labels[:, t + 1]``.
    """
    return input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)


def next_token_pairs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The predictions and the tokens they predict: ``(B, L-1, V)`` float32 logits and ``(B, L-1)`` targets.

    ``logits`` are those of the **last** L positions of the ``(B, T)`` ``labels`` (L <= T; L = T
    for a plain forward pass, less with ``logits_to_keep``): the logits at positions T-L .. T-2
    predict the labels at T-L+1 .. T-1 (the last position predicts a token the window does not
    have).
    """
    if (
        logits.dim() != 3
        or labels.dim() != 2
        or logits.shape[0] != labels.shape[0]
        or not 2 <= logits.shape[1] <= labels.shape[1]
    ):
        raise ValueError(
            f"logits must be (batch, L, vocabulary) for the last L of the (batch, T) labels, 2 <= L <= T, got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    return logits[:, :-1].float(), labels[:, labels.shape[1] - logits.shape[1] + 1 :]


def next_token_loss(logits: Tensor, labels: Tensor, per_window: bool = False) -> Tensor:
    """Mean next-token cross-entropy (nats) of ``logits`` against ``labels``, in float32.

    The mean is over the scored positions (labels not ``IGNORE_INDEX``), as Hugging Face's
    ``model(..., labels=labels).loss``: a scalar; or with ``per_window``, each window's own mean,
    a ``(B,)`` tensor. See ``next_token_pairs`` for the alignment.
    """
    if per_window:  # a window without a scored position has no mean: nan
        # Window by window, so that one window's logits are in float32 at a time (8 windows of 128 scored positions
        # over a 151,936-token vocabulary would be 620 MB at once), with the same arithmetic as for one window.
        return torch.stack([next_token_loss(logits[i : i + 1], labels[i : i + 1]) for i in range(logits.shape[0])])
    predictions, targets = next_token_pairs(logits, labels)
    return F.cross_entropy(predictions.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)

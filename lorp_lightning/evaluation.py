"""Evaluation of dense and pruned models: held-out perplexity.

Perplexity is measured over non-overlapping windows of ``window`` tokens of a held-out text:
the text is tokenized once, cut into consecutive windows, and every token of a window after its
first is predicted from the tokens before it in the same window. torchmetrics' ``Perplexity``
does the accumulation, so the figure is exp(mean negative log-likelihood over all predicted
tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["perplexity", "token_windows"]


def token_windows(tokenizer, text: str, window: int = 512, max_windows: int | None = None) -> Tensor:
    """Tokenize ``text`` once and cut it into consecutive, non-overlapping windows.

    Returns a (num_windows, window) long tensor; a last partial window is dropped. A tokenizer
    that adds a BOS token (Gemma's) adds it once, at the start of the text.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2 (tokens per window), got window={window!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1):
        raise ValueError(f"max_windows must be a positive int or None, got max_windows={max_windows!r}")
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]
    count = ids.numel() // window
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of {window}")
    return ids[: count * window].reshape(count, window)


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 1, progress: bool = False) -> float:
    """Perplexity of ``model`` over token ``windows`` ((num_windows, window) input ids)."""
    from torchmetrics.text import Perplexity
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    metric = Perplexity().to(device)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            metric.update(logits[:, :-1].float(), batch[:, 1:])
    finally:
        model.train(was_training)
    return float(metric.compute())

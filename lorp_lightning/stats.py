"""Layer statistics: the cosine similarity between the hidden states that enter every pair of
decoder blocks, accumulated over a calibration set in one streaming pass.

Notation (as in the LoRP paper and docs/method.md): a model with N decoder blocks has N+1 hidden
states h_0..h_N. For l < N, h_l is the state that *enters* block l (h_0 is the embedding
output); h_N is the state that leaves the last block, before the final norm.

For every non-padding token t, f_l(t) = h_l(t) / (||h_l(t)||_2 + 1e-8), in float32. Then

    G = sum_t f(t) f(t)^T          (an (N+1)x(N+1) matrix, accumulated in float64)
    S = G / count, diagonal set to 1

and S_last is the same over only the last non-padding token of each sequence. The same pass also
gives m_l, the mean of ||h_l(t)||_2 over the tokens: the stream's magnitude at each depth, which
compensation (``lorp_lightning.compensation``) reads.

Asked for (``per_window=True``), the pass also keeps each calibration window's own sums: G_w, its
token count n_w, its last-token product and its norm sums (`WindowStats`). Every statistic is a
sum over windows, so the statistics of any multiset of the windows (a bootstrap resample,
``lorp_lightning.stability``) are weighted sums of these, with no forward pass.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lorp_lightning._validation import check_int
from lorp_lightning.architectures import decoder_layers

__all__ = [
    "HiddenStateRecorder",
    "LayerSimilarity",
    "LayerStats",
    "WindowStats",
    "collect_layer_stats",
    "gram_of_states",
    "last_token_index",
    "model_inputs",
    "normalize_states",
]

EPS = 1e-8  # in f_l(t) = h_l(t) / (||h_l(t)||_2 + EPS)
_FORMAT = "lorp_lightning.LayerStats/1"
_TOKENS_PER_CHUNK = 32  # tokens per float64 product in gram_of_states (small: bounds temporaries, fastest here)


# --------------------------------------------------------------------------- pure functions


def normalize_states(hidden: Tensor) -> Tensor:
    """f = h / (||h||_2 + 1e-8) along the last dimension, in float32 whatever the input dtype."""
    hidden = hidden.float()
    return hidden / (torch.linalg.vector_norm(hidden, dim=-1, keepdim=True) + EPS)


def gram_of_states(states: Tensor, token_mask: Tensor | None = None, normalized: bool = False) -> tuple[Tensor, int]:
    """G = sum_t f(t) f(t)^T of the normalised states f, over the tokens selected by ``token_mask``, in float64.

    Args:
        states: (L, ..., D) hidden states of L layers over the same tokens (any dtype).
        token_mask: boolean (...) tensor selecting the tokens to count; all tokens if None.
        normalized: True when ``states`` are already the normalised f (as
            `HiddenStateRecorder` stores them), which skips normalising them again.

    Returns:
        ``(G, count)``: the (L, L) float64 sum of outer products of the normalised states and
        the number of tokens counted. Works in chunks of tokens, so the only large tensor it
        holds is its input.
    """
    num_layers, dim = states.shape[0], states.shape[-1]
    flat = states.reshape(num_layers, -1, dim)
    if token_mask is not None:
        keep = token_mask.reshape(-1).to(device=states.device, dtype=torch.bool)
        if keep.shape[0] != flat.shape[1]:
            raise ValueError(f"token_mask covers {keep.shape[0]} tokens but states hold {flat.shape[1]}")
        index = keep.nonzero().squeeze(1)
    else:
        index = torch.arange(flat.shape[1], device=states.device)
    gram = torch.zeros(num_layers, num_layers, dtype=torch.float64, device=states.device)
    for chunk in index.split(_TOKENS_PER_CHUNK):
        f = flat[:, chunk] if normalized else normalize_states(flat[:, chunk])
        f = f.double().reshape(num_layers, -1)
        gram += f @ f.T
    # G is symmetric by definition, but a blocked matrix product may round G[i, j] and G[j, i]
    # differently (it did on an AVX-512 CPU). Averaging with the transpose makes it exactly
    # symmetric: both entries become the same sum of the same two numbers.
    return (gram + gram.T) / 2, int(index.numel())


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Position of the last non-padding token of each sequence (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * (positions + 1)).argmax(dim=1)


def _similarity_from_gram(gram: Tensor, count: Tensor) -> Tensor:
    similarity = gram / count
    similarity.fill_diagonal_(1.0)
    return similarity


@dataclass
class WindowStats:
    """Each calibration window's own sums, in the order the windows were seen.

    Attributes:
        gram: (W, N+1, N+1) float64, G_w = sum over window w's tokens of f(t) f(t)^T.
        last_token_gram: (W, N+1, N+1) float64, the same for the window's last non-padding token.
        num_tokens: (W,) float64, the tokens each G_w sums over.
        norm_sum: (W, N+1) float64, each window's sum of ||h_l(t)||_2; None when norms were not recorded.
    """

    gram: Tensor
    last_token_gram: Tensor
    num_tokens: Tensor
    norm_sum: Tensor | None = None

    @property
    def num_windows(self) -> int:
        return self.gram.shape[0]

    def combine(self, counts: Tensor | Sequence[float] | None = None) -> LayerStats:
        """The statistics of the windows taken ``counts[w]`` times each (a bootstrap resample's
        counts); all of them once when None.

        S = (sum_w c_w G_w) / (sum_w c_w n_w), and likewise S_last and the norms, so the result is
        what one pass over that multiset of windows gives (up to the order of float64 sums).
        """
        weights = torch.ones(self.num_windows, dtype=torch.float64) if counts is None else torch.as_tensor(counts)
        weights = weights.to(dtype=torch.float64, device=self.gram.device)
        if weights.shape != (self.num_windows,) or bool((weights < 0).any()):
            raise ValueError(
                f"counts must be {self.num_windows} non-negative numbers, one per window; got shape {tuple(weights.shape)}"
            )
        has_token = (self.num_tokens > 0).double()
        num_tokens, num_sequences = weights @ self.num_tokens, weights @ has_token
        if num_tokens.item() == 0:
            raise ValueError("counts select no window with a token")
        gram = torch.einsum("w,wij->ij", weights, self.gram)
        last = torch.einsum("w,wij->ij", weights, self.last_token_gram)
        return LayerStats(
            similarity=_similarity_from_gram(gram, num_tokens).cpu(),
            last_token_similarity=_similarity_from_gram(last, num_sequences).cpu(),
            num_tokens=int(num_tokens.item()),
            num_sequences=int(num_sequences.item()),
            norms=None if self.norm_sum is None else ((weights @ self.norm_sum) / num_tokens).cpu(),
        )

    def take(self, index: slice | Sequence[int]) -> LayerStats:
        """The statistics of the windows at ``index`` alone (a slice, e.g. ``slice(0, 8)`` for the first 8, or
        positions), keeping their per-window sums: what a pass over those windows with ``per_window=True`` gives
        (up to the order of float64 sums). Statistics of 8, 16, 32 windows are prefixes of one pass over 32."""
        index = range(self.num_windows)[index] if isinstance(index, slice) else [int(i) for i in index]
        if len(index) == 0:
            raise ValueError(f"index selects none of the {self.num_windows} windows")
        index = torch.as_tensor(list(index), dtype=torch.long)
        return WindowStats.concat([self], index)

    @staticmethod
    def concat(parts: Sequence[WindowStats], index: Tensor | None = None) -> LayerStats:
        """The statistics of the windows of all ``parts`` together (e.g. a mix of texts), keeping their per-window
        sums; with ``index``, of those windows only (positions in the joined order)."""

        def joined(field: str) -> Tensor | None:
            values = [getattr(part, field) for part in parts]
            if any(v is None for v in values):
                return None
            tensor = torch.cat(values)
            return tensor if index is None else tensor[index]

        per_window = WindowStats(joined("gram"), joined("last_token_gram"), joined("num_tokens"), joined("norm_sum"))
        stats = per_window.combine()
        stats.per_window = per_window
        return stats

    def state_dict(self) -> dict[str, Tensor]:
        state = {"gram": self.gram, "last_token_gram": self.last_token_gram, "num_tokens": self.num_tokens}
        if self.norm_sum is not None:
            state["norm_sum"] = self.norm_sum
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WindowStats:
        return cls(state["gram"], state["last_token_gram"], state["num_tokens"], state.get("norm_sum"))


@dataclass
class LayerStats:
    """Similarity statistics of one model over one calibration set.

    Attributes:
        similarity: S, an (N+1)x(N+1) float64 tensor; ``similarity[i, j]`` is the mean cosine
            similarity of h_i and h_j over all non-padding tokens. Unit diagonal.
        last_token_similarity: S_last, the same over the last non-padding token of each sequence.
        num_tokens: how many tokens S averages over.
        num_sequences: how many sequences (last tokens) S_last averages over.
        norms: m_0..m_N, the mean L2 norm of each hidden state over the same tokens as S, an (N+1,)
            float64 tensor; None for statistics saved before it was recorded.
        per_window: each window's own sums (`WindowStats`), when the pass was asked to keep them
            (``collect_layer_stats(..., per_window=True)``); None otherwise.
    """

    similarity: Tensor
    last_token_similarity: Tensor
    num_tokens: int
    num_sequences: int
    norms: Tensor | None = None
    per_window: WindowStats | None = None

    @property
    def num_layers(self) -> int:
        """N, the number of decoder blocks (one less than the number of hidden states)."""
        return self.similarity.shape[0] - 1

    def state_dict(self) -> dict[str, Any]:
        """The statistics as a dict of tensors and ints (what checkpoints and `save` store)."""
        state = {
            "similarity": self.similarity,
            "last_token_similarity": self.last_token_similarity,
            "num_tokens": self.num_tokens,
            "num_sequences": self.num_sequences,
        }
        if self.norms is not None:
            state["norms"] = self.norms
        if self.per_window is not None:
            state["per_window"] = self.per_window.state_dict()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LayerStats:
        return cls(
            similarity=state["similarity"],
            last_token_similarity=state["last_token_similarity"],
            num_tokens=int(state["num_tokens"]),
            num_sequences=int(state["num_sequences"]),
            norms=state.get("norms"),
            per_window=WindowStats.from_state_dict(state["per_window"]) if "per_window" in state else None,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Save to a file that `load` reads back exactly (a ``torch.save`` of tensors)."""
        torch.save({"format": _FORMAT, **self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LayerStats:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a file written by LayerStats.save")
        return cls.from_state_dict(data)


# --------------------------------------------------------------------------- the metric


class LayerSimilarity(Metric):
    """Streaming similarity statistics of the N+1 hidden states of a decoder-only model.

    A ``torchmetrics.Metric``: its states (the Gram sums and the counts) reduce by sum, so
    statistics gathered on several processes, or merged with ``merge_state``, equal those of
    one process over all the data.

    Example:
        >>> metric = LayerSimilarity(num_layers=2)
        >>> states = torch.randn(3, 2, 5, 8)          # (N+1, batch, tokens, hidden)
        >>> metric.update(states, torch.ones(2, 5))
        >>> metric.compute().similarity.shape
        torch.Size([3, 3])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, num_layers: int, per_window: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_window = bool(per_window)
        self.num_layers = num_layers = check_int(num_layers, "num_layers", what="a positive int (the number of decoder blocks)")
        size = num_layers + 1
        self.add_state("gram", torch.zeros(size, size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("last_token_gram", torch.zeros(size, size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_sequences", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("norm_sum", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")  # NaN: norms not given
        if self.per_window:  # each window's own sums (WindowStats), gathered in rank order across processes
            for name in ("window_gram", "window_last_token_gram", "window_num_tokens", "window_norm_sum"):
                self.add_state(name, [], dist_reduce_fx="cat")

    def update(
        self,
        hidden_states: Tensor | Sequence[Tensor],
        attention_mask: Tensor | None = None,
        normalized: bool = False,
        norms: Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            hidden_states: the N+1 hidden states h_0..h_N of the batch, as a (N+1, B, T, D)
                tensor or a sequence of N+1 (B, T, D) tensors, in any dtype.
            attention_mask: (B, T), 1 for real tokens and 0 for padding; all ones if None.
            normalized: True when the states are already f_l = h_l / (||h_l|| + 1e-8) in
                float32, as `HiddenStateRecorder.pop_with_norms` returns them (saves normalising twice).
            norms: with ``normalized``, the (N+1, B, T) norms ||h_l(t)|| of the states before
                they were normalised (else the statistics have no ``norms``).
        """
        if not isinstance(hidden_states, Tensor):
            hidden_states = torch.stack(list(hidden_states))
        if hidden_states.dim() != 4 or hidden_states.shape[0] != self.num_layers + 1:
            raise ValueError(
                f"hidden_states must be N+1={self.num_layers + 1} states of shape (B, T, D), "
                f"got a tensor of shape {tuple(hidden_states.shape)}"
            )
        batch, length = hidden_states.shape[1:3]
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=hidden_states.device)
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(f"attention_mask must have shape {(batch, length)}, got {tuple(attention_mask.shape)}")
        attention_mask = attention_mask.to(hidden_states.device)
        real = attention_mask.bool()
        if not normalized:
            norms = torch.linalg.vector_norm(hidden_states.float(), dim=-1)
        has_tokens = real.any(dim=1)
        last = last_token_index(attention_mask)
        last_states = hidden_states[:, torch.arange(batch, device=last.device), last]  # (N+1, B, D)
        if self.per_window:  # one G_w per sequence; the batch's G is their sum (the same products)
            self._update_per_window(hidden_states, real, normalized, norms, last_states, has_tokens)
            return
        gram, count = gram_of_states(hidden_states, real, normalized)  # (1) G
        self.norm_sum += (
            norms[:, real].double().sum(dim=1).to(self.norm_sum.device)
            if norms is not None
            else torch.full_like(self.norm_sum, math.nan)
        )
        self.gram += gram.to(self.gram.device)
        self.num_tokens += count
        last_gram, num_sequences = gram_of_states(last_states, has_tokens, normalized)
        self.last_token_gram += last_gram.to(self.last_token_gram.device)
        self.num_sequences += num_sequences

    def _update_per_window(
        self, states: Tensor, real: Tensor, normalized: bool, norms: Tensor | None, last_states: Tensor, has_tokens: Tensor
    ) -> None:
        size = self.num_layers + 1
        for b in range(states.shape[1]):
            gram, count = gram_of_states(states[:, b], real[b], normalized)
            last_gram, _ = gram_of_states(last_states[:, b : b + 1], has_tokens[b : b + 1], normalized)
            norm_sum = (
                norms[:, b, real[b]].double().sum(dim=1)
                if norms is not None
                else torch.full((size,), math.nan, dtype=torch.float64, device=states.device)
            )
            self.window_gram.append(gram.to(self.gram.device))
            self.window_last_token_gram.append(last_gram.to(self.gram.device))
            self.window_num_tokens.append(torch.tensor([float(count)], dtype=torch.float64, device=self.gram.device))
            self.window_norm_sum.append(norm_sum.to(self.gram.device))
            self.gram += self.window_gram[-1]
            self.last_token_gram += self.window_last_token_gram[-1]
            self.num_tokens += count
            self.num_sequences += int(bool(has_tokens[b]))
            self.norm_sum += self.window_norm_sum[-1]

    def compute(self) -> LayerStats:
        if self.num_tokens.item() == 0:
            raise RuntimeError("LayerSimilarity saw no tokens: call update with at least one non-padding token first")
        return LayerStats(
            similarity=_similarity_from_gram(self.gram, self.num_tokens).cpu(),
            last_token_similarity=_similarity_from_gram(self.last_token_gram, self.num_sequences).cpu(),
            num_tokens=int(self.num_tokens.item()),
            num_sequences=int(self.num_sequences.item()),
            norms=None if torch.isnan(self.norm_sum).any() else (self.norm_sum / self.num_tokens).cpu(),
            per_window=self._window_stats() if self.per_window else None,
        )

    def _window_stats(self) -> WindowStats:
        size = self.num_layers + 1

        def stacked(state: Any, shape: tuple[int, ...]) -> Tensor:
            # one tensor per window here; after a sync across processes, torchmetrics has cat them
            tensor = torch.stack(state) if isinstance(state, list) else state
            return tensor.reshape(-1, *shape).cpu()

        norm_sum = stacked(self.window_norm_sum, (size,))
        return WindowStats(
            gram=stacked(self.window_gram, (size, size)),
            last_token_gram=stacked(self.window_last_token_gram, (size, size)),
            num_tokens=stacked(self.window_num_tokens, ()).reshape(-1),
            norm_sum=None if torch.isnan(norm_sum).any() else norm_sum,
        )


# --------------------------------------------------------------------------- hooks on a model


class HiddenStateRecorder:
    """Hooks on a model's decoder blocks that keep the N+1 hidden states of one forward pass.

    The state entering block l is h_l; the state leaving the last block is h_N. Each is stored
    normalised, in float32, as the forward pass reaches it, so the recorder holds one copy of
    the normalised states of one batch and nothing more. Non-finite states raise an error that
    names the block.

    Use as a context manager; after each forward pass, `pop` returns the (N+1, B, T, D)
    states and clears them.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = decoder_layers(model)
        self.num_layers = len(self.layers)
        self._states: Tensor | None = None
        self._norms: Tensor | None = None
        self._seen = 0
        self._handles: list[Any] = []

    def __enter__(self) -> HiddenStateRecorder:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def attach(self) -> None:
        if self._handles:
            return
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(self._input_hook(index), with_kwargs=True))
        self._handles.append(self.layers[-1].register_forward_hook(self._output_hook()))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._states = None
        self._seen = 0

    def pop(self) -> Tensor:
        """The normalised states h_0..h_N of the last forward pass, as a (N+1, B, T, D) tensor."""
        return self.pop_with_norms()[0]

    def pop_with_norms(self) -> tuple[Tensor, Tensor]:
        """The normalised states of the last forward pass, and their norms before normalising: the
        (N+1, B, T, D) f_l and the (N+1, B, T) ||h_l(t)|| in float32."""
        if self._states is None or self._seen != self.num_layers + 1:
            raise RuntimeError(
                f"the recorder saw {self._seen} of the {self.num_layers + 1} hidden states; "
                "run one full forward pass of the model between calls to pop()"
            )
        states, norms, self._states, self._norms, self._seen = self._states, self._norms, None, None, 0
        return states, norms

    def _store(self, index: int, hidden: Tensor) -> None:
        if index == 0 or self._states is None:
            self._states = torch.empty((self.num_layers + 1, *hidden.shape), dtype=torch.float32, device=hidden.device)
            self._norms = torch.empty((self.num_layers + 1, *hidden.shape[:-1]), dtype=torch.float32, device=hidden.device)
            self._seen = 0
        hidden = hidden.float()
        norms = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True)
        # An inf or NaN anywhere in a token's state makes its norm non-finite: checking the norms
        # checks every value, at the cost of one value per token.
        if not torch.isfinite(norms).all():
            where = f"entering block {index}" if index < self.num_layers else f"leaving block {index - 1}"
            raise FloatingPointError(
                f"non-finite values (inf or NaN) in the hidden state {where} (or values whose float32 norm overflows)"
            )
        torch.div(hidden, norms + EPS, out=self._states[index])  # f_l = h_l / (||h_l|| + 1e-8)
        self._norms[index] = norms.squeeze(-1)
        self._seen += 1

    def _input_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self._store(index, args[0] if args else kwargs["hidden_states"])

        return hook

    def _output_hook(self):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self._store(self.num_layers, output[0] if isinstance(output, (tuple, list)) else output)

        return hook


def model_inputs(batch: Tensor | Mapping[str, Any] | Sequence[Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """The input ids and attention mask of one batch, as (B, T) tensors on ``device``.

    The one rule every part of lorp_lightning reads batches by (the callbacks, ``LoRPModule``,
    [`collect_layer_stats`][lorp_lightning.stats.collect_layer_stats]):

    - a tensor: the input ids; every token is real (the mask is all ones);
    - a ``Mapping`` (a dict, or a tokenizer's ``BatchEncoding`` made with ``return_tensors="pt"``):
      ``batch["input_ids"]``, and ``batch["attention_mask"]`` when present (else all ones);
      ``labels`` and any other key are not read;
    - a tuple or list (what a ``TensorDataset`` gives): its first element is the input ids and
      every token is real. The other elements are not read, not even a second tensor of the
      same shape, which may as well be labels as a mask: give padded batches as a dict with
      ``attention_mask``.

    A (T,) tensor of ids is one sequence. Anything else is a TypeError naming what it got.
    """
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError(f"a batch dict needs 'input_ids'; got keys {sorted(batch)}")
        input_ids, attention_mask, where = batch["input_ids"], batch.get("attention_mask"), "batch['input_ids']"
    elif isinstance(batch, Tensor):
        input_ids, attention_mask, where = batch, None, "the batch"
    elif isinstance(batch, (tuple, list)):
        if not batch:
            raise TypeError(f"a batch {type(batch).__name__} must hold the input ids as its first element, got an empty one")
        input_ids, attention_mask, where = batch[0], None, f"the first element of a batch {type(batch).__name__}"
    else:
        raise TypeError(
            "a batch must be a tensor of input ids, a dict (or other Mapping) with 'input_ids', or a tuple or list "
            f"whose first element is the input ids; got {type(batch).__name__}"
        )
    if not isinstance(input_ids, Tensor):
        raise TypeError(
            f"{where} must be a tensor of token ids, got {type(input_ids).__name__} "
            "(a tokenizer gives tensors with return_tensors='pt')"
        )
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"{where} must hold integer token ids, got a tensor of {input_ids.dtype}")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"batch['attention_mask'] must be a tensor, got {type(attention_mask).__name__}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"batch['attention_mask'] has shape {tuple(attention_mask.shape)} but batch['input_ids'] has "
                f"{tuple(input_ids.shape)}"
            )
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
        attention_mask = attention_mask.unsqueeze(0) if attention_mask is not None else None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return input_ids.to(device), attention_mask.to(device)


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the language-model head (the head is not needed for statistics)."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, nn.Module) else model


@torch.no_grad()
def collect_layer_stats(
    model: nn.Module,
    batches: Iterable[Tensor | Mapping[str, Any] | Sequence[Any]],
    progress: bool = True,
    per_window: bool = False,
) -> LayerStats:
    """Run a Hugging Face causal LM over calibration batches and return its [`LayerStats`][lorp_lightning.stats.LayerStats].

    Args:
        model: a Hugging Face causal LM (any architecture in ``lorp_lightning.architectures``).
        batches: an iterable of batches in any format [`model_inputs`][lorp_lightning.stats.model_inputs] reads: input-id
            tensors ((B, T) or (T,)), dicts with ``input_ids`` and optionally ``attention_mask``,
            or tuples whose first element is the input ids.
        progress: show a progress bar.
        per_window: also keep each window's (sequence's) own sums, ``stats.per_window``, which
            plan stability (``lorp_lightning.stability``) resamples. The same products, summed per
            window first.

    Runs under ``torch.no_grad()`` and holds at most one batch's normalised states at a time.
    The language-model head is skipped: statistics need only the decoder blocks.
    """
    from tqdm.auto import tqdm

    recorder = HiddenStateRecorder(model)
    metric = LayerSimilarity(recorder.num_layers, per_window=per_window)
    device = next(model.parameters()).device
    metric.to(device)
    stack = backbone(model)
    was_training = model.training
    model.eval()
    try:
        with recorder:
            for batch in tqdm(batches, desc="calibration", unit="batch", disable=not progress):
                input_ids, attention_mask = model_inputs(batch, device)
                stack(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                states, norms = recorder.pop_with_norms()
                metric.update(states, attention_mask, normalized=True, norms=norms)
                del states, norms  # else they stay alive through the next batch's forward: two batches' states at once
    finally:
        model.train(was_training)
    return metric.compute()

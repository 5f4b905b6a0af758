"""Compensation: a training-free correction for the scale of the stream after a gap, folded into
the kept weights.

When blocks a..b-1 are removed, block b receives h_a where the dense model gave it h_b. The
residual stream grows with depth (the mean norm of h_b is larger than h_a's), so from block b on
every kept block writes into a smaller stream than it was trained on, and its output weighs more
than it did. Prune&Comp (Chen et al., AAAI 2026) multiplies the stream at the gap by the ratio of
the two magnitudes. Here, for the gap in front of kept block b,

    c_b = (m_b / m_a) ** strength,     m_l = the mean L2 norm of h_l over the calibration tokens

(``LayerStats.norms``, from the statistics pass: no extra pass). ``strength`` 1 is the full
ratio and 0 no compensation; the default chooses it on the calibration windows that checked the
plan (``fit_strength``), so compensation never raises the calibration loss it was chosen on.

*The fold.* A pre-norm block reads the stream through a norm, which ignores the stream's scale,
and adds its output to it. Multiplying the stream entering block b by c therefore gives the same
logits (up to the norms' epsilon) as dividing what block b and every later block write into the
stream by c: their last projections, or the norms after them in families that have such norms
(``Architecture.stream_writers``, ``offset_writers``). With several gaps, each block's writers are
divided by the product of the factors of the gaps before it. The result is the same architecture
with other weights: it saves, reloads and generates as any pruned model. A family whose blocks
read the stream without a norm (OLMo 2 and 3, EXAONE 4, Gemma 4's per-layer inputs, OPT with its
norms after) is refused: no fold is exact there.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lorp_lightning._validation import is_integer
from lorp_lightning.architectures import Architecture, architecture_of, decoder_layers

__all__ = ["STRENGTHS", "check_compensable", "fit_strength", "gap_factors", "gaps", "stream_scaled"]

STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The strengths ``fit_strength`` tries: from none to the full magnitude ratio (decided in docs/method.md)."""


# --------------------------------------------------------------------------- the mathematics


def gaps(pruned: Sequence[int], num_layers: int) -> list[tuple[int, int]]:
    """The runs of removed blocks as ``(a, b)``: blocks a..b-1 removed, b the kept block after them.

    A run that reaches the end of the stack has no block after it (the final norm ignores the
    stream's scale) and is left out.

        >>> gaps([3, 4, 7], 10)
        [(3, 5), (7, 8)]
    """
    removed, out = sorted(set(int(b) for b in pruned)), []
    for block in removed:
        if out and out[-1][1] == block:
            out[-1] = (out[-1][0], block + 1)
        else:
            out.append((block, block + 1))
    return [(a, b) for a, b in out if b < num_layers]


def gap_factors(norms: Sequence[float], pruned: Sequence[int], strength: float = 1.0) -> dict[int, float]:
    """The factor of the stream at each gap, by the kept block after it: ``(m_b / m_a) ** strength``.

    Args:
        norms: m_0..m_N, the mean L2 norm of each hidden state (``LayerStats.norms``).
        pruned: the blocks removed.
        strength: the exponent; 0 gives factors of 1 (no compensation), 1 the full ratio.
    """
    norms = [float(m) for m in norms]
    strength = float(strength)
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    if any(not (math.isfinite(m) and m > 0) for m in norms):
        raise ValueError(f"norms must be finite and positive, got {norms}")
    return {b: (norms[b] / norms[a]) ** strength for a, b in gaps(pruned, len(norms) - 1)}


def check_factors(factors: Mapping[int, float], pruned: Sequence[int], num_layers: int) -> dict[int, float]:
    """``factors`` as a dict of int -> float after checking that each key is the kept block right after
    a gap of ``pruned`` and each factor is finite and positive (a clear error otherwise)."""
    if not isinstance(factors, Mapping):
        raise TypeError(
            f"compensate must be a mapping {{block after a gap: factor}} or None, got {type(factors).__name__} {factors!r}"
        )
    after_gaps = [b for _, b in gaps(pruned, num_layers)]
    out = {}
    for block, factor in factors.items():
        if not is_integer(block):
            raise TypeError(f"compensate: block {block!r} is not an int")
        block = int(block)
        if block not in after_gaps:
            raise ValueError(
                f"compensate: block {block} is not the kept block after a gap of the plan {sorted(pruned)} "
                f"(those are {after_gaps})"
            )
        factor = float(factor)
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"compensate: the factor of block {block} must be finite and positive, got {factor!r}")
        out[block] = factor
    return out


# --------------------------------------------------------------------------- the model


def check_compensable(model: nn.Module) -> Architecture:
    """The model's architecture, after checking that a factor folds into its weights exactly;
    a ValueError naming the family and the reason otherwise."""
    architecture = architecture_of(model)
    config = model.config.get_text_config(decoder=True)
    family = getattr(model.config, "model_type", type(model).__name__)
    if architecture.generic:
        raise ValueError(
            f"compensation is not available for the {family!r} family: it is not in the table of "
            "lorp_lightning.architectures, so which weights write into its stream is not known"
        )
    if architecture.compensation_refused:
        raise ValueError(f"compensation is not available for the {family!r} family: {architecture.compensation_refused}")
    for field, value in architecture.compensation_settings:
        held = getattr(config, field, None)
        if held is not None and held != value:
            raise ValueError(
                f"compensation is not available for this {family!r} model: it needs {field}={value!r} "
                f"(with {field}={held!r} a block reads the stream without a norm, so no fold is exact)"
            )
    for block in decoder_layers(model):
        lora = [name for name, _ in block.named_parameters() if "lora_" in name]
        if lora:
            raise ValueError(
                f"compensation cannot fold into a model with LoRA adapters ({lora[0]}): merge them first "
                "(peft's merge_and_unload) or compensate before adding them"
            )
    return architecture


def _writers(block: nn.Module, patterns: Sequence[str]) -> list[nn.Parameter]:
    return [p for name, p in block.named_parameters() if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)]


def writers(block: nn.Module, architecture: Architecture) -> list[nn.Parameter]:
    """The parameters of ``block`` that ``fold`` scales (its family's stream writers and offset writers)."""
    return _writers(block, architecture.stream_writers + architecture.offset_writers)


def check_writers(model: nn.Module, architecture: Architecture, blocks: Sequence[int]) -> None:
    """Every block of ``blocks`` has a stream writer to scale (else the table entry is wrong for this model)."""
    layers = decoder_layers(model)
    for index in blocks:
        if not writers(layers[index], architecture):
            raise NotImplementedError(
                f"block {index} of this {model.config.model_type!r} model has no parameter named as its family's stream "
                f"writers {architecture.stream_writers + architecture.offset_writers}: compensation cannot be folded"
            )


@torch.no_grad()
def fold(blocks: Sequence[nn.Module], architecture: Architecture, scales: Sequence[float]) -> None:
    """Scale what each block writes into the stream by its ``scales`` entry (1 leaves it as it was)."""
    for block, scale in zip(blocks, scales, strict=True):
        if scale == 1.0:
            continue
        for parameter in _writers(block, architecture.stream_writers):
            parameter.copy_(parameter.float() * scale)
        for parameter in _writers(block, architecture.offset_writers):
            parameter.copy_((1.0 + parameter.float()) * scale - 1.0)


def writer_scales(kept: Sequence[int], factors: Mapping[int, float]) -> list[float]:
    """For each kept block (original numbering, ascending): 1 / the product of the factors of the gaps before it."""
    scales, product = [], 1.0
    for block in kept:
        product *= factors.get(block, 1.0)
        scales.append(1.0 / product)
    return scales


@contextmanager
def stream_scaled(blocks: Mapping[nn.Module, float]) -> Iterator[None]:
    """Inside the ``with`` block, the stream entering each of ``blocks`` is multiplied by its factor
    (forward pre-hooks): what the fold computes, without changing a weight."""

    def hook_for(factor: float):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                return (args[0] * factor,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * factor}

        return hook

    handles = [
        block.register_forward_pre_hook(hook_for(factor), with_kwargs=True) for block, factor in blocks.items() if factor != 1.0
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def fit_strength(
    loss: Any, pruned: Sequence[int], norms: Sequence[float], strengths: Sequence[float] = STRENGTHS
) -> tuple[float, dict[int, float], dict[float, float]]:
    """The strength of ``strengths`` whose factors give the plan the lowest calibration loss.

    ``loss``: a ``lorp_lightning.search.PlanLoss`` on the calibration windows (each strength but 0
    costs one check of the plan, compensated). Ties go to the smaller strength. Returns the
    strength, its factors and the loss at every strength.
    """
    factors = {float(s): gap_factors(norms, pruned, s) for s in strengths}
    losses = {s: loss.compensated(pruned, f) for s, f in factors.items()}  # strength 0: the plan's own loss
    best = min(losses, key=lambda s: (losses[s], s))
    return best, factors[best], losses

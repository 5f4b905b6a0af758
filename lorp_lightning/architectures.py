"""Model specifics, in one place: where each architecture keeps its decoder blocks and what in
its config must change when blocks are removed.

Every other module asks this table; none tests ``model_type`` itself. To support a new
architecture, add one :class:`Architecture` entry to ``ARCHITECTURES`` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["ARCHITECTURES", "Architecture", "architecture_of", "decoder_layers"]


@dataclass(frozen=True)
class Architecture:
    """Facts about one ``model_type``."""

    layers_path: str  # attribute path from the *ForCausalLM model to its decoder block ModuleList
    per_layer_fields: tuple[str, ...] = ()  # config lists with one entry per block
    block_index_fields: tuple[str, ...] = field(default=())  # config fields that hold block indices


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("model.layers"),
    "mistral": Architecture("model.layers", per_layer_fields=("layer_types",)),
    "qwen2": Architecture("model.layers", per_layer_fields=("layer_types",)),
    "qwen3": Architecture("model.layers", per_layer_fields=("layer_types",)),
    "gemma": Architecture("model.layers"),
    "gemma2": Architecture("model.layers", per_layer_fields=("layer_types",)),
    "gemma3_text": Architecture("model.layers", per_layer_fields=("layer_types",)),
    "phi3": Architecture("model.layers"),
    "olmo2": Architecture("model.layers"),
    "gpt2": Architecture("transformer.h"),
    "gpt_neox": Architecture("gpt_neox.layers"),
    "opt": Architecture("model.decoder.layers"),
    "falcon": Architecture("transformer.h"),
    "stablelm": Architecture("model.layers"),
    "starcoder2": Architecture("model.layers"),
}


def architecture_of(model: nn.Module) -> Architecture:
    """The table entry for ``model``; a clear error for an architecture not in the table."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise NotImplementedError(
            f"lorp_lightning does not know the architecture model_type={model_type!r} "
            f"({type(model).__name__}). Known: {', '.join(sorted(ARCHITECTURES))}. To add it, put an "
            "Architecture entry for it in ARCHITECTURES in lorp_lightning/architectures.py."
        )
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks of a Hugging Face causal LM, in depth order."""
    module = model
    for name in architecture_of(model).layers_path.split("."):
        module = getattr(module, name)
    if not isinstance(module, nn.ModuleList):
        raise TypeError(f"expected an nn.ModuleList of decoder blocks at {architecture_of(model).layers_path}, got {type(module).__name__}")
    return module

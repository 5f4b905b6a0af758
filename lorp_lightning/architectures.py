"""Model specifics, in one place: where each architecture keeps its decoder blocks and what in
its config must change when blocks are removed.

Every other module asks this table; none tests ``model_type`` itself. To support a new
architecture, add one `Architecture` entry to ``ARCHITECTURES`` below.

The config fields named in an entry are looked up on the decoder's config,
``model.config.get_text_config(decoder=True)`` (the config itself for a plain causal LM, its
text sub-config for a multimodal one). A field the config does not have, or holds as ``None``,
is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["ARCHITECTURES", "Architecture", "architecture_of", "decoder_layers"]

# Per-block lists that transformers itself knows (``PreTrainedConfig.validate_layer_type``
# checks their length against ``num_hidden_layers``); every entry trims them when present.
COMMON_PER_LAYER_FIELDS = ("layer_types", "mlp_layer_types")


@dataclass(frozen=True)
class Architecture:
    """Facts about one ``model_type``."""

    layers_path: str
    """Attribute path from the *ForCausalLM model to its ``nn.ModuleList`` of decoder blocks."""

    depth_fields: tuple[str, ...] = ("num_hidden_layers",)
    """Config fields that hold the number of blocks (the field and any alias of it)."""

    per_layer_fields: tuple[str, ...] = COMMON_PER_LAYER_FIELDS
    """Config lists with one entry per block, in depth order: trimmed to the kept blocks."""

    block_index_fields: tuple[str, ...] = ()
    """Config lists of block indices (e.g. MoE ``mlp_only_layers``): renumbered, removed ones dropped."""

    block_count_fields: tuple[str, ...] = ()
    """Config ints meaning "the first n blocks" (e.g. Qwen2 ``max_window_layers``): n becomes
    the number of kept blocks among those first n."""

    required_settings: tuple[tuple[str, object], ...] = ()
    """``(field, value)`` pairs: settings that make a block's computation depend on its absolute
    index in the stack. Pruning is refused unless each field has the value given here."""

    checkpoint_layers_paths: tuple[str, ...] = ()
    """Other names of ``layers_path`` in checkpoint files, where transformers renames the weights
    between the model and its files (a checkpoint's block tensors are named
    ``<layers_path>.<i>.<...>``, or ``<one of these>.<i>.<...>``)."""


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("model.layers"),
    "mistral": Architecture("model.layers"),
    "ministral": Architecture("model.layers"),
    "qwen2": Architecture("model.layers", block_count_fields=("max_window_layers",)),
    "qwen3": Architecture("model.layers", block_count_fields=("max_window_layers",)),
    "qwen2_moe": Architecture(
        "model.layers",
        block_index_fields=("mlp_only_layers",),
        block_count_fields=("max_window_layers",),
        # (i + 1) % decoder_sparse_step picks the MoE blocks by absolute index; 1 makes them all MoE.
        required_settings=(("decoder_sparse_step", 1),),
    ),
    "gemma": Architecture("model.layers"),
    "gemma2": Architecture("model.layers"),
    "gemma3_text": Architecture("model.layers"),
    # Gemma3ForConditionalGeneration; transformers saves its blocks as language_model.model.layers
    "gemma3": Architecture("model.language_model.layers", checkpoint_layers_paths=("language_model.model.layers",)),
    "phi3": Architecture("model.layers"),
    "olmo2": Architecture("model.layers"),
    # num_hidden_layers is an alias (attribute_map) of n_layer; the attention scale of block i
    # is 1 / (i + 1) when scale_attn_by_inverse_layer_idx is set.
    "gpt2": Architecture(
        "transformer.h",
        depth_fields=("n_layer",),
        required_settings=(("scale_attn_by_inverse_layer_idx", False),),
    ),
    "gpt_neox": Architecture("gpt_neox.layers"),
    "opt": Architecture("model.decoder.layers"),
    "falcon": Architecture("transformer.h", depth_fields=("num_hidden_layers", "n_layer")),  # old configs carry n_layer
    "stablelm": Architecture("model.layers"),
    "starcoder2": Architecture("model.layers"),
}


def architecture_of(model: nn.Module | Any) -> Architecture:
    """The table entry for ``model`` (a model, or its config); a clear error for an architecture not in the table."""
    config = getattr(model, "config", None) if isinstance(model, nn.Module) else model
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
    path = architecture_of(model).layers_path
    module = model
    for name in path.split("."):
        module = getattr(module, name)
    if not isinstance(module, nn.ModuleList):
        raise TypeError(f"expected an nn.ModuleList of decoder blocks at {path}, got {type(module).__name__}")
    return module

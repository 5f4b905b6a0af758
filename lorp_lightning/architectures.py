"""Model specifics, in one place: where each architecture keeps its decoder blocks and what in
its config must change when blocks are removed.

Every other module asks this module; none tests ``model_type`` itself. A family in the table
``ARCHITECTURES`` is trusted: the test suite checks it on a small random model. A family not in
the table takes the *generic path*: its block list is found by shape (the ``nn.ModuleList`` under
the decoder whose length is the config's depth), its per-block lists are found by length, and
``lorp_lightning.surgery.prune_layers`` proves each pruning on the spot (the pruned model's
logits must equal the dense model's with those blocks skipped) or refuses it and leaves the
model as it was. To make a family trusted, add one `Architecture` entry below and its small
config to ``tests/test_surgery.py``.

The config fields an entry names are looked up on the decoder's config,
``model.config.get_text_config(decoder=True)`` (the config itself for a plain causal LM, its
text sub-config for a multimodal one). A field the config does not have, or holds as ``None``,
is left alone. ``docs/families.md`` lists what happens to every causal-LM type transformers ships.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BlocksNotFoundError",
    "architecture_of",
    "decoder_layers",
    "find_decoder_layers",
    "skeleton",
]

# How transformers names per-block facts across families. An entry's defaults are these, so a
# family that has one of them is handled without naming it; a field a config lacks is skipped.
PER_LAYER_FIELDS = ("layer_types", "mlp_layer_types", "no_rope_layers", "layers_block_type")
"""Lists with one entry per block, in depth order (attention kind, MoE or dense, RoPE or not,
Mamba / attention / convolution / linear attention): trimmed to the kept blocks."""

BLOCK_INDEX_FIELDS = ("mlp_only_layers", "moe_layers", "full_attn_idxs")
"""Lists of block indices (the dense blocks of an MoE, the MoE blocks, LFM2's attention blocks):
renumbered, the removed ones dropped."""

BLOCK_COUNT_FIELDS = ("max_window_layers", "first_k_dense_replace", "num_dense_layers")
"""Ints meaning "the first n blocks" (Qwen2's full-attention blocks, DeepSeek's dense blocks):
n becomes the number of kept blocks among those first n."""

TAIL_COUNT_FIELDS = ("num_kv_shared_layers",)
"""Ints meaning "the last n blocks" (Gemma 3n and 4: the blocks that reuse an earlier block's
keys and values): n becomes the number of kept blocks among those last n."""


@dataclass(frozen=True)
class Architecture:
    """Facts about one ``model_type``."""

    layers_path: str
    """Attribute path from the *ForCausalLM model to its ``nn.ModuleList`` of decoder blocks."""

    depth_fields: tuple[str, ...] = ("num_hidden_layers",)
    """Config fields that hold the number of blocks (the field and any alias of it)."""

    per_layer_fields: tuple[str, ...] = PER_LAYER_FIELDS
    """Config lists with one entry per block, in depth order: trimmed to the kept blocks."""

    block_index_fields: tuple[str, ...] = BLOCK_INDEX_FIELDS
    """Config lists of block indices (e.g. MoE ``mlp_only_layers``): renumbered, removed ones dropped."""

    block_count_fields: tuple[str, ...] = BLOCK_COUNT_FIELDS
    """Config ints meaning "the first n blocks" (e.g. Qwen2 ``max_window_layers``): n becomes
    the number of kept blocks among those first n."""

    tail_count_fields: tuple[str, ...] = TAIL_COUNT_FIELDS
    """Config ints meaning "the last n blocks" (``num_kv_shared_layers``): n becomes the number
    of kept blocks among those last n."""

    required_settings: tuple[tuple[str, object], ...] = ()
    """``(field, value)`` pairs: settings that make a block's computation depend on its absolute
    index in the stack. Pruning is refused unless each field has the value given here."""

    placement_fields: tuple[str, ...] = ()
    """Config ints that place block kinds by index arithmetic (Jamba's ``attn_layer_period``):
    nothing can renumber them, so a plan is accepted only where the config still builds every kept
    block as it was (the structure check of ``prune_layers``), and a refusal names them."""

    per_block_slices: tuple[tuple[str, int], ...] = ()
    """``(parameter, dim)`` pairs, the parameter named from the module that holds the blocks:
    weights outside the blocks made of one slice per block along ``dim`` (Gemma 4's per-layer
    input embeddings). Pruning keeps the kept blocks' slices."""

    free_settings: tuple[str, ...] = ()
    """Module settings that differ after pruning without changing what the kept blocks compute,
    left out of the structure check (each entry says why; the tests check the logits)."""

    checkpoint_layers_paths: tuple[str, ...] = ()
    """Other paths of the blocks: in checkpoint files, where transformers renames the weights between
    the model and its files (a checkpoint's block tensors are named ``<layers_path>.<i>.<...>``, or
    ``<one of these>.<i>.<...>``), and in the family's other model classes (Llama 4's
    ``Llama4ForConditionalGeneration`` keeps them at ``language_model.model.layers``). For a model
    in memory, ``architecture_of`` gives the first path that holds its blocks."""

    stream_writers: tuple[str, ...] = ()
    """The parameters of a block that write into the residual stream, as ``fnmatch`` patterns of
    their names in the block: the last projections of the attention, the MLP and the experts, or the
    norms after them where the family has such norms (then nothing else may be named). Scaling them
    all by s scales what the block adds to the stream by s; how compensation folds a factor into the
    weights (``lorp_lightning.compensation``). A pattern that names nothing in a block is skipped."""

    offset_writers: tuple[str, ...] = ()
    """Stream writers stored as w of a norm that computes x * (1 + w) (Gemma 1-3): scaled as
    (1 + w) * s - 1."""

    compensation_refused: str = ""
    """Why compensation cannot be folded exactly into this family's weights ("" where it can, given
    ``stream_writers`` or ``offset_writers``)."""

    compensation_settings: tuple[tuple[str, object], ...] = ()
    """``(field, value)`` pairs the config must hold for the fold to be exact (settings that make a
    block read the stream without a norm)."""

    generic: bool = False
    """True for a family not in the table, described by ``find_decoder_layers``: its prunings are
    proven on the spot."""


def _multimodal(language_model: str = "model.language_model.layers", **facts: Any) -> Architecture:
    """A *ForConditionalGeneration whose decoder is its ``language_model`` (saved under the same
    path by transformers 5)."""
    return Architecture(language_model, **facts)


# The stream writers of the families that name their blocks' parts as Llama does, dense or MoE (fused experts,
# shared experts); a pattern that names nothing in a block is skipped.
_WRITERS = (
    "self_attn.o_proj.*",
    "mlp.down_proj.*",
    "mlp.experts.down_proj*",
    "mlp.shared_expert.down_proj.*",
    "mlp.shared_experts.down_proj.*",
)
_LINEAR_ATTENTION_WRITERS = _WRITERS + ("linear_attn.out_proj.*",)  # Qwen's Gated DeltaNet blocks
_POST_NORMS = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")  # sandwich norms: they write
_NO_PRE_NORM = (
    "{} has no norm before its attention and MLP (its norms follow them): a block reads the stream's scale, "
    "so no factor folds into the weights exactly"
)
_LLAMA = Architecture("model.layers", stream_writers=_WRITERS)
_LLAMA4_WRITERS = (
    "self_attn.o_proj.*",
    "feed_forward.down_proj.*",
    "feed_forward.experts.down_proj*",
    "feed_forward.shared_expert.down_proj.*",
)

# The (i + 1) % decoder_sparse_step rule of Qwen's MoE families picks the MoE blocks by absolute index; 1 makes them all MoE.
_QWEN_MOE = dict(required_settings=(("decoder_sparse_step", 1),), stream_writers=_LINEAR_ATTENTION_WRITERS)

# Gemma 4: the small models (E2B, E4B) give each block its own input besides the stream, a slice of
# two tables: per-layer token embeddings (vocabulary x blocks * 256) and a projection of the embeddings.
# store_full_length_kv marks the last block of each attention kind whose keys and values an assistant
# model may read; it hands them out beside the hidden state and changes no logit.
# Its norms compute x * w; the per-layer input's gate reads the stream without a norm, so the fold is exact only without
# per-layer inputs (the larger models).
_GEMMA4 = dict(
    per_block_slices=(("embed_tokens_per_layer.weight", 1), ("per_layer_model_projection.weight", 0)),
    free_settings=("store_full_length_kv",),
    stream_writers=_POST_NORMS,
    compensation_settings=(("hidden_size_per_layer_input", 0),),
)
_GEMMA = dict(offset_writers=_POST_NORMS)  # Gemma 2 and 3: sandwich norms computing x * (1 + w)

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "ministral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "qwen2_moe": Architecture("model.layers", **_QWEN_MOE),
    "qwen3_moe": Architecture("model.layers", **_QWEN_MOE),
    # linear attention (Gated DeltaNet) and full attention, per layer_types; MoE blocks
    "qwen3_next": Architecture("model.layers", **_QWEN_MOE),
    "qwen3_5_text": Architecture("model.layers", stream_writers=_LINEAR_ATTENTION_WRITERS),
    "qwen3_5": _multimodal(stream_writers=_LINEAR_ATTENTION_WRITERS),
    "qwen3_5_moe_text": Architecture("model.layers", stream_writers=_LINEAR_ATTENTION_WRITERS),
    "qwen3_5_moe": _multimodal(stream_writers=_LINEAR_ATTENTION_WRITERS),
    "gemma": _LLAMA,
    "gemma2": Architecture("model.layers", **_GEMMA),
    "gemma3_text": Architecture("model.layers", **_GEMMA),
    # Gemma3ForConditionalGeneration; transformers saves its blocks as language_model.model.layers
    "gemma3": Architecture("model.language_model.layers", checkpoint_layers_paths=("language_model.model.layers",), **_GEMMA),
    # per_layer_config (the head size of the full-attention blocks) is renumbered; the per-layer
    # inputs are cut to the kept blocks. KV sharing: see surgery._refuse_lost_kv_producers.
    "gemma4_text": Architecture("model.layers", **_GEMMA4),
    "gemma4": _multimodal(**_GEMMA4),
    "phi": Architecture("model.layers", stream_writers=("self_attn.dense.*", "mlp.fc2.*")),
    "phi3": _LLAMA,
    "olmo2": Architecture("model.layers", compensation_refused=_NO_PRE_NORM.format("OLMo 2")),
    "olmo3": Architecture("model.layers", compensation_refused=_NO_PRE_NORM.format("OLMo 3")),
    "olmoe": _LLAMA,
    "mixtral": _LLAMA,
    "deepseek_v3": _LLAMA,  # first_k_dense_replace: a block-count field
    "gpt_oss": _LLAMA,
    "llama4_text": Architecture("model.layers", stream_writers=_LLAMA4_WRITERS),  # moe_layers renumbered, no_rope_layers trimmed
    # AutoModelForCausalLM builds Llama4ForCausalLM (model.layers); Llama4ForConditionalGeneration holds one
    "llama4": Architecture(
        "model.layers", checkpoint_layers_paths=("language_model.model.layers",), stream_writers=_LLAMA4_WRITERS
    ),
    "smollm3": _LLAMA,  # no_rope_layers trimmed
    "granite": _LLAMA,
    # Mamba 2 and attention blocks, per layer_types
    "granitemoehybrid": Architecture(
        "model.layers",
        stream_writers=(
            "self_attn.o_proj.*",
            "mamba.out_proj.*",
            "block_sparse_moe.experts.down_proj*",
            "shared_mlp.output_linear.*",
        ),
    ),
    "cohere2": _LLAMA,
    "glm4": Architecture("model.layers", stream_writers=("post_self_attn_layernorm.weight", "post_mlp_layernorm.weight")),
    "exaone4": Architecture("model.layers", compensation_refused=_NO_PRE_NORM.format("EXAONE 4")),
    "ernie4_5": _LLAMA,
    "nemotron": _LLAMA,
    "seed_oss": _LLAMA,
    # lightning (linear) and full attention, per layer_types. A lightning block's decay rates depend on
    # layer_idx / (num_hidden_layers - 1), but only at construction: they are buffers saved with the weights.
    "minimax": Architecture(
        "model.layers",
        free_settings=("num_hidden_layers",),
        compensation_refused=(
            "each block takes its residual after its input norm, so the stream's scale never reaches a later block: "
            "there is nothing to compensate"
        ),
    ),
    "lfm2": Architecture(
        "model.layers", stream_writers=("conv.out_proj.*", "self_attn.out_proj.*", "feed_forward.w2.*")
    ),  # convolution and attention blocks: layer_types and full_attn_idxs
    "falcon_h1": Architecture(
        "model.layers", stream_writers=("self_attn.o_proj.*", "mamba.out_proj.*", "feed_forward.down_proj.*")
    ),  # every block is Mamba 2 and attention side by side
    # attention / Mamba and MoE / dense blocks by period and offset
    "jamba": Architecture(
        "model.layers",
        placement_fields=("attn_layer_period", "attn_layer_offset", "expert_layer_period", "expert_layer_offset"),
        stream_writers=("self_attn.o_proj.*", "mamba.out_proj.*", "feed_forward.down_proj.*", "feed_forward.experts.down_proj*"),
    ),
    # num_hidden_layers is an alias (attribute_map) of n_layer; the attention scale of block i
    # is 1 / (i + 1) when scale_attn_by_inverse_layer_idx is set.
    "gpt2": Architecture(
        "transformer.h",
        depth_fields=("n_layer",),
        required_settings=(("scale_attn_by_inverse_layer_idx", False),),
        stream_writers=("attn.c_proj.*", "mlp.c_proj.*"),
    ),
    "gpt_neox": Architecture("gpt_neox.layers", stream_writers=("attention.dense.*", "mlp.dense_4h_to_h.*")),
    "opt": Architecture(
        "model.decoder.layers",
        stream_writers=("self_attn.out_proj.*", "fc2.*"),
        compensation_settings=(("do_layer_norm_before", True),),
    ),  # OPT-350m normalises after: not exact
    "falcon": Architecture(
        "transformer.h",
        depth_fields=("num_hidden_layers", "n_layer"),
        stream_writers=("self_attention.dense.*", "mlp.dense_4h_to_h.*"),
    ),  # old configs carry n_layer
    "stablelm": _LLAMA,
    "starcoder2": Architecture("model.layers", stream_writers=("self_attn.o_proj.*", "mlp.c_proj.*")),
}


class BlocksNotFoundError(NotImplementedError):
    """The generic path found no single list of decoder blocks in a model; the message says what it looked for."""


def architecture_of(model: nn.Module | Any) -> Architecture:
    """The facts for ``model`` (a model, or its config): its table entry, or for a family not in
    the table, what the generic path finds (``generic=True``).

    Raises:
        BlocksNotFoundError: a family not in the table whose decoder blocks cannot be found; the
            message names what was looked for.
    """
    config = getattr(model, "config", None) if isinstance(model, nn.Module) else model
    model_type = getattr(config, "model_type", None)
    if model_type in ARCHITECTURES:
        entry = ARCHITECTURES[model_type]
        if isinstance(model, nn.Module):  # the path of this model class, where the family has several
            path = next((p for p in (entry.layers_path, *entry.checkpoint_layers_paths) if _holds_blocks(model, p)), None)
            if path is not None and path != entry.layers_path:
                return replace(entry, layers_path=path)
        return entry
    if not isinstance(model_type, str) or not hasattr(config, "get_text_config"):
        raise NotImplementedError(
            f"a {type(model).__name__} is not a Hugging Face causal LM or its config: it has no config with a model_type"
        )
    if getattr(config, "is_encoder_decoder", False):
        raise NotImplementedError(
            f"cannot prune this {type(model).__name__} (model_type={model_type!r}): it is an encoder-decoder, and "
            "lorp_lightning prunes the decoder blocks of decoder-only causal LMs, whose every block reads the one "
            "residual stream that LoRP's statistics describe"
        )
    if not isinstance(model, nn.Module):
        model = skeleton(config)
    path = find_decoder_layers(model)
    text_config = model.config.get_text_config(decoder=True)
    depth = len(model.get_submodule(path))
    lists = tuple(
        name
        for name, value in vars(text_config).items()
        if not name.startswith("_")
        and isinstance(value, (list, tuple))
        and len(value) == depth
        and name not in BLOCK_INDEX_FIELDS
    )
    return replace(Architecture(path), per_layer_fields=tuple(dict.fromkeys(PER_LAYER_FIELDS + lists)), generic=True)


def _holds_blocks(model: nn.Module, path: str) -> bool:
    try:
        return isinstance(model.get_submodule(path), nn.ModuleList)
    except AttributeError:
        return False


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks of a Hugging Face causal LM, in depth order."""
    path = architecture_of(model).layers_path
    module = model
    for name in path.split("."):
        module = getattr(module, name)
    if not isinstance(module, nn.ModuleList):
        raise TypeError(f"expected an nn.ModuleList of decoder blocks at {path}, got {type(module).__name__}")
    return module


def find_decoder_layers(model: nn.Module) -> str:
    """The path of ``model``'s decoder blocks, found by shape: the ``nn.ModuleList`` whose length
    is the config's depth (``num_hidden_layers``), under the decoder (``model.get_decoder()``)
    when the model names one, and not inside another such list.

    Raises:
        BlocksNotFoundError: no such list, or more than one; the message says what was looked for
            and which lists the model has.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    text_config = config.get_text_config(decoder=True) if config is not None else None
    depth = getattr(text_config, "num_hidden_layers", None) if text_config is not None else None
    what = f"the decoder blocks of this {type(model).__name__} (model_type={model_type!r})"
    lists = {name: module for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and name}
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise BlocksNotFoundError(
            f"cannot find {what}: its config gives no depth (num_hidden_layers={depth!r}) to look for an nn.ModuleList of "
            "that many blocks"
        )
    candidates = [name for name, module in lists.items() if len(module) == depth]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and decoder is not model:
        prefix = next((name + "." for name, module in model.named_modules() if module is decoder), "")
        under = [name for name in candidates if name.startswith(prefix)]
        candidates = under or candidates
    candidates = [name for name in candidates if not any(name.startswith(other + ".") for other in candidates)]
    if len(candidates) != 1:
        seen = ", ".join(f"{name} ({len(module)})" for name, module in list(lists.items())[:12]) or "none"
        problem = "found none" if not candidates else f"found {len(candidates)}: {', '.join(candidates)}"
        raise BlocksNotFoundError(
            f"cannot find {what}: looked for one nn.ModuleList of num_hidden_layers={depth} modules under the decoder "
            f"(model.get_decoder()), not nested in another, and {problem}. The model's ModuleLists (length): {seen}. "
            "If this family keeps its blocks otherwise, add an Architecture entry for it to ARCHITECTURES in "
            "lorp_lightning/architectures.py"
        )
    return candidates[0]


def skeleton(config: Any) -> nn.Module:
    """A model of ``config`` on the meta device (no memory for weights): where its blocks are."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)

"""Tiny random-initialised causal LMs, one for every model type of AutoModelForCausalLM, for the depth-pruning sweep.

tiny_model(model_type) builds a model of DEPTH decoder blocks, hidden size about 64 and vocab 128 in a fraction of a
second, keeping the family's per-block pattern (sliding/full attention, linear attention, mamba, short convolutions, MoE and
dense blocks, KV-sharing blocks, NoPE blocks...) so that removing whole blocks exercises what makes each family special.
tiny_config(model_type) is its config: a generic shrinker (SMALL, applied to every config field and sub-config) plus a few
per-family OVERRIDES. Types that cannot be built here raise NotTiny with the reason; kind(model_type) says whether a type is
a decoder, the decoder half of an encoder-decoder, a masked-LM encoder used as a decoder, or something else.

    python benchmarks/decisions/tiny_models.py [--summary FILE] [TYPE ...]

builds every type (or the given ones), runs one forward pass, checks that skipping decoder block 1 changes the logits, and
prints one line per type and the total time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import re
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

DEPTH = 6  # decoder blocks of every tiny model
TOWER_DEPTH = 2  # blocks of the other stacks of a composite model (vision/audio towers, depth decoders, byte encoders)
TEXT_SUB_CONFIGS = ("text_config", "decoder", "global_config")  # sub-configs holding the decoder blocks: DEPTH
VOCAB = 128
MAX_PARAMS = 3_000_000  # tiny_model refuses anything bigger (checked on the meta device first)

DEPTH_FIELDS = (
    "num_hidden_layers",
    "n_layer",
    "n_layers",
    "num_layers",
    "decoder_layers",
    "encoder_layers",
    "num_decoder_layers",
    "num_encoder_layers",
    "num_blocks",
)

# Field -> small value, passed to a config constructor for every field its class has (sub-configs included); the
# DEPTH_FIELDS get DEPTH or TOWER_DEPTH (see shrink).
SMALL: dict[str, Any] = {
    # width
    **dict.fromkeys(
        [
            "hidden_size",
            "n_embd",
            "d_model",
            "emb_dim",
            "hidden_size_global",
            "backbone_hidden_size",
            "mm_embed_dim",
            "audio_embed_dim",
            "output_proj_dims",
            "nemo_conv_channels",
            "ext_pw_out_channel",
            "depthwise_separable_out_channel",
            "adapter_in_dim",
            "adapter_out_dim",
            "adapter_input_size",
        ],
        64,
    ),
    **dict.fromkeys(
        [
            "intermediate_size",
            "ffn_dim",
            "decoder_ffn_dim",
            "encoder_ffn_dim",
            "d_inner",
            "dff",
            "dim_ff",
            "mlp_dim",
            "ffn_hidden_size",
            "intermediate_size_mlp",
            "dense_intermediate_size",
            "first_dense_intermediate_size",
            "mlp_only_intermediate_size",
            "prefix_dense_intermediate_size",
            "feed_forward_size",
        ],
        128,
    ),
    # attention heads
    **dict.fromkeys(
        [
            "num_attention_heads",
            "n_head",
            "n_heads",
            "num_heads",
            "attention_heads",
            "decoder_attention_heads",
            "encoder_attention_heads",
            "num_decoder_attention_heads",
            "num_encoder_attention_heads",
            "conf_num_attention_heads",
            "swa_num_attention_heads",
            "linear_num_value_heads",
            "linear_num_heads",
        ],
        4,
    ),
    **dict.fromkeys(
        ["num_key_value_heads", "swa_num_key_value_heads", "linear_num_key_heads", "index_n_heads", "index_num_heads"], 2
    ),
    **dict.fromkeys(
        [
            "head_dim",
            "swa_head_dim",
            "dim_head",
            "d_head",
            "attention_head_size",
            "kv_channels",
            "index_head_dim",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_head_dim",
            "v_head_dim",
        ],
        16,
    ),
    # multi-head latent attention (deepseek style) and sparse-attention indexers
    **dict.fromkeys(["kv_lora_rank", "q_lora_rank", "o_lora_rank"], 16),
    **dict.fromkeys(["qk_rope_head_dim", "qk_nope_head_dim", "rotary_dim", "index_topk"], 8),
    # mixture of experts
    **dict.fromkeys(
        [
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "moe_shared_expert_intermediate_size",
            "shared_experts_intermediate_size",
            "shared_intermediate_size",
            "expert_ffn_hidden_size",
            "router_hidden_size",
        ],
        32,
    ),
    **dict.fromkeys(["num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"], 4),
    **dict.fromkeys(["num_experts_per_tok", "moe_topk", "moe_k", "top_k_experts", "zero_expert_num"], 2),
    **dict.fromkeys(["n_shared_experts", "num_shared_experts", "moe_num_shared_experts", "n_group", "topk_group"], 1),
    "first_k_dense_replace": 1,  # block 0 dense, the others MoE, as in the DeepSeek-style checkpoints (some defaults are 0)
    # state-space / recurrent mixers
    **dict.fromkeys(["mamba_d_state", "state_size", "ssm_state_size"], 16),
    **dict.fromkeys(["mamba_n_heads", "mamba_num_heads", "n_mamba_heads"], 4),
    "mamba_head_dim": 32,  # 4 heads of 32 = mamba_expand (2) * hidden_size
    **dict.fromkeys(["n_groups", "mamba_n_groups", "mamba_ngroups"], 1),
    **dict.fromkeys(["mamba_chunk_size", "chunk_size"], 16),
    # low-rank side paths
    **dict.fromkeys(["hc_lowrank", "laurel_rank", "loop_gate_rank", "adapter_rank", "hidden_size_per_layer_input"], 16),
    # positions and windows
    **dict.fromkeys(["max_position_embeddings", "n_positions", "n_ctx", "max_target_positions", "position_embedding_size"], 256),
    **dict.fromkeys(
        [
            "sliding_window",
            "sliding_window_size",
            "attention_window_size",
            "attention_chunk_size",
            "local_attention_window_len",
            "keep_window_size",
        ],
        4,
    ),
    "local_attention": 8,  # ModernBERT-decoder halves it into its sliding window
    "rel_extent": 32,
    "mm_posemb_size": 16,
    # vocabularies and special embeddings
    **dict.fromkeys(
        [
            "vocab_size",
            "vocab_size_per_layer_input",
            "decoder_vocab_size",
            "output_vocab_size",
            "unpadded_vocab_size",
            "shape_vocab_size",
            "pronunciation_vocab_size",
        ],
        VOCAB,
    ),
    **dict.fromkeys(["shape_embed_dim", "pronunciation_embed_dim", "num_centroids"], 16),
    "centroid_intermediate_top_k": 4,
    "encoder_hash_byte_group_vocab": 256,
    "ngram_vocab_size_base": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# Of these fields only lower an int default (a family with 1 key/value head or no shared expert keeps it); the rest are set.
CAP_ONLY = {
    "num_key_value_heads",
    "swa_num_key_value_heads",
    "n_shared_experts",
    "num_shared_experts",
    "moe_num_shared_experts",
    "shared_intermediate_size",
    "num_experts_per_tok",
    "moe_topk",
    "moe_k",
    "top_k_experts",
    "q_lora_rank",
    "o_lora_rank",
    "kv_channels",
    "rotary_dim",
    "n_group",
    "topk_group",
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
    "head_dim",
    "v_head_dim",
    "hidden_size_per_layer_input",
    "index_topk",
}

SLIDE, FULL, LINEAR = "sliding_attention", "full_attention", "linear_attention"

# Shared by a text-only type and its multimodal wrapper. The per-block lists here and in OVERRIDES are written for DEPTH = 6.
# Gemma 3n / Gemma 4 text: full attention at 1 and 5, and the last two blocks KV-sharing (the small checkpoints share K/V in
# their last layers: block 4 reads block 3's sliding K/V, block 5 reads block 1's full K/V); the default 15 shared layers
# exceed DEPTH. Gemma 3n also keeps activation sparsity in its first blocks.
_GEMMA3N_TEXT = {
    "layer_types": [SLIDE, FULL, SLIDE, SLIDE, SLIDE, FULL],
    "num_kv_shared_layers": 2,
    "activation_sparsity_pattern": [0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
}
# global_head_dim (a constructor-only kwarg, stored as per_layer_config of the full blocks) defaults to 512
_GEMMA4_TEXT = {"layer_types": [SLIDE, FULL, SLIDE, SLIDE, SLIDE, FULL], "num_kv_shared_layers": 2, "global_head_dim": 32}
# Dots 3 Note: sliding blocks take their attention shape from swa_* constructor kwargs, stored as per_layer_config.
_DOTS3_TEXT = {
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 4,
    "swa_q_lora_rank": 16,
    "swa_kv_lora_rank": 16,
    "swa_head_dim": 16,
    "swa_qk_nope_head_dim": 8,
    "swa_v_head_dim": 16,
    "index_head_dim": 16,
}
# Qwen4-Exp: its query-sparse indexer has no defaults; n-gram per-layer embeddings (PLE, one-indexed ids) on blocks 1 and 2.
_QWEN4_TEXT = {
    "indexer_n_heads": 2,
    "indexer_kv_heads": 1,
    "indexer_head_dim": 16,
    "indexer_budget": 8,
    "indexer_compress_ratio": 2,
    "ple_layer_ids": [2, 3],
}

# model_type -> constructor kwargs applied over the generic shrink (nested dicts for sub-configs), each with why.
OVERRIDES: dict[str, dict[str, Any]] = {
    # default has no attention block at all (attn_layer_indices=None); Bamba-9B interleaves a few
    "bamba": {"attn_layer_indices": [2, 5]},
    # first_k_dense_replace is a constructor-only kwarg here: block 0 dense (its own sliding pattern), the others MoE
    "cohere2_moe": {"first_k_dense_replace": 1},
    # default is all full attention; sliding blocks with per-layer-type RoPE and NoPE (None) on the full block, as Cohere's
    # hybrid checkpoints; mrope sections must fit head_dim 16
    "cohere_compass_text": {
        "layer_types": [SLIDE, SLIDE, SLIDE, FULL, SLIDE, SLIDE],
        "rope_parameters": {SLIDE: {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}, FULL: None},
    },
    # DbrxAttention reads attn_config.rope_theta (no longer a field) and clamps with clip_qkv even when it is None
    "dbrx": {"attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}},
    # compression rates (default 4 and 128 tokens) small enough that 16 tokens get compressed by both attention kinds
    "deepseek_v4": {"compress_rates": {"compressed_sparse_attention": 2, "heavily_compressed_attention": 8}},
    # default 8 input + 8 output blocks exceed DEPTH; 2 + 2 leaves blocks 2-3 as the looped recurrent core
    "dory": {"n_input_layers": 2, "n_output_layers": 2},
    # see _DOTS3_TEXT; the vision tower's per-block routed-expert counts (pyramid) default to 42 entries
    "dots3_note": {"text_config": _DOTS3_TEXT, "vision_config": {"pyramid_num_routed": [-1, 4]}},
    "dots3_note_text": _DOTS3_TEXT,
    "gemma3n": {"text_config": _GEMMA3N_TEXT},  # see _GEMMA3N_TEXT
    "gemma3n_text": _GEMMA3N_TEXT,
    "gemma4": {"text_config": _GEMMA4_TEXT},  # see _GEMMA4_TEXT
    # an assistant has no per-layer-input embedding (its validation insists)
    "gemma4_assistant": {
        "text_config": {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0, "global_head_dim": 32}
    },
    "gemma4_text": _GEMMA4_TEXT,
    "gemma4_unified": {"text_config": {"global_head_dim": 32}},  # see _GEMMA4_TEXT for global_head_dim
    "gemma4_unified_assistant": {"text_config": {"global_head_dim": 32}},
    "gemma4_unified_text": {"global_head_dim": 32},
    # default runs the indexer in every block; index_topk_freq=2 makes blocks 2 and 4 reuse the previous block's top-k
    # ("shared"), like the "FFSF..." index_topk_pattern of the checkpoints
    "glm_moe_dsa": {"index_topk_freq": 2},
    # attention_types lists (pattern, repeats): the default repeats global/local 12 times; a local window below the input
    "gpt_neo": {"attention_types": [[["global", "local"], DEPTH // 2]], "window_size": 4},
    # default is all mamba blocks; Granite 4.0-H interleaves a few attention blocks
    "granitemoehybrid": {"layer_types": [LINEAR, LINEAR, FULL, LINEAR, LINEAR, FULL]},
    # attention-residual block boundaries every 2 blocks, and blocks 2-3 looped twice (loop bounds must be multiples of it)
    "inkling2_loop_text": {
        "n_layers_per_attn_res_block": 2,
        "loop_layer_index_start": 2,
        "loop_layer_index_end": 4,
        "loop_num_passes": 2,
    },
    # attention-residual block boundaries every 2 blocks (the default 6 = DEPTH would make a single group)
    "inkling2_text": {"n_layers_per_attn_res_block": 2},
    "inkling_text": {"n_layers_per_attn_res_block": 2},
    # indexed attention at 1, 2, 4: blocks 1 and 4 run the indexer, block 2 reuses block 1's K/V (kv_source_layers); the
    # default pattern has one indexed block; small index pools for 16 tokens
    "kolibri1_1": {
        "layer_types": [SLIDE, "indexed_attention", "indexed_attention", SLIDE, "indexed_attention", SLIDE],
        "index_layers": [1, 4],
        "kv_source_layers": [0, 1, 1, 3, 4, 5],
        "index_topk": 4,
        "index_pool_size": 64,
        "index_compression": 4,
        "index_num_local_tokens": 4,
        "index_num_sink_tokens": 1,
    },
    # default is all full attention with equal heads; sliding blocks with more heads (num_attention_heads_per_layer)
    "laguna": {"layer_types": [FULL, SLIDE, SLIDE, SLIDE, FULL, SLIDE], "num_attention_heads_per_layer": [4, 8, 8, 8, 4, 8]},
    # default full_attn_idxs is every block; LFM2 checkpoints are mostly short-conv blocks
    "lfm2": {"full_attn_idxs": [2, 5]},
    # layer_types has no default here, and the model indexes it
    "lfm2_moe": {"layer_types": ["conv", "conv", FULL, "conv", "conv", FULL]},
    # num_heads * head_dim must equal expand * hidden_size
    "mamba2": {"head_dim": 32},
    # default is all full attention and MoE; the checkpoint's lightning-indexer sparse blocks (small index blocks for 16
    # tokens) and a dense block 0
    "minimax_m3_vl_text": {
        "layer_types": [FULL, "minimax_m3_sparse", "minimax_m3_sparse", FULL, "minimax_m3_sparse", FULL],
        "mlp_layer_types": ["dense", "sparse", "sparse", "sparse", "sparse", "sparse"],
        "index_block_size": 4,
        "index_topk_blocks": 2,
    },
    # cross-attention block at 3 (the checkpoints: 3, 8, 13...; skipped without images); vision taps inside TOWER_DEPTH
    "mllama": {
        "text_config": {"cross_attention_layers": [3]},
        "vision_config": {"num_global_layers": 1, "intermediate_layers_indices": [0, 1], "vision_output_dim": 192},
    },
    # the default pattern has 4 entries whatever num_hidden_layers says; mamba, MoE, attention, mamba, MLP, MoE
    "nemotron_h": {"layer_types": [LINEAR, "moe", FULL, LINEAR, "mlp", "moe"]},
    "qwen4_exp": {"text_config": _QWEN4_TEXT},  # see _QWEN4_TEXT
    "qwen4_exp_text": _QWEN4_TEXT,
    # axial position factors must multiply to the positions and sum to hidden_size; attention chunks shorter than the input
    "reformer": {
        "axial_pos_shape": [16, 16],
        "axial_pos_embds_dim": [32, 32],
        "local_attn_chunk_length": 8,
        "lsh_attn_chunk_length": 8,
        "attention_head_size": 16,
    },
    # in eval, block i's output weights are divided by 2 ** (i // rescale_every) and the hidden state is halved after every
    # rescale_every-th block (by loop position); the default 6 = DEPTH would leave that inactive inside the stack
    "rwkv": {"rescale_every": 2},
    # an XLM used as a decoder needs causal attention (it has no is_decoder)
    "xlm": {"causal": True},
    # the per-language adapters need a default language when none is passed
    "xmod": {"default_language": "en_XX"},
    # the shared transformer is tied across hybrid blocks, which needs at least two of them: hybrid at 2 and 5
    "zamba": {"attn_layer_period": 3, "attn_layer_offset": 2},
    # default pattern has 54 entries; mamba blocks with the shared hybrid block at 2 and 5
    "zamba2": {"layers_block_type": [LINEAR, LINEAR, "hybrid", LINEAR, LINEAR, "hybrid"]},
    # default is all full hybrid blocks; the config also has sliding hybrid blocks
    "zaya": {"layer_types": ["hybrid", "hybrid_sliding", "hybrid_sliding", "hybrid", "hybrid_sliding", "hybrid"]},
}

# model_type -> why no tiny model of it can be built here.
NOT_TINY: dict[str, str] = {
    "musicgen": "AutoModelForCausalLM builds MusicgenForCausalLM from the composite MusicgenConfig, but that class needs the "
    "decoder sub-config, which AutoModelForCausalLM does not accept",
    "musicgen_melody": "AutoModelForCausalLM builds MusicgenMelodyForCausalLM from the composite MusicgenMelodyConfig, but that "
    "class needs the decoder sub-config, which AutoModelForCausalLM does not accept",
}

# model_type -> a library its model needs beyond transformers and torch (NotTiny when it is not installed).
NEEDS_LIBRARY: dict[str, str] = {
    "gemma3n": "timm",  # the vision tower is a TimmWrapperModel (MobileNetV5)
}

# model_type -> (kind, reason) where the rule in _kind() does not give the right answer.
KIND_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "bert-generation": ("encoder", "a BERT encoder (BertGenerationEncoder) used as a decoder with is_decoder=True"),
    "trocr": ("encoder-decoder", "the text decoder of a VisionEncoderDecoderModel; its blocks carry cross-attention"),
    "musicgen": (
        "encoder-decoder",
        "a T5 text encoder and an audio-codebook decoder (is_encoder_decoder is set in __post_init__)",
    ),
    "musicgen_melody": (
        "encoder-decoder",
        "a T5 text encoder and an audio-codebook decoder (is_encoder_decoder is set in __post_init__)",
    ),
    "xlnet": ("other", "a permutation LM: its attention is bidirectional unless a perm_mask is passed"),
    "blt": (
        "other",
        "a byte latent transformer: local encoder, global transformer over byte patches and local decoder, "
        "three block stacks and an entropy patcher",
    ),
    "hrm_text": ("other", "a hierarchical recurrent model: two block stacks (H and L) re-run in nested cycles"),
    "gemma4_assistant": (
        "other",
        "a drafting head: every block reads the key/values of a target Gemma 4 model "
        "(shared_kv_states), so input_ids alone cannot run it",
    ),
    "gemma4_unified_assistant": (
        "other",
        "a drafting head: every block reads the key/values of a target Gemma 4 model "
        "(shared_kv_states), so input_ids alone cannot run it",
    ),
    "dory": ("decoder", "a decoder-only causal LM whose middle blocks run n_recurrent_loops times (a looped core)"),
    "inkling2_loop_text": (
        "decoder",
        "a decoder-only causal LM whose blocks loop_layer_index_start..end run loop_num_passes times",
    ),
}

# model_type -> note on a family whose initialisation zeroes weights that gate what a block adds (tiny_model gives every
# all-zero weight small noise). In none of them did the zero init alone leave the logits independent of block 1.
ZERO_INIT_NOTES: dict[str, str] = {
    "afmoe": "router gate weights are zero: uniform routing scores at init",
    "deepseek_v4": "hyper-connection bases and attention sinks are zero",
    "ergo": "residual gates are zero: each branch is mixed at sigmoid(0) = 0.5 and the residual scaled by 0.87",
    "gemma3n_text": "altup.correct_output_scale is zero",
    "inkling2_text": "the block attention-residual queries and the K/V short-conv static weights are zero",
    "inkling2_loop_text": "the block attention-residual queries and the K/V short-conv static weights are zero",
    "mllama": "the tanh gates of the cross-attention blocks are zero (those blocks add nothing until trained)",
    "qwen4_exp_text": "the per-layer-embedding (PLE) convolution and hyper-connection norms are zero",
    "xlstm": "the mLSTM gate pre-activations and the FFN up-gate are zero: the FFN branch adds nothing at init",
}


class NotTiny(Exception):
    """This type cannot be built tiny here; str(error) says why in one sentence."""


def _sub_configs(cls: type[PreTrainedConfig]) -> dict[str, tuple[type[PreTrainedConfig], dict[str, Any]]]:
    """Sub-config field -> (config class, default kwargs), from `sub_configs_defaults` or an older `sub_configs` dict."""
    if not cls.sub_configs_defaults:
        return {key: (sub, {}) for key, sub in cls.sub_configs.items()}
    out = {}
    for key, spec in cls.sub_configs_defaults.items():
        sub = spec.config_class
        if not (isinstance(sub, type) and issubclass(sub, PreTrainedConfig)):
            sub = CONFIG_MAPPING[spec.model_type]  # an AutoConfig spec: its default model type
        out[key] = (sub, spec.init_kwargs)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` updated with `extra`, recursing where both hold a dict (a sub-config's kwargs)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def shrink(cls: type[PreTrainedConfig], depth: int = DEPTH, token_ids: dict[int, int] | None = None) -> dict[str, Any]:
    """Constructor kwargs making config class `cls` tiny: SMALL for each field it has, recursively for its sub-configs
    (`depth` blocks here and in TEXT_SUB_CONFIGS, TOWER_DEPTH in the other sub-configs).

    Special-token ids (`*_token_id`, `*_token_index`) outside the tiny vocabulary get ids counted down from VOCAB - 1, the
    same tiny id for the same original id (`token_ids` carries that mapping into the sub-configs).
    """
    token_ids = {} if token_ids is None else token_ids
    fields = {field.name: field.default for field in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, default in fields.items():
        is_int = isinstance(default, int) and not isinstance(default, bool)
        if name in DEPTH_FIELDS:
            kwargs[name] = depth
        elif name in SMALL:
            if not (name in CAP_ONLY and is_int and default <= SMALL[name]):
                kwargs[name] = SMALL[name]
        elif name.endswith(("_token_id", "_token_index")) and is_int and default >= VOCAB:
            kwargs[name] = token_ids.setdefault(default, VOCAB - 1 - len(token_ids))
    if "kv_lora_rank" in fields:
        # multi-head latent attention expands one latent to every head, and its rotary part is qk_rope_head_dim wide
        mla = {"num_key_value_heads": kwargs.get("num_attention_heads"), "head_dim": SMALL["qk_rope_head_dim"]}
        kwargs.update({name: value for name, value in mla.items() if name in fields and value is not None})
    for key, (sub, defaults) in _sub_configs(cls).items():
        kwargs[key] = _merge(defaults, shrink(sub, depth if key in TEXT_SUB_CONFIGS else TOWER_DEPTH, token_ids))
    return kwargs


def kind(model_type: str) -> str:
    """'decoder', 'encoder-decoder', 'encoder' (a masked-LM encoder used as a causal decoder) or 'other'."""
    return _kind(model_type)[0]


def kind_reason(model_type: str) -> str:
    """Why kind(model_type) says what it says, in a short sentence."""
    return _kind(model_type)[1]


def _kind(model_type: str) -> tuple[str, str]:
    if model_type in KIND_EXCEPTIONS:
        return KIND_EXCEPTIONS[model_type]
    defaults = {field.name: field.default for field in dataclasses.fields(CONFIG_MAPPING[model_type])}
    if defaults.get("is_encoder_decoder") is True:
        return "encoder-decoder", "its config is an encoder-decoder (is_encoder_decoder=True); the causal LM is the decoder half"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder", "a masked-LM encoder family, made causal for the causal LM (is_decoder=True or causal=True)"
    return "decoder", "a decoder-only causal LM"


def tiny_config(model_type: str) -> PreTrainedConfig:
    """A tiny config of that type: DEPTH decoder blocks, hidden size about 64, vocab 128 (NotTiny if impossible here)."""
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise KeyError(f"{model_type!r} is not a causal LM type of transformers {transformers.__version__}")
    if model_type in NOT_TINY:
        raise NotTiny(NOT_TINY[model_type])
    library = NEEDS_LIBRARY.get(model_type)
    if library and importlib.util.find_spec(library) is None:
        raise NotTiny(f"needs the {library} library, not installed")
    cls = CONFIG_MAPPING[model_type]
    kwargs = shrink(cls)
    if kind(model_type) == "encoder" and any(field.name == "is_decoder" for field in dataclasses.fields(cls)):
        kwargs["is_decoder"] = True  # an encoder's causal-LM head needs causal attention
    return cls(**_merge(kwargs, copy.deepcopy(OVERRIDES.get(model_type, {}))))  # copied: __post_init__ may edit lists


def _reinit_zeros(model: torch.nn.Module) -> None:
    """Give all-zero weights (zero-initialised norms, output projections, gates) N(0, 0.02) noise, so that blocks matter."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.is_floating_point() and not name.endswith("bias") and not param.any():
                torch.nn.init.normal_(param, std=0.02)


def tiny_model(model_type: str) -> torch.nn.Module:
    """AutoModelForCausalLM.from_config(tiny_config(model_type)) after torch.manual_seed(0), in eval mode.

    The model is first built on the meta device: more than MAX_PARAMS parameters raise NotTiny before any memory is used.
    """
    config = tiny_config(model_type)
    try:
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
    except ImportError as error:  # a library NEEDS_LIBRARY does not know of yet
        found = re.search(r"requires the (\S+) library", str(error))
        raise NotTiny(f"needs the {found[1]} library, not installed" if found else f"needs a missing library: {error}") from error
    sizes = sorted(((param.numel(), name) for name, param in meta.named_parameters()), reverse=True)
    total = sum(size for size, _ in sizes)
    del meta
    if total > MAX_PARAMS:
        biggest = ", ".join(f"{name} ({size:,})" for size, name in sizes[:3])
        raise NotTiny(f"{total:,} parameters, over {MAX_PARAMS:,}; biggest: {biggest}")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    _reinit_zeros(model)
    return model.eval()


def _skip_block_changes_logits(model: torch.nn.Module, ids: torch.Tensor, dense: torch.Tensor, block: int = 1) -> str:
    """'yes' if making decoder block `block` an identity (a forward hook returning its input hidden state) changes the
    logits, 'no' if not, or why it could not be checked. The blocks are found by the library, not guessed here."""
    from lorp_lightning.architectures import decoder_layers

    try:
        blocks = decoder_layers(model)
    except Exception as error:  # reported, not raised: the sweep goes on
        return f"n/a ({type(error).__name__}: {str(error).splitlines()[0][:80]})"

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(output, torch.Tensor):
            return hidden
        if isinstance(output, (tuple, list)) and not hasattr(output, "_fields"):  # not a namedtuple (reformer's pair)
            return type(output)([hidden, *output[1:]])
        raise TypeError(f"block output is a {type(output).__name__}")

    handle = blocks[block].register_forward_hook(identity, with_kwargs=True)
    try:
        with torch.no_grad():
            skipped = model(input_ids=ids, use_cache=False).logits
    except Exception as error:
        return f"n/a ({type(error).__name__}: {str(error).splitlines()[0][:80]})"
    finally:
        handle.remove()
    return "no" if torch.allclose(skipped, dense, rtol=1e-5, atol=1e-6) else "yes"


def main() -> None:
    """Build every type, run one forward pass, check that skipping block 1 changes the logits; print a table and timings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", help="also write the table to this file")
    parser.add_argument("types", nargs="*", help="model types (default: all causal LM types)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    lines, build_and_forward, check = [], 0.0, 0.0
    start = time.perf_counter()
    with torch.no_grad():
        tiny_model("llama")(input_ids=ids, use_cache=False)  # first imports and allocations, kept out of the per-type times
    warm_up = time.perf_counter() - start
    for model_type in args.types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        start = time.perf_counter()
        params, skip, logits = "-", "-", None
        try:
            model = tiny_model(model_type)
            params = f"{sum(p.numel() for p in model.parameters()):,}"
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits
            if logits.shape != (*ids.shape, VOCAB) or not torch.isfinite(logits).all():
                raise ValueError(f"logits of shape {tuple(logits.shape)}, finite: {bool(torch.isfinite(logits).all())}")
            status = "built ok"
        except NotTiny as error:
            status = f"NotTiny: {error}"
        except Exception as error:  # a sweep reports every failure
            message = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:150] if str(error) else ''}"
            if params != "-" and kind(model_type) == "other":
                status, logits = f"built ok, no forward from input_ids alone ({message})", None
            else:
                status, logits = f"FAILED {message}", None
        seconds = time.perf_counter() - start
        build_and_forward += seconds
        if logits is not None:
            start = time.perf_counter()
            skip = _skip_block_changes_logits(model, ids, logits)
            check += time.perf_counter() - start
        line = f"{model_type} | {kind(model_type)} | {status} | {params} | {seconds:.3f} | {skip}"
        lines.append(line)
        print(line, flush=True)
    total = (
        f"# build + one forward, all {len(lines)} types: {build_and_forward:.1f} s (after a {warm_up:.1f} s warm-up); "
        f"skip-block checks: {check:.1f} s; one thread"
    )
    print(total)
    if args.summary:
        header = "# model_type | kind | built ok / NotTiny reason | params | seconds (build + forward) | skip-changes-logits"
        Path(args.summary).write_text("\n".join([header, *lines, total]) + "\n")


if __name__ == "__main__":
    main()

"""prune_layers on small random models of every supported family (no downloads).

The reference for a pruned model is the original model run with the removed blocks skipped:
forward hooks on those blocks hand their input on unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from lorp_lightning import architectures
from lorp_lightning.architectures import Architecture, decoder_layers
from lorp_lightning.surgery import (
    PlanRefusedError,
    prune_layers,
    pruning_record,
    removed_blocks,
    save_stack,
    temporarily_pruned,
    temporarily_restored,
)

N = 6  # blocks of every test model
PRUNED = [1, 2]  # first prune
SECOND = [2]  # second prune, in the numbering after the first: original block 4
SEQ_LEN = 16  # longer than the sliding window (4) of the families that have one
VOCAB = 128
S, F = "sliding_attention", "full_attention"
MIXED = [S, F, F, S, F, S]  # pruning [1, 2] keeps [S, S, F, S]; cutting the list short would give [S, F, F, S]
LIN, M, A = "linear_attention", "mamba", "attention"
# pruning [1, 2] keeps [LIN, F, F, LIN] (cutting the list short: [LIN, F, LIN, F]); the second pruning leaves an attention block
HYBRID = [LIN, F, LIN, F, F, LIN]
LINEAR_ATTENTION = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
MAMBA = dict(mamba_n_heads=4, mamba_d_head=32, mamba_d_state=8, mamba_n_groups=1, mamba_chunk_size=8)

SMALL = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=N,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


@dataclass(frozen=True)
class Family:
    config: Callable[[], transformers.PreTrainedConfig]
    blocks_path: str  # where the decoder blocks are, written out here independently of the code under test


FAMILIES: dict[str, Family] = {
    "llama": Family(lambda: transformers.LlamaConfig(**SMALL), "model.layers"),
    "mistral": Family(lambda: transformers.MistralConfig(**SMALL, sliding_window=4), "model.layers"),  # one window for all blocks
    "ministral": Family(
        lambda: transformers.MinistralConfig(**SMALL, head_dim=16, sliding_window=4, layer_types=MIXED), "model.layers"
    ),
    # no layer_types given: derived from max_window_layers, sliding from block 2 on
    "qwen2": Family(
        lambda: transformers.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=4, max_window_layers=2), "model.layers"
    ),
    "qwen3": Family(
        lambda: transformers.Qwen3Config(**SMALL, head_dim=16, use_sliding_window=True, sliding_window=4, layer_types=MIXED),
        "model.layers",
    ),
    "qwen2_moe": Family(
        lambda: transformers.Qwen2MoeConfig(
            **SMALL,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            mlp_only_layers=[0, 2, 4],
            decoder_sparse_step=1,
        ),
        "model.layers",
    ),
    "gemma": Family(lambda: transformers.GemmaConfig(**SMALL, head_dim=16), "model.layers"),
    "gemma2": Family(
        lambda: transformers.Gemma2Config(**SMALL, head_dim=16, sliding_window=4, layer_types=MIXED), "model.layers"
    ),
    "gemma3_text": Family(
        lambda: transformers.Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=4, layer_types=MIXED), "model.layers"
    ),
    "gemma3": Family(
        lambda: transformers.Gemma3Config(  # multimodal: the blocks and their config are the text part's
            text_config=dict(**SMALL, head_dim=16, sliding_window=4, layer_types=MIXED),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
            ),
            mm_tokens_per_image=4,
            boi_token_index=VOCAB - 3,
            eoi_token_index=VOCAB - 2,
            image_token_index=VOCAB - 1,
        ),
        "model.language_model.layers",
    ),
    "phi3": Family(lambda: transformers.Phi3Config(**SMALL, sliding_window=4), "model.layers"),
    "olmo2": Family(lambda: transformers.Olmo2Config(**SMALL), "model.layers"),
    "gpt2": Family(
        lambda: transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=N, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2, pad_token_id=0
        ),
        "transformer.h",
    ),
    "gpt_neox": Family(
        lambda: transformers.GPTNeoXConfig(**{k: v for k, v in SMALL.items() if k != "num_key_value_heads"}), "gpt_neox.layers"
    ),
    "opt": Family(
        lambda: transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=N,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        "model.decoder.layers",
    ),
    "falcon": Family(
        lambda: transformers.FalconConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=N,
            num_attention_heads=4,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        "transformer.h",
    ),
    "stablelm": Family(lambda: transformers.StableLmConfig(**SMALL), "model.layers"),
    "starcoder2": Family(lambda: transformers.Starcoder2Config(**SMALL, sliding_window=4), "model.layers"),
    # today's families (transformers 5.x): hybrids, MoE, per-block lists and per-block sub-configs
    "qwen3_5_text": Family(
        lambda: transformers.Qwen3_5TextConfig(**SMALL, head_dim=16, layer_types=HYBRID, **LINEAR_ATTENTION), "model.layers"
    ),
    "qwen3_next": Family(
        lambda: transformers.Qwen3NextConfig(
            **SMALL,
            head_dim=16,
            layer_types=HYBRID,
            **LINEAR_ATTENTION,
            **MOE,
            mlp_only_layers=[0, 2, 4],
            shared_expert_intermediate_size=32,
        ),
        "model.layers",
    ),
    "qwen3_moe": Family(
        lambda: transformers.Qwen3MoeConfig(**SMALL, head_dim=16, **MOE, mlp_only_layers=[0, 2, 4]), "model.layers"
    ),
    "gpt_oss": Family(
        lambda: transformers.GptOssConfig(
            **SMALL, head_dim=16, sliding_window=4, layer_types=MIXED, num_local_experts=4, num_experts_per_tok=2
        ),
        "model.layers",
    ),
    # MoE blocks 0, 2, 4; no RoPE in blocks 1 and 4; chunked attention in some blocks
    "llama4_text": Family(
        lambda: transformers.Llama4TextConfig(
            **SMALL,
            head_dim=16,
            intermediate_size_mlp=128,
            num_local_experts=4,
            num_experts_per_tok=1,
            moe_layers=[0, 2, 4],
            no_rope_layers=[1, 0, 1, 1, 0, 1],
            attention_chunk_size=4,
        ),
        "model.layers",
    ),
    "smollm3": Family(lambda: transformers.SmolLM3Config(**SMALL, no_rope_layers=[1, 0, 1, 1, 0, 1]), "model.layers"),
    "mixtral": Family(
        lambda: transformers.MixtralConfig(**SMALL, head_dim=16, sliding_window=4, num_local_experts=4), "model.layers"
    ),
    "olmoe": Family(lambda: transformers.OlmoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2), "model.layers"),
    # multi-head latent attention (one key/value head per head); blocks 0 and 1 dense, the rest MoE (first_k_dense_replace=2)
    "deepseek_v3": Family(
        lambda: transformers.DeepseekV3Config(
            **{**SMALL, "num_key_value_heads": 4},
            first_k_dense_replace=2,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            n_group=1,
            topk_group=1,
            moe_intermediate_size=32,
            kv_lora_rank=16,
            q_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
        ),
        "model.layers",
    ),
    "granite": Family(lambda: transformers.GraniteConfig(**SMALL), "model.layers"),
    # Mamba 2 blocks and attention blocks
    "granitemoehybrid": Family(
        lambda: transformers.GraniteMoeHybridConfig(
            **SMALL, layer_types=[M, A, M, A, A, M], **MAMBA, num_local_experts=4, num_experts_per_tok=2
        ),
        "model.layers",
    ),
    "falcon_h1": Family(lambda: transformers.FalconH1Config(**SMALL, head_dim=16, **MAMBA, mamba_d_ssm=128), "model.layers"),
    "olmo3": Family(lambda: transformers.Olmo3Config(**SMALL, sliding_window=4, layer_types=MIXED), "model.layers"),
    "cohere2": Family(lambda: transformers.Cohere2Config(**SMALL, sliding_window=4, layer_types=MIXED), "model.layers"),
    "glm4": Family(lambda: transformers.Glm4Config(**SMALL, head_dim=16), "model.layers"),
    "phi": Family(lambda: transformers.PhiConfig(**SMALL), "model.layers"),
    "exaone4": Family(lambda: transformers.Exaone4Config(**SMALL, sliding_window=4, layer_types=MIXED), "model.layers"),
    "ernie4_5": Family(lambda: transformers.Ernie4_5Config(**SMALL, head_dim=16), "model.layers"),
    "nemotron": Family(lambda: transformers.NemotronConfig(**SMALL, head_dim=16), "model.layers"),
    "seed_oss": Family(lambda: transformers.SeedOssConfig(**SMALL, head_dim=16), "model.layers"),
    # lightning (linear) attention and full attention
    "minimax": Family(
        lambda: transformers.MiniMaxConfig(**SMALL, head_dim=16, layer_types=HYBRID, num_local_experts=4, block_size=4),
        "model.layers",
    ),
    # short convolution blocks and attention blocks, given as full_attn_idxs
    "lfm2": Family(lambda: transformers.Lfm2Config(**SMALL, full_attn_idxs=[1, 3, 4]), "model.layers"),
    # full-attention blocks have another head size (per_layer_config, renumbered by pruning); each block has
    # an input of its own besides the stream, a slice of two per-layer tables (the E2B and E4B layout)
    "gemma4_text": Family(
        lambda: transformers.Gemma4TextConfig(
            **SMALL,
            head_dim=16,
            global_head_dim=32,
            sliding_window=4,
            layer_types=[S, F, F, S, S, F],
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=VOCAB,
        ),
        "model.layers",
    ),
}


def build(family: str, **config_changes):
    """The family's small random model (the same weights on every call), in eval mode."""
    config = FAMILIES[family].config()
    for name, value in config_changes.items():
        setattr(config, name, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def blocks_of(model, family: str):
    return model.get_submodule(FAMILIES[family].blocks_path)


def text_config(model):
    return model.config.get_text_config(decoder=True)


def input_ids() -> torch.Tensor:
    return torch.randint(3, VOCAB - 3, (2, SEQ_LEN), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def logits(model, ids=None) -> torch.Tensor:
    return model(input_ids() if ids is None else ids, use_cache=False).logits


def logits_with_blocks_skipped(model, family: str, skipped: list[int]) -> torch.Tensor:
    """The logits of ``model`` when the ``skipped`` blocks pass their input on unchanged."""
    return logits_with_blocks_skipped_at(model, FAMILIES[family].blocks_path, skipped)


@torch.no_grad()
def logits_with_blocks_skipped_at(model, blocks_path: str, skipped: list[int]) -> torch.Tensor:
    """The logits of ``model`` when the ``skipped`` blocks at ``blocks_path`` pass their input on unchanged."""

    def skip(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])

    handles = [model.get_submodule(blocks_path)[i].register_forward_hook(skip, with_kwargs=True) for i in skipped]
    try:
        return logits(model)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def greedy(model, use_cache: bool) -> torch.Tensor:
    ids = input_ids()[:1, :8]
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=20,
        min_new_tokens=20,
        use_cache=use_cache,
        pad_token_id=0,
    )
    assert out.shape == (1, 8 + 20)
    return out


def snapshot(model, family: str) -> dict:
    """Everything prune_layers may change, to compare before and after."""
    return {
        "blocks": [id(b) for b in blocks_of(model, family)],
        "layer_idx": [(name, m.layer_idx) for name, m in model.named_modules() if hasattr(m, "layer_idx")],
        "config": model.config.to_dict(),
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert after["blocks"] == before["blocks"]
    assert after["layer_idx"] == before["layer_idx"]
    assert after["config"] == before["config"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def save_and_reload(model, tmp_path):
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    return reloaded.eval(), info


@dataclass
class Plan:  # stands in for lorp_lightning.selection.PruningPlan (prune_layers duck-types it)
    pruned: list
    num_layers: int
    method: str = "lorp"
    rls: float | None = 0.625
    num_clusters: int | None = 3


every_family = pytest.mark.parametrize("family", list(FAMILIES))


# --------------------------------------------------------------------------- invariants, for every family


@every_family
def test_pruned_logits_equal_the_original_run_with_the_removed_blocks_skipped(family):
    original = build(family)
    expected = logits_with_blocks_skipped(original, family, PRUNED)
    pruned = prune_layers(build(family), PRUNED)
    assert len(blocks_of(pruned, family)) == N - len(PRUNED)
    torch.testing.assert_close(logits(pruned), expected, rtol=0, atol=1e-5)
    # and skipping is not a no-op: the removed blocks did change the output
    assert not torch.allclose(logits(original), expected, atol=1e-4)


@every_family
def test_kept_blocks_are_the_same_objects_in_order_and_every_layer_idx_is_renumbered(family):
    model = build(family)
    blocks = list(blocks_of(model, family))
    pruned = prune_layers(model, PRUNED)
    assert pruned is model
    kept = [b for i, b in enumerate(blocks) if i not in PRUNED]
    new_blocks = list(blocks_of(model, family))
    assert len(new_blocks) == len(kept) and all(a is b for a, b in zip(new_blocks, kept, strict=True))
    assert decoder_layers(model) is blocks_of(model, family)
    for new_index, block in enumerate(new_blocks):
        indices = [m.layer_idx for m in block.modules() if hasattr(m, "layer_idx")]
        assert indices and set(indices) == {new_index}


@every_family
def test_config_depth_and_per_block_lists_describe_the_kept_blocks(family):
    model = build(family)
    before = copy.deepcopy(text_config(model))
    prune_layers(model, PRUNED)
    after = text_config(model)
    kept = [i for i in range(N) if i not in PRUNED]
    assert after.num_hidden_layers == N - len(PRUNED)
    if getattr(before, "layer_types", None) is not None:
        assert after.layer_types == [before.layer_types[i] for i in kept]
    assert pruning_record(model) == {
        "original_num_layers": N,
        "pruned_layers": PRUNED,
        "steps": [{"method": None, "pruned_layers": PRUNED, "rls": None, "num_clusters": None}],
    }


@every_family
def test_save_and_plain_transformers_reload_give_identical_logits_and_keys(family, tmp_path):
    pruned = prune_layers(build(family), PRUNED)
    reloaded, info = save_and_reload(pruned, tmp_path)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert len(blocks_of(reloaded, family)) == N - len(PRUNED)
    assert text_config(reloaded).num_hidden_layers == N - len(PRUNED)
    assert getattr(text_config(reloaded), "layer_types", None) == getattr(text_config(pruned), "layer_types", None)
    assert pruning_record(reloaded) == pruning_record(pruned)
    assert torch.equal(logits(reloaded), logits(pruned))


@every_family
def test_greedy_generation_with_the_cache_equals_generation_without_it(family):
    pruned = prune_layers(build(family), PRUNED)
    assert torch.equal(greedy(pruned, use_cache=True), greedy(pruned, use_cache=False))


@every_family
def test_pruning_a_reloaded_pruned_model_again_composes_the_record_in_original_numbering(family, tmp_path):
    reloaded, _ = save_and_reload(prune_layers(build(family), PRUNED), tmp_path)
    twice = prune_layers(reloaded, Plan(pruned=SECOND, num_layers=N - len(PRUNED)))
    assert pruning_record(twice) == {
        "original_num_layers": N,
        "pruned_layers": [1, 2, 4],
        "steps": [
            {"method": None, "pruned_layers": [1, 2], "rls": None, "num_clusters": None},
            {"method": "lorp", "pruned_layers": [4], "rls": 0.625, "num_clusters": 3},
        ],
    }
    assert text_config(twice).num_hidden_layers == N - 3
    torch.testing.assert_close(logits(twice), logits_with_blocks_skipped(build(family), family, [1, 2, 4]), rtol=0, atol=1e-5)


@every_family
def test_temporarily_pruned_is_the_pruned_model_inside_and_the_unchanged_model_after(family):
    model = build(family)
    before = snapshot(model, family)
    with temporarily_pruned(model, PRUNED) as inside:
        assert inside is model
        assert len(blocks_of(model, family)) == N - len(PRUNED)
        torch.testing.assert_close(logits(model), logits_with_blocks_skipped(build(family), family, PRUNED), rtol=0, atol=1e-5)
    assert_same_snapshot(before, snapshot(model, family))
    assert pruning_record(model) is None
    assert torch.equal(logits(model), logits(build(family)))


def test_temporarily_pruned_restores_the_model_after_an_error_inside_and_keeps_an_earlier_record():
    model = prune_layers(build("gemma3_text"), [5])
    before = snapshot(model, "gemma3_text")
    with pytest.raises(RuntimeError, match="inside"):
        with temporarily_pruned(model, [0, 2]):
            assert pruning_record(model)["pruned_layers"] == [0, 2, 5]
            raise RuntimeError("inside")
    assert_same_snapshot(before, snapshot(model, "gemma3_text"))
    assert pruning_record(model)["pruned_layers"] == [5]


@every_family
def test_a_saved_stack_puts_the_removed_blocks_back_inside_and_leaves_the_pruned_model_after(family):
    model = build(family)
    dense_logits = logits(model)
    saved = save_stack(model)
    prune_layers(model, PRUNED)
    pruned = snapshot(model, family)
    assert len(removed_blocks(model, saved)) == len(PRUNED)
    with temporarily_restored(model, saved) as inside:
        assert inside is model and len(blocks_of(model, family)) == N and pruning_record(model) is None
        torch.testing.assert_close(logits(model), dense_logits, rtol=0, atol=0)
    assert_same_snapshot(pruned, snapshot(model, family))
    assert pruning_record(model)["pruned_layers"] == PRUNED


def test_a_saved_stack_is_refused_for_a_model_whose_blocks_are_not_among_its_own():
    model, other = build("llama"), build("llama")
    saved = save_stack(other)
    before = snapshot(model, "llama")
    with pytest.raises(ValueError, match=r"the model's 6 blocks are not the saved stack's 6 blocks with some removed"):
        with temporarily_restored(model, saved):
            pass
    assert_same_snapshot(before, snapshot(model, "llama"))


def test_temporarily_pruned_rejects_bad_blocks_before_changing_anything():
    model = build("llama")
    before = snapshot(model, "llama")
    with pytest.raises(ValueError, match=r"holds 6, out of range"):
        with temporarily_pruned(model, [6]):
            pass
    assert_same_snapshot(before, snapshot(model, "llama"))


BAD_BLOCKS = [
    ([], "plan_or_blocks=[]"),
    ([N], f"plan_or_blocks=[{N}] holds {N}, out of range"),
    ([1, 3, 1], "plan_or_blocks=[1, 3, 1] holds block 1 more than once"),
    ([-1], "plan_or_blocks=[-1] holds the negative index -1"),
    ([1.0], "plan_or_blocks=[1.0] holds 1.0 (float)"),
    ([True], "plan_or_blocks=[True] holds True (bool)"),
    (["1"], "plan_or_blocks=['1'] holds '1' (str)"),
    (list(range(N)), f"removes all {N} blocks"),
]


@every_family
def test_bad_blocks_are_a_value_error_naming_the_value_and_leave_the_model_unchanged(family):
    model = build(family)
    before = snapshot(model, family)
    for bad, message in BAD_BLOCKS:
        with pytest.raises(ValueError) as error:
            prune_layers(model, bad)
        assert message in str(error.value)
        assert_same_snapshot(before, snapshot(model, family))
    with pytest.raises(ValueError, match=rf"plan.num_layers={N + 1} blocks, but this model has {N}"):
        prune_layers(model, Plan(pruned=[1], num_layers=N + 1))
    with pytest.raises(ValueError, match=r"plan.pruned=\[7\] holds 7, out of range"):
        prune_layers(model, Plan(pruned=[7], num_layers=N))
    assert_same_snapshot(before, snapshot(model, family))


# --------------------------------------------------------------------------- one family is enough


def test_inplace_false_returns_a_pruned_copy_and_leaves_the_caller_model_untouched():
    model = build("gemma3_text")
    before = snapshot(model, "gemma3_text")
    expected_logits = logits(model)
    pruned = prune_layers(model, PRUNED, inplace=False)
    assert pruned is not model
    assert len(blocks_of(pruned, "gemma3_text")) == N - 2
    assert not any(a is b for a in blocks_of(pruned, "gemma3_text") for b in blocks_of(model, "gemma3_text"))
    assert_same_snapshot(before, snapshot(model, "gemma3_text"))
    assert model.config.num_hidden_layers == N and pruning_record(model) is None
    assert torch.equal(logits(model), expected_logits)


def test_blocks_may_be_given_in_any_order_as_a_tuple_of_numpy_ints():
    model = prune_layers(build("llama"), (np.int64(2), np.int64(1)))
    assert pruning_record(model)["pruned_layers"] == [1, 2]
    torch.testing.assert_close(logits(model), logits_with_blocks_skipped(build("llama"), "llama", [1, 2]), rtol=0, atol=1e-5)


def test_plan_or_blocks_of_another_type_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"plan_or_blocks must be a list or tuple .* got str '1,2'"):
        prune_layers(build("llama"), "1,2")


def test_pruning_twice_in_memory_composes_the_record_like_after_a_reload():
    model = prune_layers(build("llama"), [0, 5])  # keeps original 1, 2, 3, 4
    prune_layers(model, [1, 3])  # current 1 and 3 are original 2 and 4
    assert pruning_record(model)["pruned_layers"] == [0, 2, 4, 5]
    assert [s["pruned_layers"] for s in pruning_record(model)["steps"]] == [[0, 5], [2, 4]]
    torch.testing.assert_close(
        logits(model), logits_with_blocks_skipped(build("llama"), "llama", [0, 2, 4, 5]), rtol=0, atol=1e-5
    )


def test_pruning_a_healed_model_again_keeps_its_healings_in_the_record():
    model = prune_layers(build("llama"), [1])
    healing = [{"mode": "lora", "num_steps": 3}]  # what healing.record adds, in short
    pruning_record(model)["healing"] = healing
    prune_layers(model, [2])
    assert pruning_record(model)["healing"] == healing and pruning_record(model)["pruned_layers"] == [1, 3]


def test_a_stale_record_is_refused():
    model = build("llama")
    model.config.lorp_pruning = {"original_num_layers": 10, "pruned_layers": [1, 2], "steps": []}
    before = snapshot(model, "llama")
    with pytest.raises(ValueError, match=r"10 - 2 = 8 blocks remain, but the model has 6"):
        prune_layers(model, [1])
    assert_same_snapshot(before, snapshot(model, "llama"))


def test_qwen2_max_window_layers_counts_the_kept_full_attention_blocks():
    model = build("qwen2")  # max_window_layers=2: blocks 0, 1 full, 2..5 sliding
    prune_layers(model, PRUNED)
    assert model.config.max_window_layers == 1
    assert model.config.layer_types == [F, S, S, S]
    # the field now derives the same layer_types as the trimmed list
    derived = transformers.Qwen2Config(**{**model.config.to_dict(), "layer_types": None})
    assert derived.layer_types == model.config.layer_types


def test_moe_mlp_only_layers_are_renumbered_and_the_removed_ones_dropped(tmp_path):
    model = prune_layers(build("qwen2_moe"), PRUNED)  # mlp_only_layers [0, 2, 4]: 2 is removed, 4 becomes 2
    assert model.config.mlp_only_layers == [0, 2]
    dense = [type(b.mlp).__name__ for b in blocks_of(model, "qwen2_moe")]
    assert dense == ["Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock", "Qwen2MoeMLP", "Qwen2MoeSparseMoeBlock"]
    reloaded, _ = save_and_reload(model, tmp_path)
    assert [type(b.mlp).__name__ for b in blocks_of(reloaded, "qwen2_moe")] == dense


def test_gemma3_multimodal_prunes_its_text_blocks_and_records_on_the_top_config():
    model = prune_layers(build("gemma3"), PRUNED)
    assert model.config.text_config.num_hidden_layers == N - 2
    assert model.config.text_config.layer_types == [S, S, F, S]
    assert model.config.vision_config.num_hidden_layers == 2
    assert model.config.lorp_pruning["pruned_layers"] == PRUNED


def test_device_map_entries_of_blocks_are_renamed_to_the_new_numbering():
    model = build("llama")
    model.hf_device_map = {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": "cpu" for i in range(N)},
        "model.layers.3.mlp": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    prune_layers(model, PRUNED)
    assert model.hf_device_map == {
        "model.embed_tokens": "cpu",
        **{f"model.layers.{i}": "cpu" for i in range(N - 2)},
        "model.layers.1.mlp": "cpu",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }


# --------------------------------------------------------------------------- refusals


def bloom(depth: int = 4):
    """A family not in the table (Bloom: ALiBi positions, blocks at transformer.h)."""
    torch.manual_seed(0)
    return transformers.BloomForCausalLM(
        transformers.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=depth, n_head=4)
    ).eval()


def test_a_family_not_in_the_table_is_pruned_by_the_generic_path_with_logits_equal_to_skipping_the_blocks(tmp_path):
    assert "bloom" not in architectures.ARCHITECTURES
    model = bloom()
    assert architectures.architecture_of(model).generic and architectures.find_decoder_layers(model) == "transformer.h"
    expected = logits_with_blocks_skipped_at(model, "transformer.h", [1, 2])  # the path written out here, independently
    prune_layers(model, [1, 2])
    assert len(model.transformer.h) == 2 and model.config.n_layer == 2
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)
    reloaded, info = save_and_reload(model, tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(logits(reloaded), logits(model))
    assert pruning_record(reloaded)["pruned_layers"] == [1, 2]


def test_a_generic_pruning_that_changes_the_logits_is_refused_and_the_model_is_left_as_it_was(monkeypatch):
    # Llama taken out of the table, and made to depend on a block's position at run time, where no
    # config or module setting shows it: each block's output is scaled by 1 + layer_idx / 10.
    monkeypatch.delitem(architectures.ARCHITECTURES, "llama")
    model = build("llama")
    for block in model.model.layers:
        block.register_forward_hook(lambda module, args, output: output * (1 + module.self_attn.layer_idx / 10))
    before = snapshot(model, "llama")
    message = (
        r"(?s)cannot prune blocks \[1, 2\] of this llama model, a family not in the table.*differ from the dense "
        r"model's with those blocks skipped by up to .* The model is unchanged"
    )
    with pytest.raises(ValueError, match=message):
        prune_layers(model, PRUNED)
    assert_same_snapshot(before, snapshot(model, "llama"))
    with pytest.raises(ValueError, match=message):
        prune_layers(model, PRUNED, inplace=False)
    assert_same_snapshot(before, snapshot(model, "llama"))
    assert len(prune_layers(build("llama"), PRUNED).model.layers) == N - 2  # without the hooks, the generic path proves it


def test_a_setting_that_ties_blocks_to_their_index_is_caught_by_the_structure_check_in_or_out_of_the_table(monkeypatch):
    # scale_attn_by_inverse_layer_idx: GPT-2's block i scales its attention by 1 / (i + 1); the
    # pruned config would build kept block 3 as block 1, with another scale.
    message = r"block 3 \(block 1 of the pruned model\) otherwise than it is \(attn.scaling: 0.0625 now, 0.125 after pruning\)"
    for in_table in (True, False):
        if not in_table:
            monkeypatch.delitem(architectures.ARCHITECTURES, "gpt2")
        model = build("gpt2", scale_attn_by_inverse_layer_idx=True)
        before = snapshot(model, "gpt2")
        with pytest.raises(ValueError, match=r"scale_attn_by_inverse_layer_idx=True" if in_table else message):
            prune_layers(model, PRUNED)
        assert_same_snapshot(before, snapshot(model, "gpt2"))


def test_a_model_whose_blocks_cannot_be_found_is_refused_saying_what_was_looked_for():
    model = bloom(depth=4)
    model.config.n_layer = 5  # no ModuleList of 5 modules
    with pytest.raises(
        architectures.BlocksNotFoundError,
        match=r"looked for one nn.ModuleList of num_hidden_layers=5 modules "
        r"under the decoder .*found none.*transformer.h \(4\)",
    ):
        prune_layers(model, [1])
    assert len(model.transformer.h) == 4


def test_gpt2_with_attention_scaled_by_inverse_layer_index_is_refused():
    model = build("gpt2", scale_attn_by_inverse_layer_idx=True)
    before = snapshot(model, "gpt2")
    with pytest.raises(ValueError, match=r"scale_attn_by_inverse_layer_idx=True.*absolute index"):
        prune_layers(model, PRUNED)
    assert_same_snapshot(before, snapshot(model, "gpt2"))


def test_moe_with_a_sparse_step_other_than_one_is_refused():
    model = build("qwen2_moe", decoder_sparse_step=2)
    with pytest.raises(ValueError, match=r"decoder_sparse_step=2"):
        prune_layers(model, PRUNED)
    assert len(blocks_of(model, "qwen2_moe")) == N


@pytest.mark.parametrize(
    "device_map",
    [
        {"model.embed_tokens": 0, "model.layers": "cpu", "model.norm": 0, "lm_head": 0},
        {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu", "lm_head": "cpu"},
    ],
)
def test_a_model_offloaded_by_its_device_map_is_refused(device_map):
    model = build("llama")
    model.hf_device_map = device_map
    before = snapshot(model, "llama")
    with pytest.raises(ValueError, match=r"accelerate offloads \(hf_device_map spreads it over"):
        prune_layers(model, PRUNED)
    assert_same_snapshot(before, snapshot(model, "llama"))


def test_a_model_with_accelerate_offload_hooks_is_refused():
    from accelerate import cpu_offload

    model = cpu_offload(build("llama"), execution_device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"accelerate offloads \(module .* has an offload hook\)"):
        prune_layers(model, PRUNED)
    assert len(model.model.layers) == N


def test_a_table_entry_that_misses_a_per_block_field_fails_at_once_not_at_save_time(monkeypatch):
    monkeypatch.setitem(architectures.ARCHITECTURES, "gemma3_text", Architecture("model.layers", per_layer_fields=()))
    model = build("gemma3_text")
    before = snapshot(model, "gemma3_text")
    with pytest.raises(
        NotImplementedError, match=r"(?s)invalid config .*layer_types.*ARCHITECTURES entry for model_type='gemma3_text'"
    ):
        prune_layers(model, PRUNED)
    assert_same_snapshot(before, snapshot(model, "gemma3_text"))


def test_a_config_that_disagrees_with_the_model_depth_is_refused():
    model = build("llama")
    del model.model.layers[5]
    with pytest.raises(ValueError, match=r"config says num_hidden_layers=6 but the model has 5 decoder blocks"):
        prune_layers(model, [1])


# --------------------------------------------------------------------------- today's families, one fact each


def block_kinds(model, family: str, attribute: str) -> list[str]:
    return [type(getattr(block, attribute)).__name__ for block in blocks_of(model, family)]


def test_llama4_moe_layers_are_renumbered_and_no_rope_layers_trimmed():
    model = prune_layers(build("llama4_text"), PRUNED)  # moe_layers [0, 2, 4] -> [0, 2]; no_rope_layers [1, 0, 1, 1, 0, 1]
    assert model.config.moe_layers == [0, 2]
    assert model.config.no_rope_layers == [1, 1, 0, 1]
    assert block_kinds(model, "llama4_text", "feed_forward") == [
        "Llama4TextMoe",
        "Llama4TextMLP",
        "Llama4TextMoe",
        "Llama4TextMLP",
    ]


def test_deepseek_v3_first_k_dense_replace_counts_the_kept_dense_blocks():
    model = prune_layers(build("deepseek_v3"), PRUNED)  # blocks 0, 1 dense: block 1 goes, one dense block is left
    assert model.config.first_k_dense_replace == 1
    assert block_kinds(model, "deepseek_v3", "mlp") == ["DeepseekV3MLP", "DeepseekV3MoE", "DeepseekV3MoE", "DeepseekV3MoE"]


def test_lfm2_attention_block_indices_are_renumbered_with_the_layer_types():
    model = prune_layers(build("lfm2"), PRUNED)  # attention in blocks 1, 3, 4: 3 and 4 become 1 and 2
    assert model.config.full_attn_idxs == [1, 2]
    assert model.config.layer_types == ["conv", "full_attention", "full_attention", "conv"]


def test_a_plan_that_removes_every_attention_block_of_a_hybrid_is_refused_by_name():
    model = build("qwen3_next")  # attention in blocks 1, 3, 4; the others linear attention (Gated DeltaNet)
    before = snapshot(model, "qwen3_next")
    with pytest.raises(
        PlanRefusedError,
        match=r"cannot prune blocks \[1, 3, 4\] of this qwen3_next model: they are all its "
        r"attention blocks .* cannot generate with transformers' cache. Keep one",
    ):
        prune_layers(model, [1, 3, 4])
    assert_same_snapshot(before, snapshot(model, "qwen3_next"))


def test_gemma4_per_layer_config_of_the_kept_blocks_is_renumbered():
    model = build("gemma4_text")  # full attention in blocks 1, 2 and 5, each with head_dim 32 (per_layer_config)
    assert [model.config.per_layer_config[i].head_dim for i in range(N)] == [16, 32, 32, 16, 16, 32]
    prune_layers(model, [0, 2])
    assert [model.config.per_layer_config[i].head_dim for i in range(N - 2)] == [32, 16, 16, 32]
    assert [b.self_attn.head_dim for b in model.model.layers] == [32, 16, 16, 32]


def gemma4_sharing_kv():
    """Gemma 4 whose last two blocks reuse the keys and values of the last earlier block of their kind
    (num_kv_shared_layers=2): kinds [S, F, F, S, S, F], so block 4 reads block 3's, block 5 reads block 2's."""
    return build("gemma4_text", num_kv_shared_layers=2)


def test_gemma4_kv_sharing_is_kept_exact_when_the_blocks_whose_cache_is_read_stay():
    model = gemma4_sharing_kv()
    expected = logits_with_blocks_skipped(gemma4_sharing_kv(), "gemma4_text", [0, 4])
    prune_layers(model, [0, 4])  # the shared tail [4, 5] keeps block 5: num_kv_shared_layers becomes 1
    assert model.config.num_kv_shared_layers == 1
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)
    assert torch.equal(greedy(model, use_cache=True), greedy(model, use_cache=False))


def test_gemma4_removing_a_block_whose_keys_and_values_later_blocks_read_is_refused_by_name():
    model = gemma4_sharing_kv()
    before = snapshot(model, "gemma4_text")
    with pytest.raises(
        ValueError,
        match=r"block 5 reuses the keys and values of block 2 \(full_attention; num_kv_shared_layers=2 "
        r"shares them with the last 2 blocks\), which the plan removes. Keep block 2, or remove block 5 too",
    ):
        prune_layers(model, [2])
    assert_same_snapshot(before, snapshot(model, "gemma4_text"))


def jamba():
    """Jamba: attention in the odd blocks (attn_layer_period=2, offset 1), MoE in the even ones."""
    config = transformers.JambaConfig(
        **SMALL,
        attn_layer_period=2,
        attn_layer_offset=1,
        expert_layer_period=2,
        expert_layer_offset=0,
        num_experts=4,
        num_experts_per_tok=2,
        mamba_d_state=8,
        mamba_dt_rank=8,
        mamba_expand=2,
        use_mamba_kernels=False,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_jamba_is_pruned_exactly_by_a_plan_that_keeps_its_period(tmp_path):
    model = jamba()
    expected = logits_with_blocks_skipped_at(jamba(), "model.layers", [2, 3])
    prune_layers(model, [2, 3])  # one whole period: the pattern of the kept blocks is the config's pattern
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)
    reloaded, _ = save_and_reload(model, tmp_path)
    assert torch.equal(logits(reloaded), logits(model))
    assert torch.equal(greedy(model, use_cache=True), greedy(model, use_cache=False))


def test_jamba_a_plan_that_breaks_its_period_is_refused_naming_the_placement_fields():
    model = jamba()
    before = [id(b) for b in model.model.layers]
    with pytest.raises(
        PlanRefusedError,
        match=r"cannot prune blocks \[1\] of this jamba model: after pruning, the config would build "
        r"block 2 \(block 1 of the pruned model\) otherwise.*attn_layer_period=2, "
        r"attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=0",
    ):
        prune_layers(model, [1])
    assert [id(b) for b in model.model.layers] == before and model.config.num_hidden_layers == N


def test_gemma4_a_plan_that_leaves_a_sliding_block_last_is_refused_since_its_config_would_reload_otherwise():
    model = build("gemma4_text")  # [S, F, F, S, S, F]: Gemma 4's config makes its last block full attention on load
    before = snapshot(model, "gemma4_text")
    with pytest.raises(
        PlanRefusedError,
        match=r"config would say layer_types=\['sliding_attention', .*'sliding_attention'\], "
        r"which this family's config rewrites to .*'full_attention'\] when it is loaded",
    ):
        prune_layers(model, [5])
    assert_same_snapshot(before, snapshot(model, "gemma4_text"))


def test_gemma4_per_layer_inputs_keep_the_slices_of_the_kept_blocks():
    model = build("gemma4_text")  # per-layer tables of 6 blocks x 8: embeddings (128, 48), projection (48, 64)
    table, projection = model.model.embed_tokens_per_layer.weight.clone(), model.model.per_layer_model_projection.weight.clone()
    prune_layers(model, [1, 4])
    kept = torch.cat([torch.arange(8 * i, 8 * i + 8) for i in (0, 2, 3, 5)])
    assert torch.equal(model.model.embed_tokens_per_layer.weight, table[:, kept])
    assert torch.equal(model.model.per_layer_model_projection.weight, projection[kept])
    assert model.model.embed_tokens_per_layer.embedding_dim == 32 and model.model.per_layer_model_projection.out_features == 32


def test_gemma4_without_per_layer_inputs_the_larger_models_layout_is_pruned_exactly():
    model = build("gemma4_text", hidden_size_per_layer_input=0)
    expected = logits_with_blocks_skipped(build("gemma4_text", hidden_size_per_layer_input=0), "gemma4_text", PRUNED)
    prune_layers(model, PRUNED)
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=1e-5)

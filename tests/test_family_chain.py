"""The chain after pruning, on today's families: statistics, selection, the Lightning callback, healing, and
pruning a multimodal checkpoint on disk.

The models are the small random models of test_surgery.py (6 blocks, hidden size 64, vocab 128): hybrids
(linear attention, Mamba 2, short convolutions, Mamba and attention side by side, Jamba's period), mixtures of
experts (fused 3-D experts, multi-head latent attention) and Gemma 4. Every reference is computed here, beside the
code under test: the hidden states by forward pre-hooks on the blocks (found at the path written out in
test_surgery.py), the loss of a pruned model by Hugging Face's own ``labels=`` loss, the pruned logits by running
the dense model with the removed blocks skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from lightning.pytorch import Trainer
from safetensors.torch import load_file
from test_surgery import (
    FAMILIES,
    LIN,
    LINEAR_ATTENTION,
    MOE,
    PRUNED,
    SEQ_LEN,
    SMALL,
    VOCAB,
    F,
    N,
    build,
    jamba,
    logits,
    logits_with_blocks_skipped_at,
)
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from lorp_lightning import prune_checkpoint
from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks import LoRPPruneCallback
from lorp_lightning.healing import adapters, heal, healing_records
from lorp_lightning.healing.adapters import lora_targets
from lorp_lightning.healing.settings import HealingSettings
from lorp_lightning.methods import select_layers
from lorp_lightning.module import LoRPModule
from lorp_lightning.search import PlanLoss
from lorp_lightning.stats import HiddenStateRecorder, collect_layer_stats
from lorp_lightning.surgery import PlanRefusedError, prune_layers, pruning_record

CHAIN = [
    "qwen3_next",
    "qwen3_5_text",
    "granitemoehybrid",
    "lfm2",
    "falcon_h1",
    "jamba",
    "mixtral",
    "deepseek_v3",
    "gpt_oss",
    "llama4_text",
    "minimax",
    "gemma4_text",
]
"""Linear attention + MoE, linear attention, Mamba 2 + attention, short convolution + attention, Mamba and attention
side by side, Jamba (attention in the odd blocks), MoE, MLA + MoE, MoE with sinks, MoE + NoPE, lightning attention + MoE,
Gemma 4 (two head sizes)."""

BATCH = 2
K = 2  # blocks to prune
WINDOWS = torch.randint(3, VOCAB - 3, (4, SEQ_LEN), generator=torch.Generator().manual_seed(2))  # calibration windows
JAMBA_KEEPS_ITS_PERIOD = [[1, 2], [2, 3], [3, 4]]  # of the plans of 2 unprotected blocks: a run of two keeps odd = attention
JAMBA_BREAKS_ITS_PERIOD = [[1, 3], [1, 4], [2, 4]]


def make(family: str):
    """The family's small random model (the same weights on every call), in eval mode."""
    return jamba() if family == "jamba" else build(family)


def blocks_path(family: str) -> str:
    """Where the blocks are, written out independently of lorp_lightning.architectures."""
    return "model.layers" if family == "jamba" else FAMILIES[family].blocks_path


def logits_skipping(family: str, skipped: list[int]) -> torch.Tensor:
    """The dense model's logits with the ``skipped`` blocks handing their input on unchanged."""
    return logits_with_blocks_skipped_at(make(family), blocks_path(family), skipped)


def block_inputs_and_output(model, path: str, batch: dict) -> torch.Tensor:
    """(N+1, B, T, D): the input of every block and the output of the last one, caught by hooks of this test's own."""
    blocks = model.get_submodule(path)
    caught: list[torch.Tensor] = []

    def before(module, args, kwargs):
        caught.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    def after(module, args, output):
        caught.append((output if isinstance(output, torch.Tensor) else output[0]).detach().clone())

    handles = [block.register_forward_pre_hook(before, with_kwargs=True) for block in blocks]
    handles.append(blocks[-1].register_forward_hook(after))
    try:
        with torch.no_grad():
            model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(caught)


def normalised(states: torch.Tensor) -> torch.Tensor:
    """f = h / (||h||_2 + 1e-8) along the hidden dimension, in float32 (the definition in docs/method.md)."""
    states = states.float()
    return states / (torch.linalg.vector_norm(states, dim=-1, keepdim=True) + 1e-8)


def calibration_batches() -> list[dict]:
    """Two batches of two windows; the second window of the second batch has its last 5 tokens padded."""
    mask = torch.ones_like(WINDOWS)
    mask[3, -5:] = 0
    return [{"input_ids": ids, "attention_mask": m} for ids, m in zip(WINDOWS.split(BATCH), mask.split(BATCH), strict=True)]


def hf_loss(model, windows: torch.Tensor) -> float:
    """Hugging Face's next-token loss of the windows (all of one length: the mean of the windows' means)."""
    with torch.no_grad():
        return float(model(input_ids=windows, labels=windows, use_cache=False).loss)


chain = pytest.mark.parametrize("family", CHAIN)


# --------------------------------------------------------------------------- 1. statistics


@chain
def test_the_recorded_states_are_the_block_inputs_and_the_last_block_output_normalised(family):
    model = make(family)
    batch = calibration_batches()[1]
    expected = normalised(block_inputs_and_output(model, blocks_path(family), batch))
    with HiddenStateRecorder(model) as recorder, torch.no_grad():
        model(**batch, use_cache=False)
        states = recorder.pop()
    assert states.shape == (N + 1, BATCH, SEQ_LEN, 64) and states.dtype == torch.float32
    assert torch.equal(states, expected)
    assert not any(block._forward_pre_hooks or block._forward_hooks for block in decoder_layers(model))  # detached


@chain
def test_the_similarity_is_the_mean_cosine_of_the_hidden_states_over_the_real_tokens(family):
    model = make(family)
    batches = calibration_batches()
    stats = collect_layer_stats(model, batches, progress=False)

    gram = torch.zeros(N + 1, N + 1, dtype=torch.float64)
    last_gram = torch.zeros(N + 1, N + 1, dtype=torch.float64)
    for batch in batches:
        f = normalised(block_inputs_and_output(model, blocks_path(family), batch)).double()  # (N+1, B, T, D)
        real = batch["attention_mask"].bool()
        tokens = f[:, real]  # (N+1, real tokens, D)
        gram += torch.einsum("itd,jtd->ij", tokens, tokens)
        last = real.sum(dim=1) - 1  # right padding: the last real token
        ends = f[:, torch.arange(BATCH), last]  # (N+1, B, D)
        last_gram += torch.einsum("ibd,jbd->ij", ends, ends)
    assert stats.num_tokens == 4 * SEQ_LEN - 5 and stats.num_sequences == 4
    for actual, summed, count in ((stats.similarity, gram, stats.num_tokens), (stats.last_token_similarity, last_gram, 4)):
        assert actual.shape == (N + 1, N + 1) and actual.dtype == torch.float64
        assert torch.isfinite(actual).all() and torch.equal(actual, actual.T)
        assert torch.equal(actual.diagonal(), torch.ones(N + 1, dtype=torch.float64))
        expected = summed / count
        expected.fill_diagonal_(1.0)
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)
    assert stats.similarity[0, N] < 0.999  # the blocks do change the residual stream


# --------------------------------------------------------------------------- 2. selection and pruning


# SLEB's first step removes one block alone, which Jamba's period of 2 refuses for every block: see
# test_sleb_on_jamba_has_no_first_step_since_every_single_block_plan_breaks_the_period
@pytest.mark.parametrize("family, method", [(f, "lorp_search") for f in CHAIN] + [(f, "sleb") for f in CHAIN if f != "jamba"])
def test_the_chosen_plan_has_the_lowest_checked_loss_and_the_pruned_model_has_that_loss(family, method):
    model = make(family)
    stats = collect_layer_stats(model, WINDOWS.split(BATCH), progress=False)
    plan = select_layers(stats, K, method=method, model=model, windows=WINDOWS)
    assert torch.equal(logits(model), logits(make(family)))  # the search left the model as it was

    checked = {tuple(c["pruned"]): c["loss"] for c in plan.candidates}
    chosen = checked[tuple(plan.pruned)]
    assert len(plan.pruned) == K and not {0, N - 1} & set(plan.pruned) and math.isfinite(chosen)
    fresh = PlanLoss(make(family), WINDOWS)
    assert fresh(plan.pruned) == chosen  # a fresh check on an unused model says the same
    if method == "lorp_search":  # the best of the plans it checked
        assert chosen == min(checked.values())
    else:  # SLEB's second step: the best block to remove beside the first step's
        [first] = plan.candidates[0]["pruned"]
        assert first in plan.pruned and chosen == min(fresh(sorted([first, b])) for b in range(1, N - 1) if b != first)

    prune_layers(model, plan)
    assert len(decoder_layers(model)) == N - K and pruning_record(model)["pruned_layers"] == plan.pruned
    assert hf_loss(model, WINDOWS) == pytest.approx(chosen, abs=1e-5)
    torch.testing.assert_close(logits(model), logits_skipping(family, plan.pruned), rtol=0, atol=1e-5)


def test_jamba_a_plan_has_a_finite_loss_exactly_when_prune_layers_accepts_it():
    loss = PlanLoss(jamba(), WINDOWS)
    for plan in JAMBA_KEEPS_ITS_PERIOD:
        pruned = prune_layers(jamba(), plan)
        assert loss(plan) == pytest.approx(hf_loss(pruned, WINDOWS), abs=1e-5)
    for plan in JAMBA_BREAKS_ITS_PERIOD:
        assert loss(plan) == math.inf
        with pytest.raises(PlanRefusedError, match=r"attn_layer_period=2"):
            prune_layers(jamba(), plan)


def test_jamba_lorp_search_chooses_a_plan_that_keeps_its_period_and_skips_those_that_break_it():
    model = jamba()
    stats = collect_layer_stats(model, WINDOWS.split(BATCH), progress=False)
    plan = select_layers(stats, K, method="lorp_search", model=model, windows=WINDOWS)
    assert plan.pruned in JAMBA_KEEPS_ITS_PERIOD
    for candidate in plan.candidates:  # every plan checked has a finite loss exactly when it keeps the period
        assert math.isfinite(candidate["loss"]) == (candidate["pruned"] in JAMBA_KEEPS_ITS_PERIOD), candidate
    prune_layers(model, plan)  # accepted
    torch.testing.assert_close(logits(model), logits_skipping("jamba", plan.pruned), rtol=0, atol=1e-5)


def test_sleb_on_jamba_has_no_first_step_since_every_single_block_plan_breaks_the_period():
    model = jamba()
    loss = PlanLoss(model, WINDOWS)
    assert [loss([b]) for b in range(1, N - 1)] == [math.inf] * (N - 2)
    assert "attn_layer_period=2" in loss.refusal([1])
    with pytest.raises(
        PlanRefusedError,
        match=r"sleb, removing block 1 of 2: this model's family refuses every one of the 4 "
        r"candidate plans, for one: cannot prune blocks \[1\] of this jamba model.*"
        r"method='lorp_search' checks whole plans",
    ):
        select_layers(None, K, method="sleb", model=model, windows=WINDOWS)
    with pytest.raises(PlanRefusedError, match=r"ppl: this model's family refuses every one of the 4 candidate plans"):
        select_layers(None, K, method="ppl", model=model, windows=WINDOWS)
    assert len(model.model.layers) == N


# --------------------------------------------------------------------------- 3. the Lightning callback


@pytest.mark.parametrize(
    "family, prune_on",
    [
        ("granitemoehybrid", "predict_end"),
        ("qwen3_next", "validation_end"),
        ("gemma4_text", "predict_end"),
        ("jamba", "validation_end"),
    ],
)
def test_the_prune_callback_prunes_the_plan_select_layers_gives_on_the_same_statistics(family, prune_on, tmp_path):
    module = LoRPModule(make(family))
    callback = LoRPPruneCallback(K, prune_on=prune_on, verbose=False)  # the default method, lorp_search
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    loader = torch.utils.data.DataLoader(WINDOWS, batch_size=BATCH)
    if prune_on == "predict_end":
        trainer.predict(module, dataloaders=loader)
    else:
        trainer.validate(module, dataloaders=loader)

    expected_stats = collect_layer_stats(make(family), WINDOWS.split(BATCH), progress=False)
    assert callback.stats.num_tokens == expected_stats.num_tokens == WINDOWS.numel()
    torch.testing.assert_close(callback.stats.similarity, expected_stats.similarity, rtol=0, atol=1e-6)
    torch.testing.assert_close(callback.stats.last_token_similarity, expected_stats.last_token_similarity, rtol=0, atol=1e-6)
    assert torch.equal(callback.windows, WINDOWS)
    expected = select_layers(expected_stats, K, method="lorp_search", model=make(family), windows=WINDOWS)
    assert callback.plan.method == "lorp_search" and callback.plan.pruned == expected.pruned and len(expected.pruned) == K

    assert len(decoder_layers(module.model)) == module.model.config.num_hidden_layers == N - K
    assert pruning_record(module.model)["pruned_layers"] == expected.pruned
    assert all(not block._forward_pre_hooks and not block._forward_hooks for block in decoder_layers(module.model))
    torch.testing.assert_close(logits(module.model), logits_skipping(family, expected.pruned), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- 4. healing


class ByteTokenizer:
    """A tokenizer for the vocabulary of 128: byte b is token 3 + b % 120 (what TextDataModule calls)."""

    def __call__(self, text: str, return_tensors: str = "pt", verbose: bool = False) -> dict:
        return {"input_ids": torch.tensor([[3 + b % 120 for b in text.encode()]])}


DOCUMENTS = [f"Document {i}: the quick brown fox jumps over the lazy dog, and the dog sleeps on." for i in range(24)]

# family -> (the linear layers LoRA adapts, by default; the linear layers of the blocks it leaves alone, within a block)
LORA = {
    # MoE: the experts are fused 3-D parameters (no nn.Linear), the router a TopKRouter: attention only
    "mixtral": (["k_proj", "o_proj", "q_proj", "v_proj"], set()),
    # gate/up/down_proj: the dense blocks' MLP and the shared expert; shared_expert_gate (64 -> 1) weighs the shared expert
    "qwen3_next": (
        ["down_proj", "gate_proj", "in_proj_ba", "in_proj_qkvz", "k_proj", "o_proj", "out_proj", "q_proj", "up_proj", "v_proj"],
        {"mlp.shared_expert_gate"},
    ),
    # the router is an nn.Linear that returns a tuple (scores, logits)
    "llama4_text": (["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"], {"feed_forward.router"}),
    # Mamba 2's in_proj/out_proj, attention, the shared MLP (input_linear, output_linear); experts fused, router not linear
    "granitemoehybrid": (["in_proj", "input_linear", "k_proj", "o_proj", "out_proj", "output_linear", "q_proj", "v_proj"], set()),
    "lfm2": (["in_proj", "k_proj", "out_proj", "q_proj", "v_proj", "w1", "w2", "w3"], set()),
}


@pytest.mark.parametrize("family", list(LORA))
def test_lora_adapts_the_blocks_linear_layers_but_not_the_routing_of_the_experts(family):
    model = prune_layers(make(family), PRUNED)
    targets = lora_targets(model, HealingSettings.checked())
    expected, left_alone = LORA[family]
    assert sorted({name.rpartition(".")[2] for name in targets}) == expected
    prefix = blocks_path(family)
    linear = {
        f"{prefix}.{i}.{name}"
        for i, block in enumerate(model.get_submodule(prefix))
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    }
    assert set(targets) <= linear
    assert {name.split(".", 3)[3] for name in linear - set(targets)} == left_alone


def test_naming_a_router_in_target_modules_says_it_is_left_alone():
    model = prune_layers(make("llama4_text"), PRUNED)
    with pytest.raises(
        ValueError,
        match=r"names 'router', which routes tokens among the experts of the MoE blocks: LoRA leaves "
        r"the routing layers \['router'\] as they are",
    ):
        lora_targets(model, HealingSettings.checked(target_modules=["q_proj", "router"]))


def test_peft_renaming_the_targets_to_the_fused_experts_is_caught_and_the_model_left_as_it_was(monkeypatch):
    # Given the model itself (a module with a config), peft 0.21 reads Qwen3-Next's gate_proj / up_proj / down_proj
    # targets (its dense blocks' MLPs and shared experts) as transformers 4's per-expert layers, and puts the
    # adapters on every expert's fused gate_up_proj and down_proj instead.
    class GivenTheModelItself(adapters._Holder):
        def __init__(self, model):
            super().__init__(model)
            self.config, self.base_model_prefix = model.config, model.base_model_prefix

    monkeypatch.setattr(adapters, "_Holder", GivenTheModelItself)
    model = prune_layers(make("qwen3_next"), PRUNED)
    before = {name: (tensor.clone(), tensor.requires_grad) for name, tensor in model.named_parameters()}
    modules = [type(m) for m in model.modules()]
    targets = lora_targets(model, HealingSettings.checked())
    mlp = [name for name in targets if name.endswith(("gate_proj", "up_proj", "down_proj"))]  # dense MLPs, shared experts
    moe = sorted(name.rpartition(".mlp.")[0] for name in model.state_dict() if name.endswith("mlp.experts.down_proj"))
    assert mlp and moe
    with pytest.raises(
        RuntimeError,
        match=rf"put the LoRA adapters on other weights than the {len(targets)} linear layers asked for: "
        rf"also on {2 * len(moe)} others \({moe[0]}.mlp.experts.down_proj, {moe[0]}.mlp.experts."
        rf"gate_up_proj, .*\), not on {len(mlp)} of them \({sorted(mlp)[0]}, ",
    ):
        heal(model, ByteTokenizer(), steps=1, text=DOCUMENTS, window=SEQ_LEN, batch_size=BATCH, num_windows=2)
    assert [type(m) for m in model.modules()] == modules and pruning_record(model).get("healing") is None
    assert all(torch.equal(p, before[n][0]) and p.requires_grad == before[n][1] for n, p in model.named_parameters())


@pytest.mark.parametrize("family", list(LORA))
def test_healing_merges_into_a_plain_model_that_saves_and_reloads_with_plain_transformers(family, tmp_path):
    model = prune_layers(make(family), PRUNED)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    targets = sorted(lora_targets(model, HealingSettings.checked()))

    healed = heal(model, ByteTokenizer(), steps=2, text=DOCUMENTS, window=SEQ_LEN, batch_size=BATCH, num_windows=4, seed=0)

    assert healed is model and type(model) is type(make(family)) and not model.training
    assert not any(type(m).__module__.startswith("peft") for m in model.modules()) and not hasattr(model, "peft_config")
    after = model.state_dict()
    assert list(after) == list(before)  # the pruned model's parameter names, no adapter left
    assert {name for name in before if not torch.equal(after[name], before[name])} == {f"{t}.weight" for t in targets}
    [entry] = healing_records(model)
    assert entry["num_steps"] == 2 and entry["completed"] and entry["target_modules"] == LORA[family][0]
    assert pruning_record(model)["pruned_layers"] == PRUNED

    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(reloaded) is type(model) and reloaded.config.lorp_pruning == pruning_record(model)
    assert torch.equal(logits(reloaded.eval()), logits(model))


# --------------------------------------------------------------------------- 5. multimodal checkpoints on disk


QWEN_VISION = dict(
    depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8, out_hidden_size=64, num_position_embeddings=16
)
QWEN_TOKENS = dict(
    image_token_id=VOCAB - 1, video_token_id=VOCAB - 2, vision_start_token_id=VOCAB - 3, vision_end_token_id=VOCAB - 4
)
GEMMA4_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=16,
    position_embedding_size=64,
)
GEMMA4_TOKENS = dict(
    boi_token_id=VOCAB - 3,
    eoi_token_id=VOCAB - 2,
    image_token_id=VOCAB - 1,
    video_token_id=VOCAB - 4,
    boa_token_id=VOCAB - 5,
    eoa_token_index=VOCAB - 6,
    audio_token_id=VOCAB - 7,
)


def text_config(family: str, **changes) -> dict:
    return {**FAMILIES[family].config().to_dict(), **changes}


# name -> (model_type, its tiny config: the text part as in test_surgery.py and a vision tower of 2 blocks, where the
# blocks are in the model, written out here)
MULTIMODAL = {
    "qwen3_5": (
        "qwen3_5",
        lambda: transformers.Qwen3_5Config(text_config=text_config("qwen3_5_text"), vision_config=QWEN_VISION, **QWEN_TOKENS),
        "model.language_model.layers",
    ),
    "qwen3_5_moe": (
        "qwen3_5_moe",
        lambda: transformers.Qwen3_5MoeConfig(
            text_config=dict(
                SMALL,
                head_dim=16,
                layer_types=[LIN, F, F, LIN, F, LIN],
                **LINEAR_ATTENTION,
                **MOE,
                shared_expert_intermediate_size=32,
            ),
            vision_config=QWEN_VISION,
            **QWEN_TOKENS,
        ),
        "model.language_model.layers",
    ),
    # Llama4ForConditionalGeneration holds a Llama4ForCausalLM as language_model: its blocks are language_model.model.layers,
    # in memory and on disk
    "llama4": (
        "llama4",
        lambda: transformers.Llama4Config(
            text_config=text_config("llama4_text"),
            vision_config=dict(
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                image_size=28,
                patch_size=14,
                vision_output_dim=64,
                projector_input_dim=64,
                projector_output_dim=64,
            ),
            boi_token_index=VOCAB - 3,
            eoi_token_index=VOCAB - 2,
            image_token_index=VOCAB - 1,
        ),
        "language_model.model.layers",
    ),
    # the small models' layout (E2B, E4B): per-layer inputs, tables of one slice per block outside the blocks
    "gemma4": (
        "gemma4",
        lambda: transformers.Gemma4Config(text_config=text_config("gemma4_text"), vision_config=GEMMA4_VISION, **GEMMA4_TOKENS),
        "model.language_model.layers",
    ),
    # the larger models' layout: no per-layer inputs
    "gemma4-without-per-layer-inputs": (
        "gemma4",
        lambda: transformers.Gemma4Config(
            text_config=text_config("gemma4_text", hidden_size_per_layer_input=0), vision_config=GEMMA4_VISION, **GEMMA4_TOKENS
        ),
        "model.language_model.layers",
    ),
}


def multimodal(name: str):
    """The tiny image-text model ``name`` of MULTIMODAL (the same weights on every call), in eval mode."""
    model_type, config, _ = MULTIMODAL[name]
    config = config()
    assert config.model_type == model_type
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config).eval()


def reload(directory: Path):
    model, info = AutoModelForImageTextToText.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for path in sorted(directory.glob("*.safetensors")) for name, tensor in load_file(path).items()}


@pytest.mark.parametrize("name", list(MULTIMODAL))
def test_a_pruned_multimodal_checkpoint_equals_in_memory_pruning_saved_in_tensors_config_and_logits(name, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    multimodal(name).save_pretrained(checkpoint, max_shard_size="100KB")
    assert len(list(checkpoint.glob("*.safetensors"))) >= 3
    out = prune_checkpoint(PRUNED, checkpoint, tmp_path / "pruned")

    reference = prune_layers(multimodal(name), PRUNED)
    reference.save_pretrained(tmp_path / "in-memory", max_shard_size="100KB")
    config, expected_config = (json.loads((d / "config.json").read_text()) for d in (out, tmp_path / "in-memory"))
    assert config == expected_config and config["text_config"]["num_hidden_layers"] == N - len(PRUNED)
    written, expected = tensors(out), tensors(tmp_path / "in-memory")
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[key], expected[key]) for key in expected)
    assert len(written) < len(tensors(checkpoint))  # the removed blocks' tensors are gone

    pruned, blocks = reload(out), MULTIMODAL[name][2]
    assert len(pruned.get_submodule(blocks)) == N - len(PRUNED)
    assert torch.equal(logits(pruned), logits(reload(tmp_path / "in-memory")))
    torch.testing.assert_close(logits(pruned), logits_with_blocks_skipped_at(multimodal(name), blocks, PRUNED), rtol=0, atol=1e-5)
    assert pruning_record(pruned) == pruning_record(reference)

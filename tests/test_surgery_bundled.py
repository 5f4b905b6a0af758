"""prune_layers on the three real bundled models: a quarter of the blocks removed, fp32.

Each model is loaded, pruned, saved and reloaded with plain transformers once per module.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from lorp_lightning.assets import load_model, load_text
from lorp_lightning.surgery import prune_layers, pruning_record

# name -> (model_type, number of blocks, where the blocks are)
BUNDLED = {
    "smollm2-135m": ("llama", 30, "model.layers"),
    "gemma3-270m": ("gemma3_text", 18, "model.layers"),
    "qwen2.5-0.5b": ("qwen2", 24, "model.layers"),
}


def num_tokens(config) -> int:
    """256 held-out tokens, or more where needed to reach past the model's sliding window."""
    return max(256, (getattr(config, "sliding_window", None) or 0) + 128)


def evenly_spaced_inner_blocks(num_layers: int, count: int) -> list[int]:
    """``count`` blocks spread evenly over 1..num_layers-2 (never the first or the last)."""
    return sorted({round(1 + i * (num_layers - 3) / (count - 1)) for i in range(count)})


@torch.no_grad()
def logits_with_blocks_skipped(model, blocks, skipped, ids):
    def skip(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])

    handles = [blocks[i].register_forward_hook(skip, with_kwargs=True) for i in skipped]
    try:
        return model(ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module", params=list(BUNDLED))
def case(request, tmp_path_factory):
    name = request.param
    model_type, num_layers, blocks_path = BUNDLED[name]
    model, tokenizer = load_model(name, dtype=torch.float32, progress=False)
    assert model.config.model_type == model_type and len(model.get_submodule(blocks_path)) == num_layers
    length = num_tokens(model.config)
    ids = tokenizer(load_text("wiki", "heldout")[: 8 * length], return_tensors="pt").input_ids[:, :length]
    assert ids.shape == (1, length)
    removed = evenly_spaced_inner_blocks(num_layers, int(num_layers * 0.25))
    expected = logits_with_blocks_skipped(model, model.get_submodule(blocks_path), removed, ids)
    layer_types = getattr(model.config, "layer_types", None)

    pruned = prune_layers(model, removed)
    with torch.no_grad():
        pruned_logits = pruned(ids, use_cache=False).logits
    directory = tmp_path_factory.mktemp(name)
    pruned.save_pretrained(directory)
    reloaded, info = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, output_loading_info=True)
    reloaded.eval()
    with torch.no_grad():
        reloaded_output = reloaded(ids, labels=ids, use_cache=False)
    yield SimpleNamespace(
        num_layers=num_layers,
        blocks_path=blocks_path,
        removed=removed,
        layer_types=layer_types,
        ids=ids,
        expected=expected,
        pruned_logits=pruned_logits,
        reloaded=reloaded,
        info=info,
        reloaded_output=reloaded_output,
        tokenizer=tokenizer,
    )


def test_a_quarter_of_the_blocks_are_removed_and_recorded(case):
    kept = [i for i in range(case.num_layers) if i not in case.removed]
    assert len(case.removed) == int(case.num_layers * 0.25)
    assert len(case.reloaded.get_submodule(case.blocks_path)) == len(kept)
    assert case.reloaded.config.num_hidden_layers == len(kept)
    if case.layer_types is not None:
        assert case.reloaded.config.layer_types == [case.layer_types[i] for i in kept]
    assert pruning_record(case.reloaded) == {
        "original_num_layers": case.num_layers,
        "pruned_layers": case.removed,
        "steps": [{"method": None, "pruned_layers": case.removed, "rls": None, "num_clusters": None}],
    }


def test_pruned_logits_equal_the_original_run_with_the_removed_blocks_skipped(case):
    torch.testing.assert_close(case.pruned_logits, case.expected, rtol=0, atol=1e-4)


def test_reload_with_plain_transformers_has_the_same_keys_and_identical_logits(case):
    assert not case.info["missing_keys"] and not case.info["unexpected_keys"] and not case.info["mismatched_keys"]
    assert torch.equal(case.reloaded_output.logits, case.pruned_logits)


@torch.no_grad()
def test_greedy_generation_with_the_cache_equals_generation_without_it(case):
    prompt = case.ids[:, :8]
    kwargs = dict(
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=20,
        min_new_tokens=20,
        pad_token_id=case.tokenizer.pad_token_id,
    )
    with_cache = case.reloaded.generate(prompt, use_cache=True, **kwargs)
    without_cache = case.reloaded.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape == (1, 8 + 20)
    assert torch.equal(with_cache, without_cache)


def test_heldout_perplexity_of_the_reloaded_model_is_finite(case):
    perplexity = math.exp(case.reloaded_output.loss.item())
    assert math.isfinite(perplexity) and perplexity > 1.0

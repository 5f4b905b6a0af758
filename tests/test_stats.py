"""Layer statistics: what S is, exactly, and that streaming it changes nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.stats import LayerSimilarity, LayerStats, collect_layer_stats


def _reference_similarity(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """S computed the slow, obvious way: every pair of layers, every real token, cosine in float64."""
    layers = states.shape[0]
    tokens = states[:, mask.bool()].double()  # (L, n, D)
    s = torch.empty(layers, layers, dtype=torch.float64)
    for i in range(layers):
        for j in range(layers):
            s[i, j] = F.cosine_similarity(tokens[i], tokens[j], dim=-1, eps=0).mean()
    return s


def test_similarity_is_the_mean_cosine_over_real_tokens_with_unit_diagonal():
    torch.manual_seed(0)
    states = torch.randn(4, 3, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]])
    metric = LayerSimilarity(num_layers=3)
    metric.update(states, mask)
    stats = metric.compute()
    assert stats.num_layers == 3 and stats.num_tokens == 13 and stats.num_sequences == 3
    torch.testing.assert_close(stats.similarity, _reference_similarity(states, mask), atol=1e-6, rtol=0)
    assert torch.equal(stats.similarity.diagonal(), torch.ones(4, dtype=torch.float64))
    assert stats.similarity.dtype == torch.float64


def test_last_token_similarity_uses_the_last_real_token_of_each_sequence():
    torch.manual_seed(1)
    states = torch.randn(3, 2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])  # right padding, left padding
    metric = LayerSimilarity(num_layers=2)
    metric.update(states, mask)
    last_only = torch.zeros_like(mask)
    last_only[0, 2] = 1
    last_only[1, 4] = 1
    expected = _reference_similarity(states, last_only)
    torch.testing.assert_close(metric.compute().last_token_similarity, expected, atol=1e-6, rtol=0)


def test_padding_tokens_change_nothing():
    torch.manual_seed(2)
    states = torch.randn(3, 2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    garbage = states.clone()
    garbage[:, 0, 3:] = 1e3 * torch.randn(3, 2, 8)
    a, b = LayerSimilarity(2), LayerSimilarity(2)
    a.update(states, mask)
    b.update(garbage, mask)
    assert torch.equal(a.compute().similarity, b.compute().similarity)
    assert torch.equal(a.compute().last_token_similarity, b.compute().last_token_similarity)


def test_two_half_batches_equal_one_batch_and_merged_states_equal_one_metric():
    torch.manual_seed(3)
    states = torch.randn(5, 4, 7, 12)
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 5:] = 0
    whole = LayerSimilarity(4)
    whole.update(states, mask)
    halves = LayerSimilarity(4)
    halves.update(states[:, :2], mask[:2])
    halves.update(states[:, 2:], mask[2:])
    first, second = LayerSimilarity(4), LayerSimilarity(4)
    first.update(states[:, :2], mask[:2])
    second.update(states[:, 2:], mask[2:])
    first.merge_state(second)
    for other in (halves, first):
        torch.testing.assert_close(other.compute().similarity, whole.compute().similarity, atol=1e-12, rtol=0)
        torch.testing.assert_close(
            other.compute().last_token_similarity, whole.compute().last_token_similarity, atol=1e-12, rtol=0
        )
        assert other.compute().num_tokens == whole.compute().num_tokens == 26


def test_states_already_normalized_give_the_same_statistics_without_normalizing_twice():
    from lorp_lightning.stats import normalize_states

    torch.manual_seed(5)
    states = 50 * torch.randn(4, 2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    raw, normalized = LayerSimilarity(3), LayerSimilarity(3)
    raw.update(states, mask)
    normalized.update(normalize_states(states), mask, normalized=True)
    torch.testing.assert_close(normalized.compute().similarity, raw.compute().similarity, atol=1e-12, rtol=0)
    torch.testing.assert_close(
        normalized.compute().last_token_similarity, raw.compute().last_token_similarity, atol=1e-12, rtol=0
    )


def test_update_rejects_states_of_the_wrong_depth_and_masks_of_the_wrong_shape():
    metric = LayerSimilarity(num_layers=3)
    with pytest.raises(ValueError, match="N\\+1=4.*\\(3, 2, 5, 8\\)"):
        metric.update(torch.randn(3, 2, 5, 8))
    with pytest.raises(ValueError, match="attention_mask must have shape \\(2, 5\\)"):
        metric.update(torch.randn(4, 2, 5, 8), torch.ones(2, 4))
    with pytest.raises(ValueError, match="num_layers.*0"):
        LayerSimilarity(num_layers=0)
    with pytest.raises(RuntimeError, match="no tokens"):
        LayerSimilarity(num_layers=3).compute()


def test_layer_stats_save_and_load_round_trip_exactly(tmp_path):
    torch.manual_seed(4)
    metric = LayerSimilarity(3)
    metric.update(torch.randn(4, 2, 5, 8))
    stats = metric.compute()
    stats.save(tmp_path / "stats.pt")
    loaded = LayerStats.load(tmp_path / "stats.pt")
    assert torch.equal(loaded.similarity, stats.similarity)
    assert torch.equal(loaded.last_token_similarity, stats.last_token_similarity)
    assert (loaded.num_tokens, loaded.num_sequences, loaded.num_layers) == (10, 2, 3)
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a file written by LayerStats.save"):
        LayerStats.load(tmp_path / "other.pt")


# --------------------------------------------------------------------------- on the real model


@pytest.fixture(scope="module")
def calibration_batches(smollm2):
    from lorp_lightning.assets import load_text
    from lorp_lightning.evaluation import token_windows

    _, tokenizer = smollm2
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=128, max_windows=4)
    return windows


def test_hidden_states_are_block_inputs_and_the_prenorm_output(smollm2, calibration_batches):
    model, _ = smollm2
    ids = calibration_batches[:2]
    stats = collect_layer_stats(model, [ids], progress=False)
    # Independent reference: output_hidden_states gives h_0..h_{N-1} (block inputs) first; the
    # last block's output before the final norm is what enters model.model.norm.
    captured = {}
    handle = model.model.norm.register_forward_pre_hook(lambda m, args: captured.setdefault("h_N", args[0]))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    n = model.config.num_hidden_layers
    states = torch.stack([*out.hidden_states[:n], captured["h_N"]])
    expected = _reference_similarity(states, torch.ones(ids.shape))
    assert stats.num_layers == n == 30
    torch.testing.assert_close(stats.similarity, expected, atol=1e-5, rtol=0)


def test_statistics_rls_and_plan_of_smollm2_repeat_exactly(smollm2, calibration_batches):
    from lorp_lightning import select_layers

    model, _ = smollm2
    first = collect_layer_stats(model, calibration_batches.split(2), progress=False)
    second = collect_layer_stats(model, calibration_batches.split(2), progress=False)
    first_plan, second_plan = select_layers(first, 0.25), select_layers(second, 0.25)
    assert first_plan == second_plan
    assert first_plan.rls == second_plan.rls and first_plan.num_layers == 30 and len(first_plan.pruned) == 7
    assert 0 not in first_plan.pruned and 29 not in first_plan.pruned
    s = first.similarity
    assert s.shape == (31, 31)
    assert torch.equal(s, s.T)
    assert torch.equal(s.diagonal(), torch.ones(31, dtype=torch.float64))
    assert s.min() >= -1 and s.max() <= 1
    assert first.num_tokens == 4 * 128 and first.num_sequences == 4
    assert torch.equal(first.similarity, second.similarity)


def test_batching_and_right_padding_do_not_change_the_statistics(smollm2, calibration_batches, tokenizer_pad=None):
    model, tokenizer = smollm2
    whole = collect_layer_stats(model, [calibration_batches], progress=False)
    one_by_one = collect_layer_stats(model, calibration_batches.split(1), progress=False)
    torch.testing.assert_close(one_by_one.similarity, whole.similarity, atol=1e-5, rtol=0)
    # The same four sequences, the last two cut short and right-padded: statistics over the
    # real tokens equal those of the unpadded, shortened sequences.
    ids = calibration_batches.clone()
    mask = torch.ones_like(ids)
    mask[2:, 100:] = 0
    padded = ids.clone()
    padded[2:, 100:] = tokenizer.pad_token_id
    with_padding = collect_layer_stats(model, [{"input_ids": padded, "attention_mask": mask}], progress=False)
    separately = collect_layer_stats(model, [ids[:2], ids[2:, :100]], progress=False)
    assert with_padding.num_tokens == separately.num_tokens == 2 * 128 + 2 * 100
    torch.testing.assert_close(with_padding.similarity, separately.similarity, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_padding.last_token_similarity, separately.last_token_similarity, atol=1e-5, rtol=0)


def test_bf16_and_fp32_models_give_similarity_within_1e_2(smollm2, calibration_batches):
    from lorp_lightning.assets import load_model

    model, _ = smollm2
    bf16, _ = load_model("smollm2-135m", dtype=torch.bfloat16, progress=False)
    fp32_stats = collect_layer_stats(model, calibration_batches.split(2), progress=False)
    bf16_stats = collect_layer_stats(bf16, calibration_batches.split(2), progress=False)
    assert bf16_stats.similarity.dtype == torch.float64
    assert (bf16_stats.similarity - fp32_stats.similarity).abs().max() < 1e-2


def test_non_finite_hidden_states_name_the_block(smollm2, calibration_batches):
    model, _ = smollm2
    block = decoder_layers(model)[3]
    handle = block.register_forward_hook(lambda m, args, out: torch.full_like(out, float("nan")))
    try:
        with pytest.raises(FloatingPointError, match="entering block 4"):
            collect_layer_stats(model, [calibration_batches[:1]], progress=False)
    finally:
        handle.remove()
    # The hooks of the failed run are gone: the model runs as before.
    assert collect_layer_stats(model, [calibration_batches[:1]], progress=False).num_tokens == 128
    assert all(not layer._forward_pre_hooks for layer in decoder_layers(model))


def test_collect_layer_stats_leaves_the_model_in_its_mode(smollm2, calibration_batches):
    model, _ = smollm2
    model.train()
    try:
        collect_layer_stats(model, [calibration_batches[:1]], progress=False)
        assert model.training
    finally:
        model.eval()


def test_a_batchs_states_are_freed_before_the_next_batch_runs(smollm2, calibration_batches, monkeypatch):
    """One batch's normalised states, (N+1)·B·T·D float32 (365 MB for the 1.5B model's batch of 4 × 512 tokens), are
    the statistics' memory: the pass must not hold the last batch's while the next one runs."""
    import weakref

    from lorp_lightning.stats import HiddenStateRecorder

    model, _ = smollm2
    popped = []
    pop = HiddenStateRecorder.pop_with_norms

    def recorded(self):
        states, norms = pop(self)
        popped.append(weakref.ref(states))
        return states, norms

    monkeypatch.setattr(HiddenStateRecorder, "pop_with_norms", recorded)
    alive = []  # at the start of each batch: how many popped states still exist
    handle = decoder_layers(model)[0].register_forward_pre_hook(lambda *_: alive.append(sum(r() is not None for r in popped)))
    try:
        collect_layer_stats(model, calibration_batches.split(1), progress=False)
    finally:
        handle.remove()
    assert len(popped) == 4 and alive == [0, 0, 0, 0]

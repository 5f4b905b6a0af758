"""Plan stability: a bootstrap over the calibration windows, from per-window statistics.

The specification tests build per-window sums by hand, so which plan each resample must choose is
known from its counts alone; the frequencies and the agreement are then checked exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hand_matrices import sym

from lorp_lightning import ParameterError, plan_stability, select_layers
from lorp_lightning.locality import angular_similarity
from lorp_lightning.search import PlanLoss, ResampledPlanLoss
from lorp_lightning.stability import MAX_RESAMPLES, resample_counts
from lorp_lightning.stats import LayerSimilarity, LayerStats, WindowStats, collect_layer_stats

# Two kinds of window over N = 6 blocks (7 hidden states), each of 100 tokens. In kind A the states
# entering blocks 2 and 3 are most alike, so ShortGPT's Block Influence 1 - S[l, l+1] is lowest at
# block 2; in kind B at block 4. Binary fractions, so every weighted sum below is exact.
A = sym(7, {(2, 3): 0.875, (4, 5): 0.5}, default=0.5)
B = sym(7, {(2, 3): 0.5, (4, 5): 0.75}, default=0.5)
TOKENS = 100.0


def hand_stats(kinds: str) -> LayerStats:
    """Statistics whose per-window sums are G_w = 100 S_w for the windows of ``kinds`` ("AB" ...)."""
    grams = torch.stack([torch.from_numpy(TOKENS * (A if kind == "A" else B)) for kind in kinds])
    per_window = WindowStats(
        gram=grams,
        last_token_gram=grams / TOKENS,
        num_tokens=torch.full((len(kinds),), TOKENS, dtype=torch.float64),
        norm_sum=torch.ones(len(kinds), 7, dtype=torch.float64) * TOKENS,
    )
    full = per_window.combine()
    full.per_window = per_window
    return full


@pytest.fixture(scope="module")
def wiki_windows(smollm2):
    """Four real calibration windows of 64 tokens of the bundled wiki."""
    from lorp_lightning.data import calibration_windows

    return calibration_windows(smollm2[1], "wiki", window=64, num_windows=4)


def test_resample_counts_draw_each_resample_w_windows_with_replacement_repeatably():
    counts = resample_counts(8, 50, seed=3)
    assert counts.shape == (50, 8) and counts.dtype == torch.int64
    assert bool((counts >= 0).all()) and counts.sum(dim=1).tolist() == [8] * 50
    assert torch.equal(counts, resample_counts(8, 50, seed=3))
    assert not torch.equal(counts, resample_counts(8, 50, seed=4))
    assert bool((counts.max(dim=1).values > 1).any())  # with replacement: some window drawn twice


def test_combine_weights_each_window_by_its_count():
    stats = hand_stats("AB")
    one_a_two_b = stats.per_window.combine(torch.tensor([1, 2]))
    np.testing.assert_allclose(one_a_two_b.similarity.numpy(), (A + 2 * B) / 3, rtol=0, atol=1e-15)
    assert one_a_two_b.num_tokens == 300 and one_a_two_b.num_sequences == 3
    np.testing.assert_allclose(stats.per_window.combine([0, 5]).similarity.numpy(), B, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="counts must be 2 non-negative numbers"):
        stats.per_window.combine([1, 1, 1])
    with pytest.raises(ValueError, match="no window"):
        stats.per_window.combine([0, 0])


def test_a_transform_is_applied_to_the_full_data_and_to_every_resample_before_selecting():
    stats = hand_stats("ABBB")  # plain: shortgpt removes block 4 (kind B is the majority)
    only_a = stats.per_window.combine([1, 0, 0, 0])  # what the transform returns: kind A, whose block is 2
    report = plan_stability(stats, 1, "shortgpt", 30, transform=lambda resampled: only_a)
    assert report.plan == [2] and report.plans == [[2]] * 30
    assert plan_stability(stats, 1, "shortgpt", 30).plan == [4]


def test_take_and_concat_give_the_statistics_of_those_windows_with_their_own_sums():
    stats = hand_stats("AABB")
    first_three = stats.per_window.take(slice(0, 3))
    np.testing.assert_allclose(first_three.similarity.numpy(), (2 * A + B) / 3, rtol=0, atol=1e-15)
    assert first_three.per_window.num_windows == 3 and first_three.num_tokens == 300
    assert stats.per_window.take([3]).similarity.equal(stats.per_window.combine([0, 0, 0, 1]).similarity)
    mix = WindowStats.concat([hand_stats("A").per_window, hand_stats("BBB").per_window])
    np.testing.assert_allclose(mix.similarity.numpy(), (A + 3 * B) / 4, rtol=0, atol=1e-15)
    assert mix.per_window.num_windows == 4
    assert plan_stability(mix, 1, "shortgpt", 20) == plan_stability(hand_stats("ABBB"), 1, "shortgpt", 20)
    with pytest.raises(ValueError, match="none of the 4 windows"):
        stats.per_window.take(slice(4, 8))


def test_angular_similarity_is_one_minus_the_angle_over_pi():
    S = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, -1.0], [0.0, -1.0, 1.0]])
    np.testing.assert_allclose(angular_similarity(S), [[1, 2 / 3, 0.5], [2 / 3, 1, 0], [0.5, 0, 1]], atol=1e-15)
    near = angular_similarity(np.array([[1.0, 0.99], [0.99, 1.0]]))[0, 1]
    assert near < 0.99  # spread out near 1: cos 0.99 is 8.1 degrees


def test_removal_frequency_and_agreement_are_those_the_counts_decide():
    kinds = "ABBB"  # no draw of 4 windows ties: 3a = 2b has no solution with a + b = 4
    stats = hand_stats(kinds)
    full_plan = select_layers(stats, 1, method="shortgpt")
    assert full_plan.pruned == [4]  # B is the majority
    report = plan_stability(stats, 1, method="shortgpt", resamples=200, resample_seed=7)

    # The combined S[2, 3] - S[4, 5] is (0.375 a - 0.25 b) / (a + b) for a windows of kind A and b of kind B:
    # block 2 is removed exactly when 0.375 a > 0.25 b.
    counts = resample_counts(len(kinds), 200, seed=7)
    a = counts[:, [i for i, k in enumerate(kinds) if k == "A"]].sum(dim=1)
    removes_2 = int((0.375 * a > 0.25 * (len(kinds) - a)).sum())
    assert 0 < removes_2 < 200  # the draws do disagree
    expected = [0.0] * 6
    expected[2], expected[4] = removes_2 / 200, (200 - removes_2) / 200
    assert report.removal_frequency == expected
    assert report.agreement == (200 - removes_2) / 200
    assert report.mean_overlap == report.agreement  # one block: overlap is agreement
    assert report.plan == [4] and report.resamples == 200 and report.window_passes == 0
    summary = report.summary()
    assert {tuple(p["pruned"]): p["resamples"] for p in summary["plans"]} == {(4,): 200 - removes_2, (2,): removes_2}
    json.dumps(summary)  # plain values


def test_windows_that_all_agree_give_the_full_data_plan_every_time():
    stats = hand_stats("AAAA")
    report = plan_stability(stats, 2, method="lorp", resamples=30)
    full = select_layers(stats, 2, method="lorp")
    assert report.plans == [full.pruned] * 30
    assert report.agreement == 1.0 and report.mean_overlap == 1.0
    assert report.removal_frequency == [1.0 if b in full.pruned else 0.0 for b in range(6)]
    assert report.rls == [full.rls] * 30 and report.num_clusters == [full.num_clusters] * 30


def test_mean_overlap_counts_the_full_plans_blocks_a_resample_keeps():
    from lorp_lightning.stability import Stability

    report = Stability("x", num_layers=6, num_prune=2, plan=[1, 2], plans=[[1, 2], [1, 3], [4, 5], [2, 1]])
    assert report.mean_overlap == (2 + 1 + 0 + 2) / (4 * 2)
    assert report.agreement == 0.25  # [2, 1] is not a sorted plan as select_layers gives them
    assert report.removal_frequency == [0.0, 0.75, 0.5, 0.25, 0.25, 0.25]


def test_per_window_statistics_sum_to_those_of_the_plain_pass():
    torch.manual_seed(0)
    states = torch.randn(4, 3, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]])
    plain, windowed = LayerSimilarity(3), LayerSimilarity(3, per_window=True)
    plain.update(states, mask)
    windowed.update(states[:, :2], mask[:2])  # two batches: the windows keep their order
    windowed.update(states[:, 2:], mask[2:])
    a, b = plain.compute(), windowed.compute()
    assert a.per_window is None and b.per_window.num_windows == 3
    assert b.per_window.num_tokens.tolist() == [6.0, 3.0, 4.0]
    for x, y in ((a, b), (a, b.per_window.combine())):
        torch.testing.assert_close(x.similarity, y.similarity, atol=1e-12, rtol=0)
        torch.testing.assert_close(x.last_token_similarity, y.last_token_similarity, atol=1e-12, rtol=0)
        torch.testing.assert_close(x.norms, y.norms, atol=1e-9, rtol=1e-12)
        assert (x.num_tokens, x.num_sequences) == (y.num_tokens, y.num_sequences)


def test_a_resample_is_the_pass_over_the_drawn_windows(smollm2, wiki_windows):
    """Statistics of windows (0, 0, 2) from the per-window sums equal one pass over those windows."""
    model, windows = smollm2[0], wiki_windows[:3]
    stats = collect_layer_stats(model, windows.split(2), progress=False, per_window=True)
    drawn = collect_layer_stats(model, [windows[[0, 0, 2]]], progress=False)
    resampled = stats.per_window.combine([2, 0, 1])
    torch.testing.assert_close(resampled.similarity, drawn.similarity, atol=1e-9, rtol=0)
    torch.testing.assert_close(resampled.norms, drawn.norms, atol=1e-6, rtol=1e-9)
    assert resampled.num_tokens == drawn.num_tokens


def test_per_window_statistics_save_and_load_exactly(tmp_path):
    stats = hand_stats("ABA")
    stats.save(tmp_path / "stats.pt")
    loaded = LayerStats.load(tmp_path / "stats.pt")
    assert torch.equal(loaded.per_window.gram, stats.per_window.gram)
    assert torch.equal(loaded.per_window.num_tokens, stats.per_window.num_tokens)
    assert plan_stability(loaded, 1, "shortgpt", 10) == plan_stability(stats, 1, "shortgpt", 10)


@pytest.mark.parametrize("resamples", [0, -3, MAX_RESAMPLES + 1, 2.5, "20", True])
def test_a_number_of_resamples_out_of_range_names_the_value(resamples):
    with pytest.raises(ParameterError, match=f"resamples must be an int from 1 to 10,000, got {resamples!r}"):
        plan_stability(hand_stats("AB"), 1, "shortgpt", resamples)


def test_statistics_without_per_window_sums_and_rounds_are_refused():
    stats = hand_stats("AB")
    with pytest.raises(ParameterError, match=r"per_window=True"):
        plan_stability(stats.per_window.combine(), 1, "shortgpt")
    with pytest.raises(ParameterError, match="one-shot plans; got rounds=2"):
        plan_stability(stats, 2, "lorp", rounds=2)


def test_a_searched_method_plans_each_resample_as_on_its_drawn_check_windows(smollm2, wiki_windows):
    model, windows = smollm2[0], wiki_windows
    stats = collect_layer_stats(model, [windows], progress=False, per_window=True)
    settings = dict(model=model, check_tokens=None)
    report = plan_stability(stats, 1, "ppl", resamples=3, windows=windows, check_windows=3, **settings)
    full = select_layers(stats, 1, method="ppl", windows=windows, check_windows=3, **settings)
    statistics_draws, check_draws = resample_counts(len(windows), 3, 0), resample_counts(3, 3, 1)
    for b in range(3):  # resample b: its statistics, and the check windows repeated as often as drawn
        drawn = windows[:3].repeat_interleave(check_draws[b], dim=0)
        alone = select_layers(stats.per_window.combine(statistics_draws[b]), 1, method="ppl", windows=drawn, **settings)
        assert report.plans[b] == alone.pruned
    assert report.plan == full.pruned and report.rls is None


def test_resamples_share_the_check_windows_losses_of_every_plan(smollm2, wiki_windows):
    model, windows = smollm2[0], wiki_windows
    stats = collect_layer_stats(model, [windows], progress=False, per_window=True)
    full = select_layers(stats, 1, method="ppl", model=model, windows=windows, check_windows=2, check_tokens=None)
    report = plan_stability(
        stats, 1, "ppl", resamples=4, model=model, windows=windows, check_windows=2, check_tokens=None, plan=full
    )
    # ppl checks the same one-block plans in every resample: they run once, for all four
    assert report.window_passes == full.cost["check_windows"]
    again = plan_stability(stats, 1, "ppl", resamples=4, model=model, windows=windows, check_windows=2, check_tokens=None)
    assert again.window_passes == 0  # the full-data selection here ran them already
    assert again.plans == report.plans


def test_a_resampled_plan_loss_weighs_each_window_by_its_count(smollm2, wiki_windows):
    model, windows = smollm2[0], wiki_windows[:3, :64]
    base = PlanLoss(model, windows)
    resampled = ResampledPlanLoss(base, [2, 0, 1])
    repeated = PlanLoss(model, windows[[0, 0, 2]])
    assert resampled([5]) == pytest.approx(repeated([5]), rel=1e-5)
    assert resampled.below([5], repeated([5]) + 1e-3) and not resampled.below([5], repeated([5]) - 1e-3)
    assert resampled.plans_checked == 1 and len(base.window_losses) == 1
    with pytest.raises(ValueError, match="each of the 3 windows a count >= 0"):
        ResampledPlanLoss(base, [1, 1])


def test_a_calibration_text_too_short_for_the_windows_asked_says_how_many_it_holds(smollm2):
    from lorp_lightning.data import calibration_windows

    with pytest.raises(
        ParameterError,
        match=r"num_windows=10000 but the calibration split of text='tinystories' has only (\d+) windows of 512 tokens; ask for at most \1",
    ):
        calibration_windows(smollm2[1], "tinystories", window=512, num_windows=10_000)

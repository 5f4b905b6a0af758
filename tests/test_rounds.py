"""Pruning in rounds, specified: the budget split into rounds, each round a one-shot selection on the model the
rounds before it pruned and compensated, with its statistics collected again; the rounds compose into one plan
whose single pruning gives the model the rounds gave one after another; the user's model is left exactly as it was.

The reference is the rounds run by hand here, with the public functions: ``select_layers`` one shot,
``prune_layers`` on a copy, ``collect_layer_stats`` on that copy, and the next round.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_compensation import logits_with_stream_scaled, tiny
from test_surgery import VOCAB, build

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.methods import select_layers
from lorp_lightning.rounds import compose_rounds, round_sizes
from lorp_lightning.search import PlanLoss
from lorp_lightning.selection import PruningPlan
from lorp_lightning.stats import collect_layer_stats
from lorp_lightning.surgery import prune_layers, pruning_record

WINDOWS = torch.randint(3, VOCAB - 3, (4, 16), generator=torch.Generator().manual_seed(3))


# --------------------------------------------------------------------------- the mathematics


@pytest.mark.parametrize(
    "num_prune, rounds, sizes", [(7, 3, [3, 2, 2]), (6, 3, [2, 2, 2]), (4, 4, [1, 1, 1, 1]), (5, 1, [5]), (3, 2, [2, 1])]
)
def test_the_budget_is_split_as_evenly_as_possible_the_larger_parts_first(num_prune, rounds, sizes):
    assert round_sizes(num_prune, rounds) == sizes


@pytest.mark.parametrize("rounds", [0, 4])
def test_more_rounds_than_blocks_or_none_at_all_is_refused_by_name(rounds):
    with pytest.raises(ValueError, match=rf"rounds must be between 1 and the 3 blocks to prune, got rounds={rounds}"):
        round_sizes(3, rounds)


def test_rounds_compose_into_one_plan_in_the_original_numbering():
    # 8 blocks. Round 1 removes 2 and 3: block 4 follows the gap. Round 2 (blocks 0 1 4 5 6 7) removes its 2 and 4,
    # original 4 and 6: original 4's factor moves to 5, the next kept block, where it meets round 2's own; 7 follows 6.
    assert compose_rounds(8, [([2, 3], {2: 2.0}), ([2, 4], {3: 1.5, 5: 0.5})]) == ([2, 3, 4, 6], {5: 3.0, 7: 0.5})
    # a factor whose block a later round removes with every block after it is dropped: no block writes after it
    assert compose_rounds(6, [([2], {2: 2.0}), ([2, 3, 4], {})]) == ([2, 3, 4, 5], {})
    assert compose_rounds(6, [([1, 2], {}), ([1], {})]) == ([1, 2, 3], {})  # without compensation: the union


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "qwen2"])
def test_the_composed_plan_folds_into_the_weights_the_rounds_folded_one_after_another(family):
    rounds = [([1], {2: 1.75}), ([2], {3: 0.625})]  # round 2 removes original 3: the factors land on 2 and 4
    stepwise = tiny(family)
    for blocks, factors in rounds:
        prune_layers(stepwise, blocks, compensate=factors, inplace=True)
    pruned, factors = compose_rounds(6, rounds)
    assert (pruned, factors) == ([1, 3], {2: 1.75, 4: 0.625})
    at_once = prune_layers(tiny(family), pruned, compensate=factors)
    got, expected = logits_with_stream_scaled(at_once, {}), logits_with_stream_scaled(stepwise, {})
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- select_layers(..., rounds=R)


def by_hand(method: str, k: int, sizes: list[int], compensate: bool):
    """The rounds run with the public functions: one-shot selections, each on a pruned copy of the one before.
    Returns each round's blocks (original numbering), the composed plan and factors, the model, each round's cost."""
    model = build("llama")
    stats = collect_layer_stats(model, WINDOWS.split(2), progress=False)
    original = list(range(6))
    steps, removed, costs = [], [], []
    for r, size in enumerate(sizes):
        if r:
            stats = collect_layer_stats(model, WINDOWS.split(4), progress=False)
        protect = [original.index(0), original.index(5)]
        plan = select_layers(stats, size, method=method, protect=protect, model=model, windows=WINDOWS, compensate=compensate)
        factors = plan.factors
        steps.append((plan.pruned, factors))
        removed.append([original[b] for b in plan.pruned])
        costs.append(plan.cost)
        model = prune_layers(model, plan)
        original = [b for i, b in enumerate(original) if i not in plan.pruned]
    return removed, compose_rounds(6, steps), model, costs


@pytest.fixture(scope="module")
def chosen():
    model = build("llama")
    stats = collect_layer_stats(model, WINDOWS.split(2), progress=False)
    before = copy.deepcopy(model.state_dict())
    plan = select_layers(stats, 3, method="lorp_search", model=model, windows=WINDOWS, compensate=True, rounds=2)
    return model, stats, before, plan


def test_select_layers_in_rounds_chooses_what_the_rounds_run_by_hand_choose(chosen):
    _, _, _, plan = chosen
    removed, (pruned, factors), _, _ = by_hand("lorp_search", 3, [2, 1], compensate=True)
    assert [r["pruned"] for r in plan.rounds] == removed
    assert plan.pruned == pruned == sorted(sum(removed, []))
    assert plan.compensation["composed"] == [{"block": b, "factor": f} for b, f in sorted(factors.items())]
    assert [r["num_layers"] for r in plan.rounds] == [6, 4]


def test_the_model_is_left_exactly_as_it_was_by_the_rounds(chosen):
    model, _, before, _ = chosen
    assert len(decoder_layers(model)) == 6 and model.config.num_hidden_layers == 6
    assert pruning_record(model) is None
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == list(range(6))


def test_the_plan_of_the_rounds_prunes_the_model_the_rounds_left(chosen):
    model, _, _, plan = chosen
    _, _, stepwise, _ = by_hand("lorp_search", 3, [2, 1], compensate=True)
    composed = {f["block"]: f["factor"] for f in plan.compensation["composed"]}
    pruned = prune_layers(model, plan.pruned, compensate=composed, inplace=False)  # one fold of the composed factors
    got, expected = logits_with_stream_scaled(pruned, {}), logits_with_stream_scaled(stepwise, {})
    scale = expected.abs().max()
    torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-5)
    last = plan.rounds[-1]["compensation"]
    best = min(t["loss"] for t in last["tried"])  # the last round's loss, on the model the first round left
    assert plan.compensation["check"]["compensated"] == pytest.approx(best, rel=1e-5)


def test_the_composed_factors_are_kept_only_where_they_lower_the_check_loss_of_the_plan(chosen):
    model, _, _, plan = chosen
    checks = PlanLoss(model, WINDOWS)  # select_layers checks all 4 windows (fewer than 8 given), every token scored
    check, composed = plan.compensation["check"], {f["block"]: f["factor"] for f in plan.compensation["composed"]}
    assert check["plain"] == pytest.approx(checks(plan.pruned), rel=1e-6)
    assert check["compensated"] == pytest.approx(checks.compensated(plan.pruned, composed), rel=1e-6)
    kept = check["compensated"] < check["plain"]
    assert plan.factors == (composed if kept else {b: 1.0 for b in composed})
    assert checks.compensated(plan.pruned, plan.factors) <= checks(plan.pruned) * (1 + 1e-6)
    assert ("did not lower the check loss: factors 1" in str(plan)) == (not kept)


def test_the_plan_of_the_rounds_survives_json_and_says_its_rounds(chosen):
    _, _, _, plan = chosen
    assert PruningPlan.from_json(plan.to_json()) == plan
    text = str(plan)
    assert "in 2 rounds " + ", ".join(str(r["pruned"]) for r in plan.rounds) in text
    assert "compensated, strengths " + "/".join(f"{r['compensation']['strength']:g}" for r in plan.rounds) in text


def test_the_cost_of_the_rounds_adds_each_rounds_checks_and_the_statistics_collected_again(chosen):
    _, _, _, plan = chosen
    *_, costs = by_hand("lorp_search", 3, [2, 1], compensate=True)
    assert plan.cost["statistics_windows"] == 4 + 4  # the given statistics, and one more pass over the 4 windows
    final = {"check_windows": plan.compensation["check_windows"], "plans_checked": 2}  # the composed factors against none
    assert final["check_windows"] == 3 * 4  # the two plans and the dense prefix they start from, 4 windows each
    for key in ("check_windows", "plans_checked"):  # each round's checks, compensation's included, and the final two
        assert plan.cost[key] == sum(cost[key] for cost in costs) + final[key]


def test_shared_checks_serve_the_first_round_and_the_later_rounds_check_windows_of_the_same_shape(chosen):
    model, stats, _, _ = chosen
    shared = PlanLoss(model, WINDOWS[:2, :12], score_last=None)
    plan = select_layers(
        stats, 3, method="lorp_search", model=model, windows=WINDOWS, compensate=True, rounds=2, shared_checks=shared
    )
    alone = select_layers(
        stats,
        3,
        method="lorp_search",
        model=model,
        windows=WINDOWS,
        compensate=True,
        rounds=2,
        check_windows=2,
        check_tokens=12,
        score_last=None,
    )
    assert plan.rounds == alone.rounds and plan == alone  # every round's tried losses too


def test_one_round_is_the_one_shot_selection(chosen):
    model, stats, _, _ = chosen
    once = select_layers(stats, 3, method="lorp_search", model=model, windows=WINDOWS, compensate=True, rounds=1)
    plain = select_layers(stats, 3, method="lorp_search", model=model, windows=WINDOWS, compensate=True)
    assert once == plain and once.rounds is None


def test_a_method_of_the_model_alone_without_compensation_collects_no_statistics_between_rounds():
    model = build("llama")
    plan = select_layers(None, 2, method="sleb", model=model, windows=WINDOWS, rounds=2)
    removed, (pruned, factors), _, _ = by_hand("sleb", 2, [1, 1], compensate=False)
    assert [r["pruned"] for r in plan.rounds] == removed and plan.pruned == pruned and factors == {}
    assert plan.cost["statistics_windows"] == 0 and plan.compensation is None


def test_a_statistics_method_in_rounds_reads_statistics_collected_again():
    model = build("llama")
    stats = collect_layer_stats(model, WINDOWS.split(2), progress=False)
    plan = select_layers(stats, 2, method="shortgpt", model=model, windows=WINDOWS, rounds=2)
    removed, *_ = by_hand("shortgpt", 2, [1, 1], compensate=False)
    assert [r["pruned"] for r in plan.rounds] == removed
    assert plan.cost["statistics_windows"] == 8


@pytest.mark.parametrize(
    "rounds, message",
    [
        (0, r"rounds must be a positive int, got rounds=0"),
        (1.5, r"rounds must be a positive int, got rounds=1.5"),
        (True, r"rounds must be a positive int, got rounds=True"),
        (4, r"rounds must be between 1 and the 3 blocks to prune, got rounds=4"),
    ],
)
def test_bad_rounds_are_refused_by_name_before_any_work(chosen, rounds, message):
    model, stats, _, _ = chosen
    with pytest.raises(ValueError, match=message):
        select_layers(stats, 3, method="lorp_search", model=model, windows=WINDOWS, rounds=rounds)


def test_rounds_need_the_model_and_the_calibration_windows(chosen):
    _, stats, _, _ = chosen
    with pytest.raises(
        ValueError, match=r"rounds=2 collects the statistics again on the partly pruned model: pass model= and windows="
    ):
        select_layers(stats, 3, method="shortgpt", rounds=2)

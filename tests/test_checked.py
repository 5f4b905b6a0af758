"""Specifications of lorp_checked: candidate plans from the locality analysis, checked on the
calibration loss, on the real bundled SmolLM2-135M (float32) and real calibration text.

The reference for every candidate's loss is computed independently: a pruned deep copy of the
model (prune_layers, inplace=False) and its mean next-token loss from the logits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lorp_lightning.assets import load_text
from lorp_lightning.evaluation import token_windows
from lorp_lightning.methods import select_checked, select_layers
from lorp_lightning.search import calibration_loss, candidate_plans
from lorp_lightning.selection import PruningPlan
from lorp_lightning.stats import collect_layer_stats
from lorp_lightning.surgery import prune_layers, pruning_record


@pytest.fixture(scope="module")
def calibration(smollm2):
    model, tokenizer = smollm2
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=64, max_windows=6)
    return windows, collect_layer_stats(model, windows.split(2), progress=False)


@torch.no_grad()
def reference_loss(model, blocks, windows) -> float:
    pruned = prune_layers(model, blocks, inplace=False)
    losses = []
    for w in windows:
        logits = pruned(w.unsqueeze(0), use_cache=False).logits[0, :-1].float()
        losses.append(float(F.cross_entropy(logits, w[1:])))
    return sum(losses) / len(losses)


def test_the_chosen_plan_is_the_candidate_with_the_lowest_calibration_loss(smollm2, calibration):
    model, _ = smollm2
    windows, stats = calibration
    plan = select_checked(model, windows, 7, stats=stats, check_windows=2, progress=False)
    expected = candidate_plans(stats, 7)
    assert [c["pruned"] for c in plan.candidates] == [c["pruned"] for c in expected]
    losses = [reference_loss(model, c["pruned"], windows[:2]) for c in expected]
    for candidate, loss in zip(plan.candidates, losses, strict=True):
        assert candidate["loss"] == pytest.approx(loss, abs=1e-4)
    assert plan.pruned == expected[min(range(len(losses)), key=losses.__getitem__)]["pruned"]
    assert plan.method == "lorp_checked" and len(plan.pruned) == 7 and 0 not in plan.pruned and 29 not in plan.pruned
    faithful = select_layers(stats, 7, method="lorp")
    assert (plan.rls, plan.num_clusters, plan.labels) == (faithful.rls, faithful.num_clusters, faithful.labels)
    # the cost: the 6 windows of the statistics, and 2 windows per candidate plus one dense pass over them
    assert plan.cost["statistics_windows"] == 6 and plan.cost["plans_checked"] == len(expected)
    assert plan.cost["check_windows"] == 2 * len(expected) + 2


def test_the_model_is_left_exactly_as_it_was(smollm2, calibration):
    model, _ = smollm2
    windows, stats = calibration
    config, state = model.config.to_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    before = calibration_loss(model, windows[:1])
    select_checked(model, windows, 3, stats=stats, check_windows=1, progress=False)
    assert model.config.to_dict() == config and pruning_record(model) is None
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert calibration_loss(model, windows[:1]) == before


def test_the_plan_prunes_and_round_trips_through_json(smollm2, calibration):
    model, _ = smollm2
    windows, stats = calibration
    plan = select_checked(model, windows, 3, stats=stats, check_windows=1, progress=False)
    again = PruningPlan.from_json(plan.to_json())
    assert again == plan
    pruned = prune_layers(model, plan, inplace=False)
    assert pruning_record(pruned)["steps"][0]["method"] == "lorp_checked"
    assert math.isfinite(calibration_loss(pruned, windows[:1]))


def test_calibration_loss_is_the_mean_next_token_cross_entropy(smollm2, calibration):
    model, _ = smollm2
    windows, _ = calibration
    expected = sum(reference_loss_dense(model, w) for w in windows[:3]) / 3
    assert calibration_loss(model, windows[:3]) == pytest.approx(expected, abs=1e-5)


@torch.no_grad()
def reference_loss_dense(model, w) -> float:
    logits = model(w.unsqueeze(0), use_cache=False).logits[0, :-1].float()
    return float(F.cross_entropy(logits, w[1:]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(check_windows=0), "check_windows must be an int between 1 and the 6 windows given, got 0"),
        (dict(check_windows=7), "check_windows must be an int between 1 and the 6 windows given, got 7"),
        (dict(num_prune=0), "num_prune must be an int >= 1"),
        (dict(num_prune=0.99), "exceeds the 28 unprotected blocks"),
    ],
)
def test_bad_arguments_name_the_parameter_and_the_value(smollm2, calibration, kwargs, message):
    model, _ = smollm2
    windows, stats = calibration
    kwargs = {"num_prune": 3, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        select_checked(model, windows, stats=stats, progress=False, **kwargs)


def test_bad_windows_and_stats_of_another_depth_are_rejected(smollm2, calibration):
    model, _ = smollm2
    windows, stats = calibration
    with pytest.raises(ValueError, match="integer token ids"):
        select_checked(model, windows.float(), 3, stats=stats, progress=False)
    with pytest.raises(ValueError, match="same length"):
        select_checked(model, [windows[0], windows[1][:10]], 3, stats=stats, progress=False)
    pruned = prune_layers(model, [5], inplace=False)
    with pytest.raises(ValueError, match="stats describe 30 blocks but the model has 29"):
        select_checked(pruned, windows, 3, stats=stats, progress=False)


def test_the_old_import_path_still_gives_select_checked_with_a_deprecation_warning():
    import importlib
    import sys

    import lorp_lightning

    sys.modules.pop("lorp_lightning.checked", None)
    with pytest.warns(DeprecationWarning, match="import select_checked from lorp_lightning"):
        checked = importlib.import_module("lorp_lightning.checked")
    assert checked.select_checked is select_checked is lorp_lightning.select_checked
    assert checked.calibration_loss is calibration_loss and checked.METHOD == "lorp_checked"

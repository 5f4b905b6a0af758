"""Two processes under DDP gather the same statistics as one process over all batches, and prune alike.

The DDP run is tests/ddp_worker.py, started as a script in a subprocess, so that Lightning's
``strategy="ddp"`` launches the second process itself (it re-runs the script with LOCAL_RANK=1),
exactly as it would in a user's training script; pytest's own process is never forked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lorp_lightning.methods import select_layers
from lorp_lightning.stats import collect_layer_stats

WORKER = Path(__file__).with_name("ddp_worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ddp_run(smollm2, tmp_path_factory):
    """Runs the worker once; returns (results of rank 0, results of rank 1, tokenizer)."""
    _, tokenizer = smollm2
    out = tmp_path_factory.mktemp("ddp")
    tokenizer.save_pretrained(out / "tokenizer")
    launcher_variables = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_variables}
    run = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(out / "tokenizer")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, f"the DDP worker failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    results = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return results[0], results[1], tokenizer


def test_two_processes_each_validate_half_of_the_windows(ddp_run):
    rank0, rank1, tokenizer = ddp_run
    worker = load_worker()
    windows = worker.datamodule(tokenizer).windows("heldout").tolist()
    assert rank0["strategy"] == "DDPStrategy" and rank0["world_size"] == rank1["world_size"] == 2
    assert len(rank0["seen_windows"]) == len(rank1["seen_windows"]) == 2
    assert sorted(rank0["seen_windows"] + rank1["seen_windows"]) == sorted(windows)


def test_statistics_of_two_processes_equal_those_of_one_process_over_all_batches(ddp_run):
    rank0, rank1, tokenizer = ddp_run
    worker = load_worker()
    model = worker.tiny_llama(len(tokenizer))
    windows = worker.datamodule(tokenizer).windows("heldout")
    expected = collect_layer_stats(model, windows.split(1), progress=False)
    for result in (rank0, rank1):
        assert result["num_tokens"] == expected.num_tokens == 4 * 64
        assert result["num_sequences"] == expected.num_sequences == 4
        similarity = torch.tensor(result["similarity"], dtype=torch.float64)
        last = torch.tensor(result["last_token_similarity"], dtype=torch.float64)
        difference = (similarity - expected.similarity).abs().max().item()
        print(f"rank {result['rank']}: max |S_ddp - S_single| = {difference:.3g}")
        assert difference <= 1e-6
        torch.testing.assert_close(last, expected.last_token_similarity, atol=1e-6, rtol=0)
    assert rank0["similarity"] == rank1["similarity"]  # bit for bit: both ranks hold the synchronised sums


def test_both_processes_prune_the_blocks_select_layers_picks(ddp_run):
    rank0, rank1, tokenizer = ddp_run
    worker = load_worker()
    windows = worker.datamodule(tokenizer).windows("heldout")
    expected = select_layers(collect_layer_stats(worker.tiny_llama(len(tokenizer)), windows.split(1), progress=False), 0.25)
    assert rank0["plan"] == rank1["plan"]
    assert rank0["plan"]["pruned"] == expected.pruned and len(expected.pruned) == 2
    for result in (rank0, rank1):
        assert result["num_layers_after"] == worker.NUM_LAYERS - 2
        assert result["record"]["pruned_layers"] == expected.pruned


def test_pruning_inside_fit_under_ddp_keeps_both_processes_training_the_same_pruned_model(ddp_run):
    rank0, rank1, _ = ddp_run
    fit0, fit1 = rank0["fit"], rank1["fit"]
    assert fit0["pruned"] == fit1["pruned"] and len(fit0["pruned"]) == 2
    assert fit0["num_layers_after"] == fit1["num_layers_after"] == 6
    assert fit0["global_step"] == fit1["global_step"] == 4  # two steps before the pruning, two after
    assert fit0["optimizer_matches_model"] and fit1["optimizer_matches_model"]
    assert fit0["ddp_wraps_pruned_model"] and fit1["ddp_wraps_pruned_model"]
    assert fit0["optimizer_state_size"] == fit1["optimizer_state_size"] > 0
    # gradients were averaged over the two processes after the pruning: the weights agree
    assert fit0["parameter_sums"] == pytest.approx(fit1["parameter_sums"], rel=1e-6, abs=1e-9)


def test_both_processes_prune_each_step_of_a_schedule_alike_and_train_the_same_weights(ddp_run):
    rank0, rank1, _ = ddp_run
    schedule = rank0["schedule"]
    assert [len(p["pruned"]) for p in schedule["plans"]] == [1, 1] and len(schedule["pruned"]) == 2
    assert schedule["num_layers_after"] == load_worker().NUM_LAYERS - 2
    assert rank1["schedule"]["plans"] == schedule["plans"] and rank1["schedule"]["pruned"] == schedule["pruned"]
    assert schedule["optimizer_matches_model"] and rank1["schedule"]["optimizer_matches_model"]
    assert rank1["schedule"]["parameter_sums"] == pytest.approx(
        schedule["parameter_sums"], rel=1e-6, abs=1e-9
    )  # averaged gradients

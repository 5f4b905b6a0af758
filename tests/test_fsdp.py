"""Calibration under FSDP: two processes of a sharded model gather the statistics of one process over
all the batches, select the same plan, and are refused pruning in place, with what to do instead.

The runs are tests/fsdp_worker.py, started as a script in a subprocess, so that Lightning launches
the second process itself (it re-runs the script with LOCAL_RANK=1), as in a user's training
script; pytest's own process is never forked and starts no process group.

Two strategies:

- ``ModelParallelStrategy`` with FSDP 2's ``fully_shard`` runs on this CPU (gloo) and is tested
  here on every machine.
- ``FSDPStrategy`` (FSDP 1) needs GPUs: on a CPU-only machine Lightning refuses it, and the test
  skips with Lightning's own message, got by trying. On a machine with two or more CUDA GPUs the
  same test runs it there: ``python -m pytest tests/test_fsdp.py -o addopts=""``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks import LoRPPruneCallback
from lorp_lightning.methods import select_layers
from lorp_lightning.selection import PruningPlan
from lorp_lightning.stats import collect_layer_stats

WORKER = Path(__file__).with_name("fsdp_worker.py")
REFUSAL = "LoRPPruneCallback does not prune a model whose weights FSDP shards across processes"


def load_worker():
    spec = importlib.util.spec_from_file_location("fsdp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_worker(out: Path, strategy: str, accelerator: str) -> tuple[dict, dict]:
    """Runs the worker; returns what rank 0 and rank 1 wrote."""
    launcher_variables = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_variables}
    run = subprocess.run(
        [sys.executable, str(WORKER), str(out), strategy, accelerator], capture_output=True, text=True, timeout=600, env=env
    )
    assert run.returncode == 0, f"the FSDP worker failed:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    rank0, rank1 = (json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1))
    return rank0, rank1


def lightnings_answer_to_fsdp_on_cpu() -> str | None:
    """What Lightning says to FSDPStrategy on this machine's CPU: its error message, or None if it accepts it."""
    try:
        Trainer(
            accelerator="cpu",
            devices=2,
            strategy="fsdp",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
    except ValueError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def model_parallel_run(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("model_parallel"), "model_parallel", "cpu")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    if torch.cuda.device_count() >= 2:
        accelerator = "gpu"
    else:
        refusal = lightnings_answer_to_fsdp_on_cpu()
        if refusal is not None:
            pytest.skip(f"{torch.cuda.device_count()} CUDA GPUs here, and Lightning refuses FSDPStrategy on CPU: {refusal}")
        accelerator = "cpu"
    return run_worker(tmp_path_factory.mktemp("fsdp"), "fsdp", accelerator)


RUNS = {"ModelParallelStrategy": "model_parallel_run", "FSDPStrategy": "fsdp_run"}


@pytest.fixture(params=list(RUNS))
def run(request):
    rank0, rank1 = request.getfixturevalue(RUNS[request.param])
    assert rank0["strategy"] == rank1["strategy"] == request.param
    return rank0, rank1


# --------------------------------------------------------------------------- the runs


def test_two_processes_each_predict_half_of_the_windows_on_a_sharded_model(run):
    rank0, rank1 = run
    worker = load_worker()
    windows = [row["input_ids"].tolist() for row in worker.rows()]
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert len(rank0["seen_windows"]) == len(rank1["seen_windows"]) == 4
    assert sorted(rank0["seen_windows"] + rank1["seen_windows"]) == sorted(windows)
    # each process holds a part of each block's weights, and the two parts make the whole block
    dense_block = sum(p.numel() for p in decoder_layers(worker.tiny_llama())[0].parameters())
    assert rank0["sharded"] and rank1["sharded"]
    assert rank0["block_weights_held"] < dense_block and rank1["block_weights_held"] < dense_block
    assert rank0["block_weights_held"] + rank1["block_weights_held"] == dense_block


def test_statistics_of_two_sharded_processes_equal_those_of_one_process_over_all_batches(run):
    rank0, rank1 = run
    worker = load_worker()
    expected = collect_layer_stats(worker.tiny_llama(), worker.loader(), progress=False)
    assert expected.num_tokens == 8 * 16 - 7 - 12 and expected.num_sequences == 8
    for result in (rank0, rank1):
        assert result["num_tokens"] == expected.num_tokens and result["num_sequences"] == expected.num_sequences
        similarity = torch.tensor(result["similarity"], dtype=torch.float64)
        last = torch.tensor(result["last_token_similarity"], dtype=torch.float64)
        difference = (similarity - expected.similarity).abs().max().item()
        print(f"rank {result['rank']}: max |S_fsdp - S_single| = {difference:.3g}")
        assert difference <= 1e-6
        torch.testing.assert_close(last, expected.last_token_similarity, atol=1e-6, rtol=0)
    assert rank0["similarity"] == rank1["similarity"]  # bit for bit: both ranks hold the synchronised sums


def test_both_processes_select_the_plan_one_process_selects(run):
    rank0, rank1 = run
    worker = load_worker()
    expected = select_layers(collect_layer_stats(worker.tiny_llama(), worker.loader(), progress=False), 0.25, method="lorp")
    plans = [PruningPlan.from_dict(result["plan"]) for result in (rank0, rank1)]
    assert plans[0].pruned == plans[1].pruned == expected.pruned and len(expected.pruned) == 2
    assert plans[0].labels == plans[1].labels == expected.labels


def test_pruning_in_place_is_refused_at_setup_and_on_a_sharded_model_which_stays_whole(run):
    rank0, rank1 = run
    for result in (rank0, rank1):
        assert result["setup_refusal"].startswith(f"{REFUSAL} (under {result['strategy']})")
        assert "LayerStatsCallback(stages='validation', model='backbone')" in result["setup_refusal"]
        assert "`lorp apply PLAN CHECKPOINT_DIR --out OUT` (lorp_lightning.prune_checkpoint)" in result["setup_refusal"]
        assert result["prune_refusal"].startswith(f"{REFUSAL} (found sharded when the pruning came)")
        assert result["num_layers_after"] == 8 and result["plan_after_refusals"] is None


def test_the_plan_selected_under_fsdp_prunes_the_checkpoint_on_disk(model_parallel_run, tmp_path):
    """What the refusal advises: the plan from the sharded run, applied to the model's checkpoint."""
    from transformers import AutoModelForCausalLM

    from lorp_lightning.checkpoint import prune_checkpoint

    rank0, _ = model_parallel_run
    worker = load_worker()
    dense = worker.tiny_llama()
    dense.save_pretrained(tmp_path / "dense")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(PruningPlan.from_dict(rank0["plan"]).to_json())
    prune_checkpoint(plan_file, tmp_path / "dense", tmp_path / "pruned")
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    kept = [decoder_layers(dense)[i] for i in rank0["plan"]["kept"]]
    assert len(decoder_layers(pruned)) == 6
    for block, original in zip(decoder_layers(pruned), kept, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), original.state_dict().values(), strict=True))


# --------------------------------------------------------------------------- in this process


@pytest.mark.parametrize("strategy", [FSDPStrategy(), ModelParallelStrategy()], ids=["FSDPStrategy", "ModelParallelStrategy"])
def test_the_prune_callback_refuses_a_sharding_strategy_at_setup_naming_it(strategy):
    trainer = SimpleNamespace(strategy=strategy, callbacks=[])  # the refusal reads the strategy, and nothing else
    callback = LoRPPruneCallback(0.25, model="backbone")
    with pytest.raises(
        ValueError,
        match=rf"^{REFUSAL} \(under {type(strategy).__name__}\).*select_layers\(stats_callback"
        r"\.stats, 0\.25, method='lorp_search'\)",
    ):
        callback.setup(trainer, None, "validate")

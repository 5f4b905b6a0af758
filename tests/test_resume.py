"""Resuming a killed healing: the run goes on from its last Lightning checkpoint to the result of a run never stopped.

``ShuffledLoader`` serves the batches of a seeded shuffling DataLoader and keeps its place; ``heal`` writes
checkpoints and resumes from them (a worker process, really killed with SIGKILL: tests/heal_worker.py);
``LoRPHealCallback`` resumes in a Trainer, also in the middle of a progressive prune-heal schedule.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_lightning import make_trainer, stories, tiny_llama
from test_schedule import SCHEDULE
from torch.utils.data import DataLoader

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks import LoRPHealCallback, LoRPPruneCallback
from lorp_lightning.cli import main
from lorp_lightning.data import ShuffledLoader
from lorp_lightning.healing import heal, healing_records
from lorp_lightning.module import LoRPModule

WORKER = Path(__file__).with_name("heal_worker.py")


# --------------------------------------------------------------------------- the loader


def batches(loader, epochs: int) -> list[list[int]]:
    """The batches of ``epochs`` epochs, taken as Lightning's loop takes them: len(loader) batches, then a new iter."""
    return [batch.tolist() for _ in range(epochs) for batch in itertools.islice(iter(loader), len(loader))]


def test_the_shuffled_loader_serves_the_batches_of_a_dataloader_shuffled_with_the_same_seed():
    data = torch.arange(10)
    expected = DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(5))
    assert batches(ShuffledLoader(data, batch_size=3, seed=5), 3) == batches(expected, 3)


@pytest.mark.parametrize("served", range(1, 12))
def test_the_shuffled_loader_resumed_from_its_state_serves_the_batches_that_came_next(served):
    data, epochs = torch.arange(10), 3  # 4 batches an epoch, the last of 1 window
    whole = batches(ShuffledLoader(data, batch_size=3, seed=5), epochs)
    loader, state = ShuffledLoader(data, batch_size=3, seed=5), None
    taken = 0
    for _ in range(epochs):
        for _ in itertools.islice(iter(loader), len(loader)):
            taken += 1
            if taken == served:  # as Lightning saves it after the step of the batch
                state = loader.state_dict()
    resumed = ShuffledLoader(data, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    rest = batches(resumed, epochs)[: len(whole) - served]
    assert rest == whole[served:]


# --------------------------------------------------------------------------- heal(), killed for real


def run_worker(tokenizer_dir: Path, checkpoints: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(WORKER), str(tokenizer_dir), str(checkpoints), str(out), *options],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


@pytest.fixture(scope="module")
def tokenizer_dir(smollm2, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    smollm2[1].save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run = run_worker(tokenizer_dir, out / "checkpoints", out / "result")
    assert run.returncode == 0, run.stderr[-4000:]
    return out / "result"


def load_result(out: Path) -> tuple[dict, list[dict]]:
    return torch.load(out / "weights.pt"), json.loads((out / "records.json").read_text())


@pytest.mark.parametrize(
    "every, kill_at, resumed_at",
    [(3, 5, 3), (4, 6, 4)],  # 4 steps an epoch: from the middle of the first epoch, and from its end
    ids=["mid-epoch", "epoch-end"],
)
def test_a_healing_killed_by_sigkill_resumes_from_its_last_checkpoint_to_the_uninterrupted_result(
    tokenizer_dir, uninterrupted, tmp_path, every, kill_at, resumed_at
):
    checkpoints = tmp_path / "checkpoints"
    killed = run_worker(tokenizer_dir, checkpoints, tmp_path / "never", "--every", str(every), "--kill-at", str(kill_at))
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "never").exists()
    assert (checkpoints / "last.ckpt").is_file()
    resumed = run_worker(tokenizer_dir, checkpoints, tmp_path / "result", "--every", str(every), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    weights, records = load_result(tmp_path / "result")
    expected_weights, expected_records = load_result(uninterrupted)
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)  # the same floats, to the bit
    (record,), (expected,) = records, expected_records
    assert record["resumed_at"] == [resumed_at] and expected["resumed_at"] == []
    for key in ("num_steps", "tokens", "initial_loss", "final_loss", "completed", "seed", "num_windows"):
        assert record[key] == expected[key], key


def test_heal_without_resume_refuses_to_overwrite_a_checkpoint_and_resume_needs_one(smollm2, tmp_path):
    model, tokenizer = smollm2
    (tmp_path / "last.ckpt").write_bytes(b"a checkpoint")
    with pytest.raises(FileExistsError, match=r"last.ckpt holds a checkpoint of an earlier run: resume=True goes on"):
        heal(model, tokenizer, checkpoint_dir=tmp_path, steps=1)
    with pytest.raises(FileNotFoundError, match=r"resume=True, but there is no checkpoint to resume from: .*nothing"):
        heal(model, tokenizer, checkpoint_dir=tmp_path / "nothing", resume=True, steps=1)
    with pytest.raises(ValueError, match=r"resume=True needs the checkpoint_dir"):
        heal(model, tokenizer, resume=True, steps=1)
    with pytest.raises(ValueError, match=r"checkpoint_every=0"):
        heal(model, tokenizer, checkpoint_dir=tmp_path, checkpoint_every=0, steps=1)
    assert (tmp_path / "last.ckpt").read_bytes() == b"a checkpoint"


# --------------------------------------------------------------------------- LoRPHealCallback in a Trainer


def prune_heal(tokenizer, root: Path, max_steps: int, ckpt_path: Path | None = None, every: int | None = None):
    """Progressive prune-heal: the schedule prunes at steps 2, 4 and 6, and LoRA heals between the steps."""
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3)
    prune = LoRPPruneCallback(SCHEDULE, method="shortgpt", verbose=False)
    heal_callback = LoRPHealCallback(rank=2, verbose=False)
    callbacks = [prune, heal_callback]
    if every is not None:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every, save_top_k=-1))
    trainer = make_trainer(
        root,
        callbacks=callbacks,
        max_steps=max_steps,
        val_check_interval=2,
        num_sanity_val_steps=0,
        enable_checkpointing=every is not None,
    )
    trainer.fit(module, datamodule=stories(tokenizer, num_calibration_windows=12), ckpt_path=ckpt_path)
    return module, prune


@pytest.mark.parametrize("checkpoint_step", [3, 5])
def test_a_progressive_prune_heal_resumed_in_the_middle_of_a_healing_ends_as_the_uninterrupted_run(
    tokenizer, tmp_path, checkpoint_step
):
    whole, whole_prune = prune_heal(tokenizer, tmp_path / "whole", max_steps=7)
    prune_heal(tokenizer, tmp_path / "first", max_steps=checkpoint_step, every=checkpoint_step)
    (checkpoint,) = (tmp_path / "first" / "ckpt").glob(f"*step={checkpoint_step}*.ckpt")  # during a healing
    assert any(".lora_A." in key for key in torch.load(checkpoint, weights_only=False)["state_dict"])
    resumed, resumed_prune = prune_heal(tokenizer, tmp_path / "resumed", max_steps=7, ckpt_path=checkpoint)

    assert resumed_prune.plans == whole_prune.plans and len(decoder_layers(resumed.model)) == 5
    weights, expected = resumed.model.state_dict(), whole.model.state_dict()
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    records, expected_records = healing_records(resumed.model), healing_records(whole.model)
    assert [r["num_steps"] for r in records] == [r["num_steps"] for r in expected_records] == [2, 2, 1]
    assert [r["final_loss"] for r in records] == [r["final_loss"] for r in expected_records]
    resumed_healing = (checkpoint_step - 2) // 2  # the healing the checkpoint was taken in
    assert [r["resumed_at"] for r in records] == [[checkpoint_step] if i == resumed_healing else [] for i in range(3)]


# --------------------------------------------------------------------------- lorp heal --resume

KILLED_CLI = """
import os, signal, sys
from lorp_lightning.callbacks.heal import LossCurve
from lorp_lightning.cli import main

record_loss = LossCurve.on_train_batch_end

def record_then_kill_at_step_5(self, trainer, *args):
    record_loss(self, trainer, *args)
    if trainer.global_step == 5:
        os.kill(os.getpid(), signal.SIGKILL)

LossCurve.on_train_batch_end = record_then_kill_at_step_5
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def tiny_pruned_dir(smollm2, tmp_path_factory) -> Path:
    """A tiny random Llama without blocks 2 and 5, saved with the SmolLM2 tokenizer as `lorp prune` saves a model."""
    worker = load_worker()
    directory = tmp_path_factory.mktemp("tiny") / "pruned"
    worker.pruned_model(len(smollm2[1])).save_pretrained(directory)
    smollm2[1].save_pretrained(directory)
    return directory


def load_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("heal_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lorp_heal_killed_goes_on_with_resume_and_says_so_in_its_report(tiny_pruned_dir, tmp_path, capsys):
    out = tmp_path / "healed"
    args = ["heal", str(tiny_pruned_dir), "--out", str(out), "--text", "tinystories", "--steps", "8", "--window", "32"]
    args += ["--batch-size", "2", "--rank", "2", "--checkpoint-every", "2", "--eval-windows", "0", "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_CLI, *args, "--quiet"], capture_output=True, text=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoint = tmp_path / "healed.checkpoints" / "last.ckpt"
    assert checkpoint.is_file() and not out.exists()

    assert main(args) == 2  # the checkpoint is not overwritten by a fresh run
    assert "healed.checkpoints/last.ckpt holds a checkpoint of a run of this command that did not end: pass --resume" in (
        capsys.readouterr().err
    )
    assert main([*args, "--resume", "--lr", "5e-4"]) == 2  # another run's checkpoint is not gone on from
    assert "the checkpoint's healing ran with other settings than this one: lr=0.001 there, 0.0005 here" in (
        capsys.readouterr().err
    )
    assert checkpoint.is_file() and not out.exists()
    assert main([*args, "--resume"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["healing"]["resumed_at"] == [4] and report["healing"]["num_steps"] == 8
    assert len(report["losses"]) == 8  # the whole curve: 4 steps from the checkpoint, 4 after it
    assert not (tmp_path / "healed.checkpoints").exists()  # the model is saved: the checkpoints are gone


def test_lorp_heal_resume_without_a_checkpoint_is_refused_before_anything_loads(tiny_pruned_dir, tmp_path, capsys):
    assert main(["heal", str(tiny_pruned_dir), "--out", str(tmp_path / "healed"), "--resume"]) == 2
    assert "--resume: there is no checkpoint to go on from" in capsys.readouterr().err
    assert not (tmp_path / "healed").exists()

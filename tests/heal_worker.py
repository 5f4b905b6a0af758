"""A healing run that can be killed and resumed, for tests/test_resume.py (not a test itself).

    python tests/heal_worker.py TOKENIZER_DIR CHECKPOINT_DIR OUT_DIR [--kill-at STEP] [--resume] [--every N]

It builds the same tiny random Llama every time (seeded), removes blocks 2 and 5, and heals it with
``heal(..., checkpoint_dir=CHECKPOINT_DIR)`` for ``STEPS`` steps on 8 windows of ``tinystories``
(4 steps to an epoch). With ``--kill-at STEP`` the process sends itself SIGKILL at the end of that
step, as a user's run is killed: nothing of Python's clean-up runs. Otherwise it writes the healed
weights to ``OUT_DIR/weights.pt`` and the healing records to ``OUT_DIR/records.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from lightning.pytorch import Callback
from test_lightning import tiny_llama
from transformers import AutoTokenizer, LlamaForCausalLM

from lorp_lightning.healing import heal, healing_records
from lorp_lightning.surgery import prune_layers

STEPS = 10
SETTINGS = dict(text="tinystories", steps=STEPS, window=32, num_windows=8, batch_size=2, rank=2, lr=1e-3, seed=3)


def pruned_model(vocab_size: int) -> LlamaForCausalLM:
    return prune_layers(tiny_llama(vocab_size), [2, 5])  # the tests' tiny random Llama of 8 blocks


class KillAt(Callback):
    """SIGKILL to this process at the end of training step ``step`` (before any checkpoint of that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer")
    parser.add_argument("checkpoints")
    parser.add_argument("out")
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--every", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = pruned_model(len(tokenizer))
    callbacks = [] if args.kill_at is None else [KillAt(args.kill_at)]
    heal(
        model,
        tokenizer,
        checkpoint_dir=args.checkpoints,
        checkpoint_every=args.every,
        resume=args.resume,
        trainer_options={"callbacks": callbacks},
        **SETTINGS,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    (out / "records.json").write_text(json.dumps(healing_records(model)))


if __name__ == "__main__":
    main()

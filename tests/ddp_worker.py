"""Two-process DDP run for tests/test_ddp.py (not a test itself).

    python tests/ddp_worker.py OUT_DIR TOKENIZER_DIR

Run as a script so that Lightning's ``strategy="ddp"`` can launch the second process the way it
does in a user's project: it runs this same command again with ``LOCAL_RANK=1``. Both processes
build the same tiny random Llama (seeded) and then

1. ``validate`` with ``LoRPPruneCallback(0.25, method="lorp")``: each process sees half of the held-out windows;
2. ``fit`` with ``LoRPPruneCallback(0.25, method="lorp")`` pruning at the first validation, then training on;
3. ``fit`` with the schedule ``LoRPPruneCallback([(2, 1), (4, 2)], method="lorp")``, training between its steps.

Each process writes what it saw and did to ``OUT_DIR/rank{rank}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks import LoRPPruneCallback
from lorp_lightning.data import TextDataModule
from lorp_lightning.module import LoRPModule
from lorp_lightning.surgery import pruning_record

NUM_LAYERS = 8


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
    )
    return LlamaForCausalLM(config).eval()


def datamodule(tokenizer) -> TextDataModule:
    """Four held-out windows of 64 tokens, one per batch: two batches for each of two processes."""
    return TextDataModule("wiki", tokenizer, window=64, num_calibration_windows=4, num_eval_windows=4, batch_size=1)


class SeenBatches(Callback):
    def __init__(self) -> None:
        self.validation: list[list[int]] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.validation.extend(batch["input_ids"].tolist())


def trainer(out: Path, callbacks: list, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
        **kwargs,
    )


def main(out: Path, tokenizer_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    # 1. statistics over two processes, and the pruning they agree on
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer)
    callback, seen = LoRPPruneCallback(0.25, method="lorp"), SeenBatches()
    validate = trainer(out, [callback, seen])
    validate.validate(module, datamodule=datamodule(tokenizer))
    rank = validate.global_rank
    result = {
        "rank": rank,
        "world_size": validate.world_size,
        "strategy": type(validate.strategy).__name__,
        "seen_windows": seen.validation,
        "similarity": callback.stats.similarity.tolist(),
        "last_token_similarity": callback.stats.last_token_similarity.tolist(),
        "num_tokens": callback.stats.num_tokens,
        "num_sequences": callback.stats.num_sequences,
        "plan": json.loads(callback.plan.to_json()),
        "num_layers_after": len(decoder_layers(module.model)),
        "record": pruning_record(module.model),
    }

    # 2. pruning in the middle of fit, then training on under DDP
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3)
    callback = LoRPPruneCallback(0.25, method="lorp")
    fit = trainer(out, [callback], max_epochs=2, limit_train_batches=2, num_sanity_val_steps=0)
    fit.fit(module, datamodule=datamodule(tokenizer))
    optimizer_ids = [id(p) for group in fit.optimizers[0].param_groups for p in group["params"]]
    result["fit"] = {
        "pruned": callback.plan.pruned,
        "num_layers_after": len(decoder_layers(module.model)),
        "global_step": fit.global_step,
        "optimizer_matches_model": sorted(optimizer_ids) == sorted(id(p) for p in module.model.parameters()),
        "optimizer_state_size": len(fit.optimizers[0].state),
        "parameter_sums": [p.detach().double().sum().item() for p in module.model.parameters()],
        "ddp_wraps_pruned_model": sum(1 for _ in fit.strategy.model.parameters()) == len(list(module.model.parameters())),
    }

    # 3. a schedule: 1 block at the validation end of epoch 0 (step 2), 2 at that of epoch 1 (step 4), training between
    module = LoRPModule(tiny_llama(len(tokenizer)), tokenizer, lr=1e-3)
    callback = LoRPPruneCallback([(2, 1), (4, 2)], method="lorp")
    scheduled = trainer(out, [callback], max_epochs=3, limit_train_batches=2, num_sanity_val_steps=0)
    scheduled.fit(module, datamodule=datamodule(tokenizer))
    optimizer_ids = [id(p) for group in scheduled.optimizers[0].param_groups for p in group["params"]]
    result["schedule"] = {
        "plans": [json.loads(p.to_json()) for p in callback.plans],
        "pruned": callback.plan.pruned,
        "num_layers_after": len(decoder_layers(module.model)),
        "optimizer_matches_model": sorted(optimizer_ids) == sorted(id(p) for p in module.model.parameters()),
        "parameter_sums": [p.detach().double().sum().item() for p in module.model.parameters()],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])

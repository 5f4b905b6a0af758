"""Two-process FSDP run for tests/test_fsdp.py (not a test itself).

    python tests/fsdp_worker.py OUT_DIR STRATEGY ACCELERATOR

STRATEGY is ``fsdp`` (Lightning's ``FSDPStrategy``, FSDP 1, each decoder block its own FSDP
unit) or ``model_parallel`` (Lightning's ``ModelParallelStrategy`` with two data-parallel
processes; the module's ``configure_model`` applies FSDP 2's ``fully_shard`` to each decoder
block, the decoder stack and the causal LM). ACCELERATOR is ``cpu`` (gloo) or ``gpu`` (nccl).
Run as a script so that Lightning launches the second process the way it does in a user's
project (it runs this same command again with ``LOCAL_RANK=1``). Both processes build the same
tiny random Llama (seeded) in ``configure_model``, at ``self.backbone``, and then

1. ``predict`` with ``LayerStatsCallback(model="backbone")``: each process sees half of the
   eight windows (padded dict batches), and the callback synchronises the statistics;
2. select a plan from those statistics (``select_layers``), on each process;
3. try ``LoRPPruneCallback`` under the same strategy (refused at setup), and its pruning step on
   the sharded model directly (refused too), the model unchanged.

Each process writes what it saw and did to ``OUT_DIR/rank{rank}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.callbacks import LayerStatsCallback, LoRPPruneCallback
from lorp_lightning.callbacks.location import _is_sharded
from lorp_lightning.methods import select_layers

NUM_LAYERS = 8
VOCAB = 128
WINDOW = 16
NUM_WINDOWS = 8
BATCH = 2


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    return LlamaForCausalLM(config).eval()


def rows() -> list[dict[str, torch.Tensor]]:
    """Eight windows of 16 tokens as dicts; windows 1 and 6 right-padded."""
    ids = torch.randint(3, VOCAB, (NUM_WINDOWS, WINDOW), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[6, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask, strict=True)]


def loader() -> DataLoader:
    return DataLoader(rows(), batch_size=BATCH)


class ShardedProject(LightningModule):
    """A user's module: the causal LM at ``self.backbone``, built (and for FSDP 2 sharded) in configure_model."""

    def __init__(self, strategy: str) -> None:
        super().__init__()
        self.strategy_name = strategy
        self.backbone = None
        self.seen: list[list[int]] = []

    def configure_model(self) -> None:
        if self.backbone is not None:  # configure_model runs at every Trainer call: build and shard once
            return
        self.backbone = tiny_llama()
        if self.strategy_name == "model_parallel":
            from torch.distributed.fsdp import fully_shard

            mesh = self.device_mesh["data_parallel"]
            for block in decoder_layers(self.backbone):
                fully_shard(block, mesh=mesh)
            fully_shard(self.backbone.model, mesh=mesh)
            fully_shard(self.backbone, mesh=mesh)

    def predict_step(self, batch, batch_idx):
        self.seen.extend(batch["input_ids"].tolist())
        return self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, -1]

    def validation_step(self, batch, batch_idx):
        return self.backbone(**batch).logits.mean()


def strategy_for(name: str):
    if name == "fsdp":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer})
    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)


def trainer(out: Path, strategy: str, accelerator: str, callbacks: list[Callback]) -> Trainer:
    return Trainer(
        accelerator=accelerator,
        devices=2,
        strategy=strategy_for(strategy),
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )


def local_numel(parameter: torch.Tensor) -> int:
    """The number of weights this process holds of ``parameter`` (its shard, for a DTensor)."""
    from torch.distributed.tensor import DTensor

    return parameter.to_local().numel() if isinstance(parameter, DTensor) else parameter.numel()


def main(out: Path, strategy: str, accelerator: str) -> None:
    # 1. statistics of the sharded model over two processes
    module = ShardedProject(strategy)
    stats_callback = LayerStatsCallback(model="backbone")
    predict = trainer(out, strategy, accelerator, [stats_callback])
    predict.predict(module, loader())
    stats = stats_callback.stats
    rank = predict.global_rank
    block = decoder_layers(module.backbone)[0]
    result = {
        "rank": rank,
        "world_size": predict.world_size,
        "strategy": type(predict.strategy).__name__,
        "seen_windows": module.seen,
        "sharded": _is_sharded(module.backbone),
        "block_weights_held": sum(local_numel(p) for p in block.parameters()),
        "similarity": stats.similarity.tolist(),
        "last_token_similarity": stats.last_token_similarity.tolist(),
        "num_tokens": stats.num_tokens,
        "num_sequences": stats.num_sequences,
        # 2. the plan each process selects from the synchronised statistics
        "plan": json.loads(select_layers(stats, 0.25, method="lorp").to_json()),
    }

    # 3. pruning in place under FSDP is refused, at setup, and when the pruning comes to a sharded model
    prune_callback = LoRPPruneCallback(0.25, method="lorp", model="backbone")
    try:
        trainer(out, strategy, accelerator, [prune_callback]).validate(module, loader())
        result["setup_refusal"] = None
    except ValueError as error:
        result["setup_refusal"] = str(error)
    late = LoRPPruneCallback(0.25, method="lorp", model="backbone", prune_on="predict_end")
    late.stats = stats
    try:
        late._prune(predict, module)
        result["prune_refusal"] = None
    except RuntimeError as error:
        result["prune_refusal"] = str(error)
    result["num_layers_after"] = len(decoder_layers(module.backbone))
    result["plan_after_refusals"] = None if late.plan is None and prune_callback.plan is None else "pruned"
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])

"""``lorp apply``: prune a saved checkpoint on disk by a plan, tensor by tensor, without loading it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorp_lightning.cli._arguments import UsageError
from lorp_lightning.cli._shared import COMMAND_LINE
from lorp_lightning.model_card import write_model_card

RENAMED = {"plan_or_blocks": "plan", "checkpoint_dir": "checkpoint", "out_dir": "out"}
"""The library's parameters that are this command's arguments under other names (see ``_arguments.flags``)."""


def add_arguments(commands) -> argparse.ArgumentParser:
    """The ``apply`` sub-command's parser, added to ``commands`` (argparse's sub-parsers)."""
    parser = commands.add_parser("apply", help="prune a saved checkpoint on disk by a plan, tensor by tensor, without loading it")
    parser.add_argument(
        "plan",
        metavar="PLAN",
        help="the blocks to remove, e.g. 12,13,14 (the checkpoint's numbering), or a saved plan: the "
        "report.json of `lorp prune` (or its output directory), or a file of PruningPlan.to_json()",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT_DIR",
        help="a Hugging Face model directory with safetensors weights (model.safetensors, or "
        "model.safetensors.index.json and its shards); only read",
    )
    parser.add_argument("--out", required=True, help="output directory for the pruned checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    return parser


def apply(*, plan: str, checkpoint: str, out: str, overwrite: bool) -> dict:
    """``lorp apply``: the checkpoint in the directory ``checkpoint`` pruned on disk by ``plan`` (block numbers,
    comma-separated, or a saved plan), tensor by tensor, into ``out``; what was done."""
    import re

    from lorp_lightning.checkpoint import prune_checkpoint

    blocks = [int(b) for b in plan.split(",") if b.strip()] if re.fullmatch(r"[\d\s,]*\d[\d\s,]*", plan) else plan
    if Path(out).exists() and not overwrite:  # the message of every command's output directory
        raise UsageError(f"the output directory {out} exists; pass --overwrite to replace it or --out to choose another")
    try:
        final = prune_checkpoint(blocks, checkpoint, out, overwrite=overwrite)
    except (ValueError, TypeError, NotImplementedError, FileNotFoundError, FileExistsError) as error:
        raise UsageError.of(error) from error
    record = json.loads((final / "config.json").read_text())["lorp_pruning"]
    # the checkpoint's own card, copied with its other files, describes the model before pruning: replace it
    write_model_card(final, {}, COMMAND_LINE.get(), checkpoint)
    removed = record["steps"][-1]["pruned_layers"]
    remaining = record["original_num_layers"] - len(record["pruned_layers"])
    print(
        f"removed blocks {removed} (original numbering) of {checkpoint}: {remaining} of "
        f"{record['original_num_layers']} blocks remain"
    )
    print(f"saved the pruned checkpoint to {final}")
    return {"command": "apply", "plan": plan, "checkpoint": checkpoint, "out": str(final), "lorp_pruning": record}

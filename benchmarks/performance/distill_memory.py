"""Memory of the teacher in distillation healing: the dense model kept as a second copy, against
the student itself with its removed blocks put back (``LoRPHealCallback(teacher="dense")``).

Each variant runs in a fresh process: SmolLM2-135M in a ``LoRPModule``, pruned by 25% (7 of 30
blocks, by ``lorp``, from 4 validation windows of 256 tokens of wiki) by ``LoRPPruneCallback`` in
``trainer.validate``, then healed for ``--steps`` LoRA steps (4 windows of 256 tokens a step) by
``LoRPHealCallback`` in ``trainer.fit``:

- ``none``: the next-token loss, no teacher;
- ``shared``: ``teacher="dense"``, the student with its removed blocks put back (kept aside, not copied);
- ``copy``: ``teacher=copy.deepcopy(model)``, taken before the pruning: a second dense model.

For each: the bytes of the weights the teacher holds beyond the student's own (counted tensor by
tensor, exact), the resident memory after the pruning (VmRSS) and its peak over the run (VmHWM),
both in MB, and the seconds of a healing step.

    python benchmarks/performance/distill_memory.py [--model smollm2-135m] [--dtype auto] [--steps 2] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import subprocess
import sys
import time
import warnings

VARIANTS = ("none", "shared", "copy")


def status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in MB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def run_variant(args) -> dict:
    import torch
    from lightning.pytorch import Callback, Trainer

    from lorp_lightning import LoRPHealCallback, LoRPModule, LoRPPruneCallback, TextDataModule, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    model, tokenizer = load_model(args.model, dtype=args.dtype, progress=False)
    teacher = {"none": None, "shared": "dense", "copy": None}[args.variant]
    if args.variant == "copy":
        teacher = copy.deepcopy(model).eval()
    loaded = status_mb("VmRSS")
    module = LoRPModule(model, tokenizer, lr=1e-3)
    # more windows than the steps use: the epoch does not end, so fit runs no validation
    data = TextDataModule("wiki", tokenizer, window=256, num_calibration_windows=8 * args.steps, num_eval_windows=4, batch_size=4)
    heal = LoRPHealCallback(verbose=False, teacher=teacher)

    class StepTimes(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seconds.append(time.perf_counter() - self._start)

    times = StepTimes()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=args.steps,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[LoRPPruneCallback(0.25, method="lorp", verbose=False), heal, times],
    )
    trainer.validate(module, datamodule=data, verbose=False)
    student = {id(p) for p in module.model.parameters()}
    if args.variant == "shared":
        held = [p for block in heal._dense.blocks for p in block.parameters() if id(p) not in student]
    elif args.variant == "copy":
        held = list(teacher.parameters())
    else:
        held = []
    teacher_bytes = sum(p.numel() * p.element_size() for p in held)
    student_bytes = sum(p.numel() * p.element_size() for p in module.model.parameters())
    pruned = status_mb("VmRSS")
    trainer.fit(module, datamodule=data)
    return {
        "variant": args.variant,
        "dtype": str(model.dtype),
        "student_weights_mb": student_bytes / 2**20,
        "teacher_extra_weights_mb": teacher_bytes / 2**20,
        "rss_loaded_mb": loaded,
        "rss_after_pruning_mb": pruned,
        "peak_rss_mb": status_mb("VmHWM"),
        "step_seconds": times.seconds,
        "distillation": heal.records[-1]["distillation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(run_variant(args)))
        return
    rows = []
    for variant in VARIANTS:
        command = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--model",
            args.model,
            "--dtype",
            args.dtype,
            "--steps",
            str(args.steps),
        ] + (["--threads", str(args.threads)] if args.threads else [])
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    print(f"{args.model}, {rows[0]['dtype']}, 7 of 30 blocks removed; student weights {rows[0]['student_weights_mb']:.0f} MB")
    print(
        "| teacher | weights held beyond the student (MB) | RSS after pruning (MB) | peak RSS (MB) | "
        "peak - no teacher (MB) | s / step |"
    )
    print("|---|---|---|---|---|---|")
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        step = sum(row["step_seconds"][1:]) / max(1, len(row["step_seconds"]) - 1)  # the first step warms up
        print(
            f"| {row['variant']} | {row['teacher_extra_weights_mb']:.0f} | {row['rss_after_pruning_mb']:.0f} | "
            f"{row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] - base:+.0f} | {step:.1f} |"
        )


if __name__ == "__main__":
    main()

"""Peak memory of pruning a checkpoint on disk (`prune_checkpoint`, `lorp apply`) against its size.

    python benchmarks/performance/apply_memory.py [--model qwen2.5-0.5b] [--max-shard-size 200MB] [--blocks 12,13,14,15,16,17]

Saves the bundled model in float32 as a sharded safetensors checkpoint (with its tokenizer) in
a temporary folder, then measures, each in a fresh Python process (peak RSS from the kernel's
rusage of that process, ``ru_maxrss``):

- ``import lorp_lightning.checkpoint`` alone: the interpreter and the imports (torch,
  transformers, lightning: the package imports them all), the floor under any command;
- ``prune_checkpoint(blocks, checkpoint, out)``;
- for comparison, the in-memory way: ``from_pretrained``, ``prune_layers``, ``save_pretrained``.

and reports them beside the checkpoint's size and its largest tensor. Last, it checks the
pruned checkpoint: loaded with plain ``AutoModelForCausalLM.from_pretrained``, its weights are
those of ``prune_layers`` on the model in memory, bit for bit, and its logits on a few tokens
equal that model's (float32, within 1e-6).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 2**20


def peak_rss_of(code: str) -> tuple[float, float]:
    """Run ``code`` in a fresh Python process; its peak RSS in MB and its wall time in seconds."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"the measured process failed with status {process.returncode}: {code}")
    return usage.ru_maxrss * 1024 / MB, seconds  # ru_maxrss is in KiB on Linux


def tensors_of(directory: Path) -> dict[str, tuple[list[int], int]]:
    """Every tensor of the checkpoint's safetensors files: its shape and size in bytes, from the
    headers (an 8-byte little-endian length, then JSON), read here without importing anything heavy."""
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        header.pop("__metadata__", None)
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            found[name] = (entry["shape"], end - begin)
    return found


def save_checkpoint(model_name: str, directory: Path, max_shard_size: str) -> None:
    """The bundled model in float32, saved as a sharded safetensors checkpoint with its tokenizer."""
    import torch

    from lorp_lightning.assets import load_model

    model, tokenizer = load_model(model_name, dtype=torch.float32, progress=False)
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(directory)


def check_against_memory(checkpoint: Path, out: Path, blocks: list[int], tokens: int) -> None:
    """Print the largest difference of logits, pruned checkpoint against prune_layers in memory, and
    whether their weights are identical."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorp_lightning.surgery import prune_layers

    torch.set_num_threads(1)
    ids = AutoTokenizer.from_pretrained(checkpoint)(
        "Depth pruning removes whole decoder blocks from a language model, keeping the rest as it was.", return_tensors="pt"
    ).input_ids[:, :tokens]
    expected_model = prune_layers(AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32), blocks).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        difference = (expected_model(ids).logits - pruned(ids).logits).abs().max().item()
    state, expected_state = pruned.state_dict(), expected_model.state_dict()
    identical = list(state) == list(expected_state) and all(torch.equal(state[k], expected_state[k]) for k in state)
    print(json.dumps({"tokens": int(ids.shape[1]), "difference": difference, "identical": identical}))


def step(*arguments: str) -> str:
    """Run a step of this script in a fresh process (so that this one never holds a model); its stdout."""
    result = subprocess.run(
        [sys.executable, __file__, *arguments], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    if result.returncode != 0:
        raise RuntimeError(f"step {arguments[:2]} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--max-shard-size", default="200MB")
    parser.add_argument("--blocks", default="12,13,14,15,16,17", help="blocks to remove (default: 6 of Qwen2.5's 24)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens of the logits check (default: 16)")
    parser.add_argument("--step", nargs=2, metavar=("NAME", "DIR"), help=argparse.SUPPRESS)  # the steps run in children
    args = parser.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    if args.step:
        name, directory = args.step[0], Path(args.step[1])
        if name == "save":
            save_checkpoint(args.model, directory / "checkpoint", args.max_shard_size)
        else:
            check_against_memory(directory / "checkpoint", directory / "pruned", blocks, args.tokens)
        return

    # This process imports neither torch nor transformers: a child's ru_maxrss counts the pages it
    # shared with this process when it was forked, so the parent must stay small.
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint, out, in_memory = Path(scratch) / "checkpoint", Path(scratch) / "pruned", Path(scratch) / "in-memory"
        step("--model", args.model, "--max-shard-size", args.max_shard_size, "--step", "save", scratch)
        tensors = tensors_of(checkpoint)
        size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
        largest_name = max(tensors, key=lambda n: tensors[n][1])
        largest = tensors[largest_name][1]
        num_shards = len(list(checkpoint.glob("*.safetensors")))
        depth = json.loads((checkpoint / "config.json").read_text())["num_hidden_layers"]

        imports, _ = peak_rss_of("import lorp_lightning.checkpoint")
        apply, apply_seconds = peak_rss_of(
            f"from lorp_lightning.checkpoint import prune_checkpoint; prune_checkpoint({blocks!r}, {str(checkpoint)!r}, {str(out)!r})"
        )
        loaded, loaded_seconds = peak_rss_of(
            "import torch; from transformers import AutoModelForCausalLM; from lorp_lightning.surgery import prune_layers; "
            f"m = AutoModelForCausalLM.from_pretrained({str(checkpoint)!r}, dtype=torch.float32); "
            f"prune_layers(m, {blocks!r}).save_pretrained({str(in_memory)!r}, max_shard_size={args.max_shard_size!r})"
        )
        out_size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        out_shards = len(list(out.glob("*.safetensors")))
        record = json.loads((out / "config.json").read_text())["lorp_pruning"]
        check = json.loads(
            step("--blocks", args.blocks, "--tokens", str(args.tokens), "--step", "check", scratch).splitlines()[-1]
        )

    print(
        f"checkpoint: {args.model} in float32, {depth} blocks, {num_shards} safetensors shards of at most "
        f"{args.max_shard_size} (a tensor larger than that gets a shard of its own): {size / MB:.1f} MB"
    )
    print(f"largest tensor: {largest_name} {tensors[largest_name][0]}, {largest / MB:.1f} MB")
    print(f"removed blocks {record['pruned_layers']}: the pruned checkpoint has {out_shards} shards, {out_size / MB:.1f} MB")
    print()
    print(f"{'peak RSS of a fresh process':<62} {'MB':>8} {'seconds':>8}")
    floor = 'python -c "import lorp_lightning.checkpoint" (the floor)'
    print(f"{floor:<62} {imports:>8.0f}")
    print(f"{'prune_checkpoint (lorp apply)':<62} {apply:>8.0f} {apply_seconds:>8.1f}")
    print(f"{'from_pretrained + prune_layers + save_pretrained':<62} {loaded:>8.0f} {loaded_seconds:>8.1f}")
    print()
    print(
        f"prune_checkpoint: peak RSS / checkpoint size = {apply / (size / MB):.3f}; / largest tensor = "
        f"{apply / (largest / MB):.2f}; above the imports: {apply - imports:.0f} MB "
        f"= {(apply - imports) / (largest / MB):.3f} of the largest tensor"
    )
    print(f"in memory, for comparison: peak RSS / checkpoint size = {loaded / (size / MB):.3f}")
    equal = check["difference"] <= 1e-6
    print(
        f"check on {check['tokens']} tokens: logits of the pruned checkpoint vs prune_layers in memory, max |difference| "
        f"{check['difference']:.3g} (float32, tolerance 1e-6): {'equal' if equal else 'NOT EQUAL'}; weights identical "
        f"bit for bit: {check['identical']}"
    )
    if not (equal and check["identical"]):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Time and memory of every step at each model size, and the speed of the pruned models (issue 38).

    python benchmarks/performance/scale.py run [--models smollm2-135m gemma3-270m qwen2.5-0.5b qwen2.5-1.5b] [--out benchmarks/results/scale]
    python benchmarks/performance/scale.py render [--results benchmarks/results/scale] [--docs docs]

Every measurement runs in a fresh Python process, so that its memory is its own; ``run`` starts them one after
another and writes one JSON per model. Threads: what torch takes on the machine (2 here). Memory is read by a thread
that samples the process every 5 ms, per phase: the resident set (RSS, what the kernel's peak and ``/usr/bin/time``
report) and its anonymous part (RSS less the file pages mapped, which the kernel can drop: loading a safetensors
file maps it). The processes:

- ``pipeline`` in bf16, the computing dtype on the CPU: load the cached model; the statistics pass of ``lorp prune``
  (32 windows of 512 tokens of ``wiki``, batches of 4); then, on the first 8 of those windows, in turn, a plain
  forward of the whole model, a forward of its backbone (no head: what the statistics run) and the statistics pass
  again, so that the statistics' cost is a ratio measured side by side; the selection at a quarter of the blocks by
  the faithful method (``lorp``), the default (``lorp_search``) and ``ppl``, each with its own loss checks;
  held-out perplexity on 8 windows of ``wiki``; and the prefill and decode speed of the pruned models at 1/8, 1/4
  and 1/3 of the blocks (the ``lorp`` plans; the weights shared with the dense model, so that four models fit),
  against the dense model, in turns (``evaluation.measure_speed``: prompt 512 tokens, 32 new tokens, 3 repeats),
  beside the ideal of the matmul FLOPs.
- ``pipeline`` in float32: the memory of the same steps, on 8 windows; the selection's memory as that of its loss
  checks (three plans; a search is a sequence of such checks, and the bf16 run shows both).
- ``lorp prune MODEL --eval-windows 8 --speed-repeats 1 --new-tokens 16`` end to end (the default method; fewer
  evaluation windows and speed runs than the CLI's defaults, so that the 1.5B model's run takes minutes), with the
  seconds of each part from its ``report.json``.
- The Lightning path: ``Trainer(callbacks=[LoRPPruneCallback(0.25, prune_on="predict_end")]).predict`` on a
  ``LoRPModule`` of the model in bf16 with ``TextDataModule("wiki")``.
- ``prune_checkpoint`` (``lorp apply``) of the default's plan on the model's float32 cache entry (a sharded
  safetensors checkpoint), against the imports alone and the largest tensor
  (``benchmarks/performance/apply_memory.py``'s measure).

The quality of the plans at three budgets is ``benchmarks/decisions/quality_study.py``'s (docs/study.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from apply_memory import peak_rss_of, tensors_of

MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b")
MB = 2**20
AMOUNT = 0.25
SPEED_BUDGETS = ((1, 8), (1, 4), (1, 3))


class Phases:
    """Peak RSS and peak anonymous memory (RSS less the mapped file pages) of this process, per named phase, from a
    thread sampling every 5 ms; and each phase's seconds."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.results: dict[str, dict[str, float]] = {}
        self._current: dict[str, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def now(self) -> dict[str, float]:
        memory = self._process.memory_info()
        return {"rss_mb": memory.rss / MB, "anonymous_mb": (memory.rss - memory.shared) / MB}

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._record()
            time.sleep(0.005)

    def _record(self) -> None:
        current = self._current
        if current is not None:
            now = self.now()
            current["peak_rss_mb"] = max(current["peak_rss_mb"], now["rss_mb"])
            current["peak_anonymous_mb"] = max(current["peak_anonymous_mb"], now["anonymous_mb"])

    @contextmanager
    def phase(self, name: str):
        start = self.now()
        self._current = {
            "start_rss_mb": start["rss_mb"],
            "start_anonymous_mb": start["anonymous_mb"],
            "peak_rss_mb": start["rss_mb"],
            "peak_anonymous_mb": start["anonymous_mb"],
        }
        began = time.perf_counter()
        try:
            yield self._current
        finally:
            self._current["seconds"] = time.perf_counter() - began
            self._record()
            self.results[name], self._current = self._current, None


# --------------------------------------------------------------------------- the measured processes


def pipeline(model_name: str, dtype: str) -> dict:
    """The steps of a pruning run in one process, each a phase (see the module docstring)."""
    import torch

    from lorp_lightning import collect_layer_stats, load_model, load_text, select_layers
    from lorp_lightning.evaluation import (
        matmul_flops_per_token,
        measure_speed,
        num_parameters,
        parameter_bytes,
        perplexity,
        token_windows,
    )
    from lorp_lightning.methods import CHECK_TOKENS, CHECK_WINDOWS, SCORE_LAST
    from lorp_lightning.search import PlanLoss
    from lorp_lightning.surgery import prune_layers

    full = dtype == "bfloat16"
    phases = Phases()
    result: dict = {"model": model_name, "dtype": dtype, "imports_rss_mb": phases.now()["rss_mb"]}
    with phases.phase("load"):
        model, tokenizer = load_model(model_name, dtype=dtype, progress=False)
    N = model.config.num_hidden_layers
    result.update(
        num_layers=N,
        num_parameters=num_parameters(model),
        weights_mb=parameter_bytes(model) / MB,
        largest_parameter_mb=max(p.numel() * p.element_size() for p in model.parameters()) / MB,
        hidden_size=model.config.hidden_size,
        intermediate_size=model.config.intermediate_size,
        vocab_size=model.config.vocab_size,
        block_flops_per_token=matmul_flops_per_token(model) - 2 * model.get_output_embeddings().weight.numel(),
        head_flops_per_token=2 * model.get_output_embeddings().weight.numel(),
    )
    windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=32 if full else 8)
    with phases.phase("statistics"):
        stats = collect_layer_stats(model, windows.split(4), progress=False)
    result["statistics_windows"] = len(windows)

    if full:  # the statistics against plain forwards of the same 8 windows, in turns
        first = windows[:8].split(4)

        @torch.no_grad()
        def plain() -> None:
            for batch in first:
                model(input_ids=batch, use_cache=False)

        @torch.no_grad()
        def backbone() -> None:
            for batch in first:
                model.base_model(input_ids=batch, use_cache=False)

        def statistics_pass() -> None:
            collect_layer_stats(model, first, progress=False)

        result["side_by_side"] = {}  # one turn: the 1.5B model's takes 2 minutes
        for name, run in (("plain", plain), ("backbone", backbone), ("statistics", statistics_pass)):
            start = time.perf_counter()
            run()
            result["side_by_side"][name] = time.perf_counter() - start

    if full:
        plans = {}
        for method in ("lorp", "lorp_search", "ppl"):
            with phases.phase(f"selection {method}"):
                plan = select_layers(stats, AMOUNT, method=method, model=model, windows=windows)
            plans[method] = plan.pruned
            result.setdefault("selection", {})[method] = {
                "pruned": plan.pruned,
                "window_passes": plan.cost["statistics_windows"] + plan.cost["check_windows"],
                "check_windows": plan.cost["check_windows"],
                "seconds": plan.cost["seconds"],
            }
    checks = PlanLoss(model, windows[:CHECK_WINDOWS, :CHECK_TOKENS], score_last=SCORE_LAST)
    result["check_batch_windows"] = checks.batch_windows
    lorp_plans = {f"{a}/{b}": select_layers(stats, N * a // b, method="lorp").pruned for a, b in SPEED_BUDGETS}
    with phases.phase("checks"):  # three plans' loss checks: what a search repeats
        for plan in lorp_plans.values():
            checks(plan)
    held_out = token_windows(tokenizer, load_text("wiki", "heldout"), window=512, max_windows=8)
    with phases.phase("evaluation"):
        result["dense_perplexity"] = perplexity(model, held_out)

    if full:  # pruned models sharing the dense model's weights: a copy of the modules, not of the tensors
        import copy

        shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        models = {"dense": model}
        for budget, plan in lorp_plans.items():
            models[budget] = prune_layers(copy.deepcopy(model, memo=dict(shared)), plan)
        speed = measure_speed(models, prompt_tokens=512, new_tokens=32, repeats=3)
        dense_flops = matmul_flops_per_token(model)
        result["speed"] = {
            name: {
                "num_pruned": N - m.config.num_hidden_layers,
                "prefill_seconds": speed[name]["prefill_seconds"],
                "decode_tokens_per_second": speed[name]["decode_tokens_per_second"],
                "flop_ideal": dense_flops / matmul_flops_per_token(m),
            }
            for name, m in models.items()
        }
    result["phases"] = phases.results
    return result


def lightning_path(model_name: str) -> dict:
    """The callback in a Trainer, as a Lightning project runs it; the seconds and the pruned blocks."""
    from lightning import Trainer

    from lorp_lightning import LoRPModule, LoRPPruneCallback, TextDataModule

    phases = Phases()
    with phases.phase("module"):
        module = LoRPModule(model_name, dtype="bfloat16")
    callback = LoRPPruneCallback(AMOUNT, prune_on="predict_end")
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[callback]
    )
    with phases.phase("predict"):
        trainer.predict(module, datamodule=TextDataModule("wiki", window=512))
    return {"pruned": callback.plan.pruned, "num_layers_after": module.model.config.num_hidden_layers, "phases": phases.results}


# --------------------------------------------------------------------------- run


def _child(kind: str, model: str, dtype: str = "bfloat16") -> dict:
    """Run one measured process (this script's ``child`` command); its JSON, and its peak RSS from the kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, __file__, "child", kind, model, dtype, str(out)])
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the {kind} process of {model} ({dtype}) failed with status {os.waitstatus_to_exitcode(status)}")
        result = json.loads(out.read_text())
    result.update(process_peak_rss_mb=usage.ru_maxrss * 1024 / MB, process_seconds=time.perf_counter() - start)
    return result


def prune_command(model: str) -> dict:
    """``lorp prune`` end to end in its own process: its peak RSS, its seconds, and the parts' seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "lorp",
            "prune",
            model,
            "--eval-windows",
            "8",
            "--speed-repeats",
            "1",
            "--new-tokens",
            "16",
            "--out",
            f"{tmp}/out",
            "--quiet",
        ]
        start = time.perf_counter()
        process = subprocess.Popen([str(Path(sys.executable).parent / "lorp"), *argv[1:]], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(argv)} failed with status {os.waitstatus_to_exitcode(status)}")
        report = json.loads(Path(f"{tmp}/out/report.json").read_text())
    timings = report.get("timings") or {k: v for k, v in report.items() if k.endswith("_seconds")}
    return {
        "command": " ".join(argv[:-3] + argv[-1:]),
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss * 1024 / MB,
        "timings": timings,
    }


def apply_on_disk(model: str, blocks: list[int]) -> dict:
    """``prune_checkpoint`` of ``blocks`` on the model's float32 cache entry, in a fresh process, against the imports."""
    from lorp_lightning.assets import BUNDLED_MODELS, _bundled_cache_entry

    checkpoint = _bundled_cache_entry(BUNDLED_MODELS[model])
    tensors = tensors_of(checkpoint)
    imports_mb, _ = peak_rss_of("import lorp_lightning.checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        code = f"from lorp_lightning.checkpoint import prune_checkpoint; prune_checkpoint({blocks!r}, {str(checkpoint)!r}, {tmp + '/out'!r})"
        apply_mb, seconds = peak_rss_of(code)
    return {
        "checkpoint_mb": sum(size for _, size in tensors.values()) / MB,
        "largest_tensor_mb": max(size for _, size in tensors.values()) / MB,
        "imports_rss_mb": imports_mb,
        "peak_rss_mb": apply_mb,
        "seconds": seconds,
        "blocks": blocks,
    }


def cmd_run(args) -> None:
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        print(f"{model}: pipeline in bf16", flush=True)
        result = {"model": model, "bfloat16": _child("pipeline", model, "bfloat16")}
        print(f"{model}: pipeline in float32", flush=True)
        result["float32"] = _child("pipeline", model, "float32")
        print(f"{model}: lorp prune", flush=True)
        result["prune"] = prune_command(model)
        print(f"{model}: the Lightning path", flush=True)
        result["lightning"] = _child("lightning", model)
        print(f"{model}: lorp apply on the float32 cache entry", flush=True)
        result["apply"] = apply_on_disk(model, result["bfloat16"]["selection"]["lorp_search"]["pruned"])
        result.update(
            date=date.today().isoformat(),
            machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
            torch=torch.__version__,
            command="python benchmarks/performance/scale.py run " + " ".join(sys.argv[2:]),
        )
        (out / f"{model}.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out / (model + '.json')}", flush=True)


def cmd_child(args) -> None:
    result = pipeline(args.model, args.dtype) if args.kind == "pipeline" else lightning_path(args.model)
    Path(args.out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="measure the models, one JSON each")
    run.add_argument("--models", nargs="+", default=list(MODELS))
    run.add_argument("--out", default="benchmarks/results/scale")
    child = sub.add_parser("child", help="one measured process (run starts them)")
    child.add_argument("kind", choices=["pipeline", "lightning"])
    child.add_argument("model")
    child.add_argument("dtype")
    child.add_argument("out")
    render = sub.add_parser("render", help="write the tables into docs/scaling.md and docs/results.md")
    render.add_argument("--results", default="benchmarks/results/scale")
    render.add_argument("--docs", default="docs")
    args = parser.parse_args()
    {"run": cmd_run, "child": cmd_child, "render": cmd_render}[args.command](args)


# --------------------------------------------------------------------------- the model and the tables

BATCH, WINDOW = 4, 512  # the statistics pass: batches of 4 windows of 512 tokens
CHECKS, CHECK_LENGTH, SCORED = 8, 256, 128  # the checks: 8 windows of 256 tokens, the last 128 predictions scored
OLD_LOGITS_BYTES = 2**30  # search.LOGITS_BYTES until 2026-12-06, under which the JSONs without check_batch_windows ran


def check_batch(V: int, logits_bytes: int) -> int:
    """C, the check windows per forward pass for a vocabulary of V under ``logits_bytes`` (the library's rule)."""
    from lorp_lightning.search import _windows_per_pass

    return _windows_per_pass(V, SCORED, CHECKS, logits_bytes)


def measured_check_batch(p: dict) -> int:
    """The C a measured pipeline ran with: recorded, or the rule of the time for the JSONs from before it was."""
    return p.get("check_batch_windows") or check_batch(p["vocab_size"], OLD_LOGITS_BYTES)


BYTES = {"bfloat16": 2, "float32": 4}


def memory_terms(N: int, D: int, F: int, V: int, b: int, C: int) -> dict[str, float]:
    """The memory a step needs on top of the weights, in MB, from the shapes (docs/scaling.md's model):

    - statistics: the recorder's float32 copy of the N+1 normalised states of one batch, (N+1)·B·T·D·4 bytes, and
      the MLP's three B·T·F activations of one block;
    - checks: the inputs of every block for the check windows, N·C·T_c·D·b, the scored logits of the C windows of
      one pass, C·(s+1)·V·b, one window's of them in float32 with their log-softmax, 2·(s+1)·V·4, and the MLP's
      activations, C·T_c·F·3·b;
    - evaluation (one window of T tokens): the logits of every position, T·V·b, in float32 with their log-softmax,
      2·T·V·4, and the MLP's activations, T·F·3·b.

    b is the bytes of the computing dtype; C the check windows per pass; B = 4, T = 512, T_c = 256, s = 128 and 8
    check windows in all (the defaults). In float32
    the logits are not copied to float32: one of the two float32 terms of the logits goes."""
    upcast = 2 if b < 4 else 1  # float32 copies of the logits: the copy (unless already float32) and the log-softmax
    return {
        "statistics": ((N + 1) * BATCH * WINDOW * D * 4 + 3 * BATCH * WINDOW * F * b) / MB,
        "checks": (
            N * CHECKS * CHECK_LENGTH * D * b
            + C * (SCORED + 1) * V * b
            + upcast * (SCORED + 1) * V * 4
            + 3 * C * CHECK_LENGTH * F * b
        )
        / MB,
        "evaluation": (WINDOW * V * b + upcast * WINDOW * V * 4 + 3 * WINDOW * F * b) / MB,
    }


def _mb(x: float) -> str:
    return f"{x:,.0f}"


def _gb(x: float) -> str:
    return f"{x / 1024:.2f}"


def _miss(predicted: float, measured: float) -> str:
    return f"{(predicted - measured) / measured:+.0%}"


def render_tables(results: list[dict]) -> str:
    """The Markdown tables of docs/scaling.md's measured section."""
    lines = [
        "Measured by `python benchmarks/performance/scale.py run` (then `render`), "
        + ", ".join(sorted({r["date"] for r in results}))
        + f", on this project's CPU machine ({results[0]['machine']}, torch {results[0]['torch']}). Each step in a "
        "fresh process; see the script's docstring for what each column runs.",
        "",
        "### Time (bf16)",
        "",
        "| model | parameters | blocks | statistics pass, 32 × 512 tokens | statistics ÷ plain forward (÷ backbone), same 8 windows |"
        " `lorp` at 1/4 | `lorp_search` at 1/4 (window passes) | `ppl` at 1/4 (window passes) |"
        " default ÷ faithful, statistics included | `lorp prune` end to end | Lightning path |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r["bfloat16"]
        stats = p["phases"]["statistics"]["seconds"]
        side = p["side_by_side"]
        sel = p["selection"]
        default = stats + sel["lorp_search"]["seconds"]
        faithful = stats + sel["lorp"]["seconds"]
        lines.append(
            f"| {r['model']} | {p['num_parameters'] / 1e9:.2f} B | {p['num_layers']} | {stats:.1f} s |"
            f" {side['statistics'] / side['plain']:.2f} ({side['statistics'] / side['backbone']:.2f}) |"
            f" {sel['lorp']['seconds']:.2f} s | {sel['lorp_search']['seconds']:.0f} s ({sel['lorp_search']['check_windows']}) |"
            f" {sel['ppl']['seconds']:.0f} s ({sel['ppl']['check_windows']}) | {default / faithful:.2f} |"
            f" {r['prune']['seconds']:.0f} s | {r['lightning']['phases']['predict']['seconds']:.0f} s |"
        )
    lines += [
        "",
        "`lorp prune` ran `" + results[0]["prune"]["command"].replace(results[0]["model"], "MODEL") + "`; its parts, in seconds:",
        "",
        "| model | load | calibration | selection | prune | evaluation (8 windows, speed once) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        t = r["prune"]["timings"]
        lines.append(
            f"| {r['model']} | {t.get('load_seconds', 0):.0f} | {t.get('calibration_seconds', 0):.0f} |"
            f" {t.get('selection_seconds', 0):.0f} | {t.get('prune_seconds', 0):.1f} | {t.get('evaluation_seconds', 0):.0f} |"
        )
    lines += [
        "",
        "### Memory: peak RSS in GiB (its anonymous part, without mapped file pages)",
        "",
        "| model | dtype | weights | imports | load | statistics | `lorp_search` | checks (3 plans) | evaluation |"
        " whole process | selection ÷ weights |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for dtype in ("bfloat16", "float32"):
            p = r[dtype]
            ph = p["phases"]

            def cell(name: str, ph: dict = ph) -> str:
                if name not in ph:
                    return "–"
                return f"{_gb(ph[name]['peak_rss_mb'])} ({_gb(ph[name]['peak_anonymous_mb'])})"

            selection = ph.get("selection lorp_search", ph["checks"])["peak_rss_mb"]
            lines.append(
                f"| {r['model']} | {dtype} | {_gb(p['weights_mb'])} | {_gb(ph['load']['start_rss_mb'])} | {cell('load')} |"
                f" {cell('statistics')} | {cell('selection lorp_search')} | {cell('checks')} | {cell('evaluation')} |"
                f" {_gb(p['process_peak_rss_mb'])} | {selection / p['weights_mb']:.2f} |"
            )
    lines += [
        "",
        "The Lightning path (bf16, `LoRPModule` then `Trainer.predict` with the callback) peaked at: "
        + "; ".join(f"{r['model']} {_gb(r['lightning']['process_peak_rss_mb'])} GiB" for r in results)
        + ". `lorp prune` end to end: "
        + "; ".join(f"{r['model']} {_gb(r['prune']['peak_rss_mb'])} GiB" for r in results)
        + ".",
        "",
        "### Speed of the pruned models (bf16, prompt 512 tokens, 32 new tokens, median of 3 turns)",
        "",
        "| model | blocks removed | prefill speed-up | decode speed-up | FLOP ideal |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        speed = r["bfloat16"]["speed"]
        dense = speed["dense"]
        for name in ("1/8", "1/4", "1/3"):
            s = speed[name]
            lines.append(
                f"| {r['model']} | {name} ({s['num_pruned']}) | {dense['prefill_seconds'] / s['prefill_seconds']:.2f}x |"
                f" {s['decode_tokens_per_second'] / dense['decode_tokens_per_second']:.2f}x | {s['flop_ideal']:.2f}x |"
            )
    lines += [
        "",
        "### `lorp apply` on the float32 cache entry (a sharded safetensors checkpoint)",
        "",
        "| model | checkpoint | largest tensor | imports alone | `prune_checkpoint` peak RSS | above the imports | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a = r["apply"]
        lines.append(
            f"| {r['model']} | {_mb(a['checkpoint_mb'])} MB | {_mb(a['largest_tensor_mb'])} MB | {_mb(a['imports_rss_mb'])} MB |"
            f" {_mb(a['peak_rss_mb'])} MB | {_mb(a['peak_rss_mb'] - a['imports_rss_mb'])} MB | {a['seconds']:.0f} |"
        )
    lines += [
        "",
        "### The memory model against the measurements",
        "",
        "The load: I + W predicted against the anonymous memory after it, in bf16 (a float32 model is not copied: its "
        "tensors are the cache file's pages, mapped, resident as they are first used). Each step: its term of the "
        "model against the growth of the anonymous memory from the step's start to its peak, in GiB.",
        "",
        "| model | dtype | load | statistics | checks | evaluation |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for dtype in ("bfloat16", "float32"):
            p, ph = r[dtype], r[dtype]["phases"]
            terms = memory_terms(
                p["num_layers"], p["hidden_size"], p["intermediate_size"], p["vocab_size"], BYTES[dtype], measured_check_batch(p)
            )
            load = ph["load"]["start_rss_mb"] + p["weights_mb"]
            cells = [
                f"{_gb(load)} / {_gb(ph['load']['peak_anonymous_mb'])} ({_miss(load, ph['load']['peak_anonymous_mb'])})"
                if dtype == "bfloat16"
                else "mapped"
            ]
            for name in ("statistics", "checks", "evaluation"):
                growth = ph[name]["peak_anonymous_mb"] - ph[name]["start_anonymous_mb"]
                cells.append(f"{_gb(terms[name])} / {_gb(growth)} ({_miss(terms[name], growth)})")
            lines.append(f"| {r['model']} | {dtype} | " + " | ".join(cells) + " |")
    lines += ["", *render_time_model(results), "", *render_extrapolation()]
    return "\n".join(lines)


def render_time_model(results: list[dict]) -> list[str]:
    """Times predicted from rates of work: the statistics pass from Qwen2.5-0.5B's rate (FLOPs per second of the
    blocks), scaled by the blocks' matmul FLOPs per token; the checks of ``lorp_search`` and ``ppl`` from their window
    passes and the FLOPs of one, at the rate of the model's own statistics pass."""
    by_name = {r["model"]: r for r in results}
    base = by_name.get("qwen2.5-0.5b")
    if base is None:
        return []
    lines = [
        "### The time model against the measurements",
        "",
        "The statistics pass: 32 × 512 tokens × the blocks' matmul FLOPs per token, at Qwen2.5-0.5B's rate. A check "
        "pass of one window: the blocks after the plan's first removed one over 256 tokens, (N − first − k)/N of the "
        "blocks' FLOPs for `lorp_search`'s plan, (N − 2)/2N on average for `ppl`'s one-block plans, and the head on 129 "
        "positions; the selection's time is its window passes times that, at the rate of the model's own statistics "
        "pass (GFLOP/s in the first column).",
        "",
        "| model | rate of the statistics pass | statistics pass: predicted / measured |"
        " `lorp_search` at 1/4: predicted / measured | `ppl` at 1/4: predicted / measured |",
        "|---|---|---|---|---|",
    ]
    tokens = 32 * WINDOW

    def rate(p: dict) -> float:
        return tokens * p["block_flops_per_token"] / p["phases"]["statistics"]["seconds"]

    for r in results:
        p = r["bfloat16"]
        N, sel = p["num_layers"], p["selection"]
        stats_predicted = tokens * p["block_flops_per_token"] / rate(base["bfloat16"])
        stats_measured = p["phases"]["statistics"]["seconds"]
        cells = [
            f"{rate(p) / 1e9:.0f} GFLOP/s",
            f"{stats_predicted:.0f} s / {stats_measured:.0f} s ({_miss(stats_predicted, stats_measured)})",
        ]
        plan = sel["lorp_search"]["pruned"]
        for method, fraction in (("lorp_search", (N - min(plan) - len(plan)) / N), ("ppl", (N - 2) / (2 * N))):
            one = p["block_flops_per_token"] * fraction * CHECK_LENGTH + p["head_flops_per_token"] * (SCORED + 1)
            predicted = sel[method]["check_windows"] * one / rate(p)
            measured = sel[method]["seconds"]
            cells.append(f"{predicted:.0f} s / {measured:.0f} s ({_miss(predicted, measured)})")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return lines


# Llama-3.1 shapes: blocks, hidden size, MLP size, vocabulary, parameters
LARGE = {"8B": (32, 4096, 14336, 128256, 8.03e9), "70B": (80, 8192, 28672, 128256, 70.55e9)}
GPUS = 8


def render_extrapolation() -> list[str]:
    """The model's bill for Llama-3.1-8B and 70B in bf16, per device, by way of running."""
    from lorp_lightning.search import LOGITS_BYTES

    C = check_batch(LARGE["8B"][3], LOGITS_BYTES)  # both share Llama-3.1's vocabulary
    lines = [
        "### 8B and 70B, from the model",
        "",
        f"Llama-3.1 shapes in bf16; GiB per device; {GPUS} GPUs where several. The host's imports (0.3-0.5 GB above) are "
        "left out: on a GPU they are not in its memory.",
        "",
        f"| model | weights W | statistics (B·T = 4 × 512) | checks (8 × 256, {C} per pass) | evaluation (512) |"
        f" one device: W + the largest | DDP, each GPU: W + statistics | FSDP over {GPUS}: W/{GPUS} + one block + statistics |"
        f" `--device auto` over {GPUS}: W/{GPUS} + checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (N, D, F, V, params) in LARGE.items():
        W = params * 2 / MB
        t = memory_terms(N, D, F, V, 2, C)
        block = (W - 2 * V * D * 2 / MB) / N  # the weights of one block, the embedding and head left out
        lines.append(
            f"| {name} | {_gb(W)} | {_gb(t['statistics'])} | {_gb(t['checks'])} | {_gb(t['evaluation'])} |"
            f" {_gb(W + max(t.values()))} | {_gb(W + t['statistics'])} | {_gb(W / GPUS + block + t['statistics'])} |"
            f" {_gb(W / GPUS + t['checks'])} |"
        )
    return lines


def render_targets(results: list[dict]) -> str:
    """The issue's four targets of time and memory, at each size: the lines of docs/results.md."""
    lines = [
        "`python benchmarks/performance/scale.py run` (then `render`; every table of the run is in "
        "[Scaling](scaling.md#measured-at-four-sizes)). Targets set for the 1.5B model, shown at every size; bf16, 2 threads.",
        "",
        "| model | statistics ÷ plain forward (target ≤ 1.05) | default ÷ faithful selection, statistics included (≤ 3) |"
        " selection peak RSS ÷ weights (≤ 1.3) | `lorp apply` peak RSS (≤ the largest tensor + 300 MB) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        p = r["bfloat16"]
        side, sel, ph = p["side_by_side"], p["selection"], p["phases"]
        stats = ph["statistics"]["seconds"]
        ratio = (stats + sel["lorp_search"]["seconds"]) / (stats + sel["lorp"]["seconds"])
        a = r["apply"]
        lines.append(
            f"| {r['model']} | {side['statistics'] / side['plain']:.2f} | {ratio:.2f} |"
            f" {ph['selection lorp_search']['peak_rss_mb'] / p['weights_mb']:.2f} |"
            f" {_mb(a['peak_rss_mb'])} MB (≤ {_mb(a['largest_tensor_mb'] + 300)} MB) |"
        )
    return "\n".join(lines)


def _replace_between(path: Path, marker: str, body: str) -> None:
    """Replace the text between ``<!-- marker:begin -->`` and ``<!-- marker:end -->`` in ``path``."""
    text = path.read_text()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def cmd_render(args) -> None:
    folder = Path(args.results)
    results = [json.loads((folder / f"{m}.json").read_text()) for m in MODELS if (folder / f"{m}.json").is_file()]
    if not results:
        raise SystemExit(f"no results in {folder}: run `python benchmarks/performance/scale.py run` first")
    _replace_between(Path(args.docs) / "scaling.md", "scale", render_tables(results))
    _replace_between(Path(args.docs) / "results.md", "scale", render_targets(results))
    print(f"wrote {Path(args.docs) / 'scaling.md'} and {Path(args.docs) / 'results.md'}", flush=True)


if __name__ == "__main__":
    main()

"""The ``lorp`` command line: analyze, prune, compare and evaluate, offline on the bundled assets.

    lorp analyze [MODEL]                 statistics, RLS, K, clusters, heatmap
    lorp prune [MODEL] --amount 0.25     analyze, select, prune, save, and compare dense and pruned
    lorp compare MODEL --amounts ... --methods ...   every method at every budget from one pass
    lorp eval MODEL_OR_DIR               perplexity, size, speed and memory of one model
    lorp heal DIR --steps N              heal a pruned model by a short training run, merge, save
                                         (--teacher MODEL: by distillation from the dense model)
    lorp apply PLAN CHECKPOINT_DIR --out OUT   prune a saved checkpoint on disk, tensor by tensor

Every command but apply writes a ``report.json`` into its output directory and prints a table
(apply writes the pruned checkpoint, whose config.json records the pruning). Output
directories are written to a temporary folder beside them and renamed at the end, so a failed
run leaves nothing half-written; an existing directory needs ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lorp_lightning._io import write_json
from lorp_lightning.methods import DEFAULT_METHOD
from lorp_lightning.selection import format_clusters, is_budget

DEFAULT_MODEL = "smollm2-135m"
MODEL_HELP = ("a bundled name (smollm2-135m, gemma3-270m, qwen2.5-0.5b), a local Hugging Face model directory, "
              "a .gguf file, or a hub id org/name (read from the Hugging Face cache; with HF_HUB_OFFLINE=1 from "
              "the cache only)")
DTYPES = ("auto", "bfloat16", "float16", "float32")
COMPARED = ("lorp_search", "lorp", "lorp_checked", "ppl", "shortgpt", "streamline", "angular", "random", "last")


class UsageError(Exception):
    """A bad argument: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- arguments


def _checked_number(convert, accept, expected: str, name: str | None = None):
    """An argparse ``type``: ``convert(text)``, refused unless ``accept(value)`` with "expected
    <expected>" (or "<name> must be <expected>" when ``name`` is given)."""
    refusal = f"{name} must be {expected}" if name else f"expected {expected}"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{refusal}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{refusal}, got {text!r}")
        return value

    return parse


def _int_or_float(text: str) -> int | float:
    """The text as Python reads a number: "3" is the int 3, "0.25" and "3.0" are floats."""
    try:
        return int(text)
    except ValueError:
        return float(text)


# A budget as the library reads it (selection.is_budget): "3" is 3 blocks, "0.25" a quarter of
# them, and "3.0", a float that is no fraction, is refused as the callback refuses it.
_fraction_or_count = _checked_number(_int_or_float, is_budget, "a fraction in (0, 1) or a block count >= 1", name="amount")
_positive_int = _checked_number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked_number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked_number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_unit_float = _checked_number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _add_common(parser: argparse.ArgumentParser, out_default: str | None) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights' dtype for calibration and evaluation (default: auto, bfloat16 on a CPU that runs it "
                             "natively and float32 on one that does not, where bf16 is several times slower)")
    parser.add_argument("--device", default="cpu",
                        help="where the model computes: cpu (default), cuda, cuda:N, or auto (accelerate's device_map='auto': "
                             "the blocks spread over the visible GPUs; the CPU when there is none)")
    parser.add_argument("--out", default=out_default, help=f"output directory (default: {out_default})")
    parser.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_calibration(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", default="wiki",
                        help="calibration text: a bundled name (wiki, c4, tinystories, lambada) or a UTF-8 text file, cut into "
                             "documents at blank lines; only its calibration split is read (about 4 documents in 5, by the "
                             "hash rule of lorp_lightning.data), from its first window on (default: wiki)")
    parser.add_argument("--windows", type=_positive_int, default=32, help="calibration windows (default: 32)")
    parser.add_argument("--window", type=_positive_int, default=512, help="tokens per window (default: 512)")
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="calibration batch size (default: 4)")
    parser.add_argument("--stats", help="reuse statistics saved by `lorp analyze` (stats.pt) instead of calibrating")


def _add_evaluation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-text", default="wiki", help="held-out text for perplexity: a bundled name (its held-out split) or a text file (all of it; "
                             "of the --text file, its held-out split only) (default: wiki)")
    parser.add_argument("--eval-windows", type=_positive_int, default=40, help="evaluation windows of --window tokens (default: 40)")
    parser.add_argument("--speed-repeats", type=_positive_int, default=5, help="repeats of the interleaved speed runs (default: 5)")
    parser.add_argument("--prompt-tokens", type=_positive_int, default=512, help="prompt length for prefill latency (default: 512)")
    parser.add_argument("--new-tokens", type=_positive_int, default=64, help="tokens generated with the KV cache for decode throughput (default: 64)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze_parser = commands.add_parser("analyze", help="calibration statistics, RLS, K, clusters and a heatmap")
    analyze_parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    _add_calibration(analyze_parser)
    analyze_parser.add_argument("--num-clusters", type=_positive_int, help="force K instead of deriving it from the RLS")
    analyze_parser.add_argument("--seed", type=int, default=0, help="spectral clustering seed (default: 0)")
    _add_common(analyze_parser, "lorp-analysis")

    prune_parser = commands.add_parser("prune", help="analyze, select, prune, save, and evaluate dense against pruned")
    prune_parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    prune_parser.add_argument("--amount", type=_fraction_or_count, default=0.25, help="fraction of the blocks in (0, 1), or a block count (default: 0.25)")
    prune_parser.add_argument("--method", default=DEFAULT_METHOD,
                              help=f"{DEFAULT_METHOD} (the default: the locality analysis's candidate plans checked and improved on "
                                   "the calibration loss of the first 8 calibration windows), lorp (the paper's method, as published), "
                                   "lorp_checked, sleb, ppl, shortgpt, streamline, angular, random or last")
    prune_parser.add_argument("--num-clusters", type=_positive_int, help="lorp: force K instead of deriving it from the RLS")
    prune_parser.add_argument("--compensate", action="store_true",
                              help="fold a training-free correction of the stream's scale at each gap into the kept weights, "
                                   "its strength chosen on the calibration loss of the first 8 calibration windows "
                                   "(docs/method.md, Compensation)")
    prune_parser.add_argument("--rounds", type=_positive_int, default=1,
                              help="select the budget in R rounds, the statistics collected again on the partly pruned "
                                   "(and, with --compensate, compensated) model between rounds (docs/method.md, Rounds; "
                                   "default: 1, one shot)")
    prune_parser.add_argument("--seed", type=int, default=0, help="clustering / random seed (default: 0)")
    _add_calibration(prune_parser)
    _add_evaluation(prune_parser)
    prune_parser.add_argument("--heal-steps", type=_non_negative_int, default=0,
                              help="heal the pruned model for N steps (LoRA, on the calibration split of --text) before "
                                   "evaluating and saving it; see `lorp heal` (default: 0, no healing)")
    prune_parser.add_argument("--distill", action="store_true",
                              help="heal by distillation from the dense model just pruned (KL between its next-token "
                                   "distributions and the pruned model's; no second load) instead of the next-token loss; "
                                   "needs --heal-steps")
    prune_parser.add_argument("--lm-weight", type=_unit_float, default=None,
                              help="with --distill: the share of the next-token loss mixed into the distillation loss, in "
                                   "[0, 1] (default: 0, pure distillation)")
    _add_common(prune_parser, "pruned/MODEL-METHOD-AMOUNT")

    compare_parser = commands.add_parser("compare", help="every method at every budget, from one calibration pass")
    compare_parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    compare_parser.add_argument("--amounts", default="0.125,0.25,0.33", help="comma-separated budgets (default: 0.125,0.25,0.33)")
    compare_parser.add_argument("--methods", default=",".join(COMPARED),
                                help=f"comma-separated methods (default: {','.join(COMPARED)}; sleb, left out, checks about 4x as "
                                     "many plans as lorp_search)")
    compare_parser.add_argument("--seed", type=int, default=0)
    _add_calibration(compare_parser)
    compare_parser.add_argument("--eval-text", default="wiki")
    compare_parser.add_argument("--eval-windows", type=_positive_int, default=40)
    _add_common(compare_parser, "lorp-compare")

    evaluate_parser = commands.add_parser("eval", help="perplexity, size, speed and memory of one model")
    evaluate_parser.add_argument("model", help=f"{MODEL_HELP}; e.g. the directory `lorp prune` wrote")
    evaluate_parser.add_argument("--window", type=_positive_int, default=512)
    _add_evaluation(evaluate_parser)
    evaluate_parser.add_argument("--texts", default=None, help="comma-separated held-out texts (bundled names or files); default: --eval-text")
    evaluate_parser.add_argument("--tasks", default=None,
                                 help="zero-shot tasks through lm-evaluation-harness: 'all' or a comma-separated subset of "
                                      "arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa,rte,copa,piqa "
                                      "(default: none; the full sets take hours on a CPU, see --limit)")
    evaluate_parser.add_argument("--limit", type=_positive_int, default=None, help="zero-shot: the first N documents of each task (default: all)")
    evaluate_parser.add_argument("--zero-shot-batch-size", type=_positive_int, default=8, help="zero-shot batch size (default: 8)")
    _add_common(evaluate_parser, "lorp-eval")

    heal_parser = commands.add_parser("heal", help="heal a pruned model by a short training run on calibration text, merge, save")
    heal_parser.add_argument("model", help="directory of a pruned model (the output of `lorp prune`)")
    heal_parser.add_argument("--steps", type=_positive_int, default=200, help="optimizer steps (default: 200)")
    heal_parser.add_argument("--mode", choices=["lora", "adjacent"], default="lora",
                             help="lora: adapters on every block, merged at the end; adjacent: train the blocks next to the "
                                  "removed ones, the final norm and the head (needs --dtype float32) (default: lora)")
    heal_parser.add_argument("--rank", type=_positive_int, default=None, help="LoRA rank (default: 8)")
    heal_parser.add_argument("--alpha", type=_positive_float, default=None, help="LoRA alpha; the update is scaled by alpha/rank (default: 16)")
    heal_parser.add_argument("--target-modules", default=None,
                             help="comma-separated linear layers of the blocks that get adapters, e.g. q_proj,v_proj (default: all)")
    heal_parser.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate (default: 1e-3 for lora, 1e-4 for adjacent)")
    heal_parser.add_argument("--text", default="wiki", help="training text: a bundled name (wiki, c4, tinystories, lambada) or a UTF-8 "
                                                             "text file, cut into documents at blank lines; only its calibration split "
                                                             "is used (default: wiki)")
    heal_parser.add_argument("--window", type=_positive_int, default=256, help="tokens per training window (default: 256)")
    heal_parser.add_argument("--batch-size", type=_positive_int, default=4, help="training windows per step (default: 4)")
    heal_parser.add_argument("--max-minutes", type=_positive_float, default=None, help="a wall-clock budget: training stops before a step that would overrun it, and the learning rate decays over it (default: none, --steps alone)")
    heal_parser.add_argument("--seed", type=int, default=0, help="adapter initialisation and window order (default: 0)")
    heal_parser.add_argument("--teacher", metavar="MODEL", default=None,
                             help=f"heal by distillation from this model (KL between its next-token distributions and the "
                                  f"student's) instead of the next-token loss: the dense model DIR was pruned from, or any "
                                  f"causal LM with the same tokenizer, loaded in --dtype on --device; {MODEL_HELP}")
    heal_parser.add_argument("--lm-weight", type=_unit_float, default=None,
                             help="with --teacher: the share of the next-token loss mixed into the distillation loss, in "
                                  "[0, 1] (default: 0, pure distillation)")
    heal_parser.add_argument("--eval-text", default="wiki", help="held-out text for perplexity before and after: a bundled name or a text file (default: wiki)")
    heal_parser.add_argument("--eval-windows", type=_non_negative_int, default=40, help="evaluation windows of --eval-window tokens; 0 skips the evaluation (default: 40)")
    heal_parser.add_argument("--eval-window", type=_positive_int, default=512, help="tokens per evaluation window (default: 512)")
    _add_common(heal_parser, "DIR-healed")

    apply_parser = commands.add_parser("apply", help="prune a saved checkpoint on disk by a plan, tensor by tensor, without loading it")
    apply_parser.add_argument("plan", metavar="PLAN",
                              help="the blocks to remove, e.g. 12,13,14 (the checkpoint's numbering), or a saved plan: the "
                                   "report.json of `lorp prune` (or its output directory), or a file of PruningPlan.to_json()")
    apply_parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                              help="a Hugging Face model directory with safetensors weights (model.safetensors, or "
                                   "model.safetensors.index.json and its shards); only read")
    apply_parser.add_argument("--out", required=True, help="output directory for the pruned checkpoint")
    apply_parser.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    return parser


# --------------------------------------------------------------------------- helpers


def _output(path: str, overwrite: bool):
    """The command's output directory (see ``OutputDirectory``); one line if it exists."""
    from lorp_lightning._io import OutputDirectory

    try:
        return OutputDirectory(path, overwrite)
    except FileExistsError as error:
        raise UsageError(f"{error}; pass --overwrite to replace it or --out to choose another") from error


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from lorp_lightning._versions import __version__

    return {"torch": torch.__version__, "transformers": transformers.__version__, "lorp_lightning": __version__}


def _resolve_dtype(args) -> None:
    """Check ``--device`` and turn ``--dtype auto`` into a dtype, once per command, and say which and why on one line."""
    from lorp_lightning.assets import check_device, checkpoint_dtype, compute_device
    from lorp_lightning.precision import DtypeChoice, choose_dtype

    if not hasattr(args, "dtype"):  # a command that loads no model
        return
    try:
        args.device = check_device(args.device)
    except ValueError as error:
        raise UsageError(str(error).replace("device=", "--device ", 1)) from error
    on = compute_device(args.device)
    if args.dtype == "auto" and getattr(args, "mode", None) == "adjacent":
        import torch

        choice = DtypeChoice(torch.float32, "auto: --mode adjacent trains the block weights, which needs float32")
    else:
        try:
            saved = checkpoint_dtype(args.model) if args.dtype == "auto" and on.startswith("cuda") else None
            choice = choose_dtype(args.dtype, device=on, checkpoint_dtype=saved)
        except ValueError as error:  # a bad LORP_DTYPE, or a model that cannot be found
            raise UsageError(str(error)) from error
    args.dtype = choice.name
    print(choice)


def _load(model: str, dtype: str, quiet: bool, device: str = "cpu"):
    from lorp_lightning.assets import load_model

    try:
        return load_model(model, dtype=dtype, progress=not quiet, device=device)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _eval_text(name_or_path: str, calibration: str | None = None) -> str:
    """The held-out text of ``--eval-text``: a bundled text's held-out split, or a whole file, except
    the file that is also the calibration ``--text``, of which only the held-out split is read."""
    from lorp_lightning.assets import BUNDLED_TEXTS, load_text
    from lorp_lightning.data import text_documents

    if name_or_path in BUNDLED_TEXTS:
        return load_text(name_or_path, "heldout")
    path = Path(name_or_path)
    if not path.is_file():
        raise UsageError(f"unknown evaluation text {name_or_path!r}: not a bundled text ({', '.join(BUNDLED_TEXTS)}) nor a file")
    if calibration is None or not Path(calibration).is_file() or Path(calibration).resolve() != path.resolve():
        return path.read_text(encoding="utf-8")
    documents = text_documents(name_or_path, "heldout")
    if not documents:
        raise UsageError(f"--eval-text {name_or_path!r} is also --text, and has no held-out documents to measure on "
                         "(about 1 in 5 paragraphs is held out); give another --eval-text")
    print(f"eval text: the held-out split of {name_or_path} ({len(documents)} documents), as it is also --text")
    return "\n\n".join(documents)


def _calibration_text(name_or_path: str, use: str) -> str:
    """The calibration split of ``--text`` (a bundled name or a text file), its documents joined by
    blank lines; ``use`` ("calibration", "training") names its role in the error."""
    from lorp_lightning.data import text_documents

    try:
        documents = text_documents(name_or_path, "calibration")
    except ValueError as error:  # neither a bundled text nor a file
        raise UsageError(f"unknown {use} text {name_or_path!r} (--text): {error}") from error
    if not documents:
        raise UsageError(f"--text {name_or_path!r} has no calibration documents (a file is cut into documents at blank "
                         "lines, and about 1 in 5 is held out); give a file with more paragraphs")
    return "\n\n".join(documents)


def _calibration_windows(tokenizer, text: str, window: int, count: int):
    """The first ``count`` windows of ``window`` tokens of the calibration split of ``text`` (--text)."""
    from lorp_lightning.evaluation import token_windows

    try:
        windows = token_windows(tokenizer, _calibration_text(text, "calibration"), window=window)
    except ValueError as error:  # shorter than one window
        raise UsageError(f"the calibration split of --text {text!r}: {error}; use a smaller --window or a longer text") from error
    if windows.shape[0] < count:
        raise UsageError(f"--windows {count} but the calibration split of --text {text!r} has only "
                         f"{windows.shape[0]} windows of {window} tokens; ask for at most {windows.shape[0]}")
    return windows[:count]


def _calibrate(model, tokenizer, *, stats_file: str | None, text: str, window: int, count: int, batch_size: int,
               quiet: bool):
    """The statistics: read from ``stats_file`` (--stats), or one pass over the calibration windows; and its seconds."""
    from lorp_lightning.stats import LayerStats, collect_layer_stats

    if stats_file:
        stats = LayerStats.load(stats_file)
        from lorp_lightning.architectures import decoder_layers

        if stats.num_layers != len(decoder_layers(model)):
            raise UsageError(f"--stats {stats_file} holds statistics of {stats.num_layers} blocks; the model has {len(decoder_layers(model))}")
        return stats, 0.0
    windows = _calibration_windows(tokenizer, text, window, count)
    start = time.perf_counter()
    stats = collect_layer_stats(model, windows.split(batch_size), progress=not quiet)
    return stats, time.perf_counter() - start


def _check_method(method: str) -> None:
    from lorp_lightning.methods import METHODS

    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")


def _select(stats, amount, method, *, seed: int, quiet: bool, model=None, windows=None, num_clusters=None,
            compensate: bool = False, rounds: int = 1):
    """The plan of ``method``; a method that tries plans on the model checks them on ``windows``
    (the calibration windows of --text), the others read ``stats`` alone (with ``compensate``, the
    strength is checked on ``windows`` too; with ``rounds`` > 1, later rounds collect statistics on them)."""
    from lorp_lightning.methods import get_method, select_layers

    on_model = get_method(method).reads_model or compensate or rounds > 1
    try:
        return select_layers(stats, amount, method=method, num_clusters=num_clusters, seed=seed,
                             model=model if on_model else None, windows=windows if on_model else None,
                             progress=not quiet, compensate=compensate, rounds=rounds)
    except ValueError as error:
        raise UsageError(str(error).replace("num_clusters", "--num-clusters").replace("method=", "--method ")
                         .replace("compensate=True", "--compensate").replace("rounds=", "--rounds ")) from error


def _check_windows(methods: list[str], tokenizer, text: str, window: int, count: int, on_model: bool = False):
    """The calibration windows of --text, read once, if one of ``methods`` tries plans on the model (or
    ``on_model``: compensation checks its strength, or rounds collect statistics); else None."""
    from lorp_lightning.methods import get_method

    if not on_model and not any(get_method(method).reads_model for method in methods):
        return None
    return _calibration_windows(tokenizer, text, window, count)


def _stats_summary(stats, analysis_plan) -> dict[str, Any]:
    return {
        "num_layers": stats.num_layers,
        "num_tokens": stats.num_tokens,
        "num_sequences": stats.num_sequences,
        "rls": analysis_plan.rls,
        "num_clusters": analysis_plan.num_clusters,
        "labels": analysis_plan.labels,
    }


# --------------------------------------------------------------------------- commands


def analyze(*, model: str, out: str, overwrite: bool, dtype: str, device: str, quiet: bool, text: str, windows: int,
            window: int, batch_size: int, stats: str | None, seed: int, num_clusters: int | None) -> dict:
    """``lorp analyze``: the statistics of ``model`` (one calibration pass, or read from ``stats``), its RLS, K and
    clusters, and a heatmap, written to ``out``; the report."""
    from lorp_lightning.plots import save_similarity_heatmap

    with _output(out, overwrite) as output:
        lm, tokenizer = _load(model, dtype, quiet, device)
        layer_stats, seconds = _calibrate(lm, tokenizer, stats_file=stats, text=text, window=window, count=windows,
                                          batch_size=batch_size, quiet=quiet)
        plan = _select(layer_stats, 1, "lorp", seed=seed, quiet=quiet, num_clusters=num_clusters)
        layer_stats.save(output.path / "stats.pt")
        save_similarity_heatmap(layer_stats, output.path / "similarity.png", labels=plan.labels,
                                title=f"{model}: RLS {plan.rls:.3f}, K {plan.num_clusters}")
        report = {"command": "analyze", "model": model, "dtype": dtype, "device": device,
                  "calibration": {"text": text, "windows": windows, "window": window, "seconds": seconds, "stats_file": stats},
                  "statistics": _stats_summary(layer_stats, plan), "versions": _versions()}
        write_json(output.path / "report.json", report)
    final = output.final
    print(f"{model}: {layer_stats.num_layers} blocks, {layer_stats.num_tokens} calibration tokens")
    print(f"RLS {plan.rls:.3f}  ->  K {plan.num_clusters}")
    print(f"clusters: {format_clusters(plan.labels)}")
    print(f"wrote {final}/stats.pt, report.json, similarity.png")
    return report


def _eval_windows(tokenizer, eval_text: str, text: str | None, window: int, count: int):
    """The held-out windows of ``eval_text`` (--eval-text; ``text`` is --text, whose held-out split alone
    is read when the two are one file), ``window`` tokens each, at most ``count``."""
    from lorp_lightning.evaluation import token_windows

    return token_windows(tokenizer, _eval_text(eval_text, text), window=window, max_windows=count)


def _evaluate(models: dict, windows, *, quiet: bool, prompt_tokens: int, new_tokens: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Perplexity on ``windows``, size, FLOPs, and speed measured side by side, for each model."""
    from lorp_lightning.evaluation import matmul_flops_per_token, measure_speed, num_parameters, perplexity

    results: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        results[name] = {
            "perplexity": perplexity(model, windows, progress=not quiet),
            "num_parameters": num_parameters(model),
            "num_layers": model.config.get_text_config(decoder=True).num_hidden_layers,
            "matmul_flops_per_token": matmul_flops_per_token(model),
        }
    speed = measure_speed(models, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats)
    for name in models:
        results[name].update(speed[name])
    return results


def prune(*, model: str, out: str, overwrite: bool, dtype: str, device: str, quiet: bool, amount: int | float, method: str,
          num_clusters: int | None, seed: int, text: str, windows: int, window: int, batch_size: int, stats: str | None,
          eval_text: str, eval_windows: int, speed_repeats: int, prompt_tokens: int, new_tokens: int, heal_steps: int,
          distill: bool, lm_weight: float | None, compensate: bool = False, rounds: int = 1) -> dict:
    """``lorp prune``: the statistics, the plan of ``method`` for ``amount`` (compensated with ``compensate``,
    in ``rounds`` rounds), the pruned model (healed for
    ``heal_steps`` first, by distillation from the dense model with ``distill``), dense and pruned measured side
    by side, the pruned model and the report saved to ``out`` (``"pruned/MODEL-METHOD-AMOUNT"``: named from
    them); the report."""
    from lorp_lightning.surgery import prune_layers

    _check_method(method)
    if distill and not heal_steps:
        raise UsageError("--distill heals by distillation from the dense model, which needs --heal-steps N (N >= 1)")
    if lm_weight is not None and not distill:
        raise UsageError(f"--lm-weight {lm_weight} mixes the next-token loss into distillation; it needs --distill")
    if rounds > 1 and heal_steps and heal_steps < rounds:
        raise UsageError(f"--heal-steps {heal_steps} are split over the --rounds {rounds}, each round healed after its "
                         f"pruning: give each round at least one (--heal-steps >= {rounds})")
    if heal_steps:  # healing trains on --text's calibration split, also when --stats spares the calibration
        _calibration_text(text, "calibration")
    if out == "pruned/MODEL-METHOD-AMOUNT":
        out = f"pruned/{Path(model).name}-{method}-{amount}"
    with _output(out, overwrite) as output:
        timings = {}
        start = time.perf_counter()
        dense, tokenizer = _load(model, dtype, quiet, device)
        timings["load_seconds"] = time.perf_counter() - start
        if compensate:  # a family where no fold is exact: refused before the calibration pass
            from lorp_lightning.compensation import check_compensable

            try:
                check_compensable(dense)
            except ValueError as error:
                raise UsageError(f"--compensate: {error}") from error
        layer_stats, timings["calibration_seconds"] = _calibrate(dense, tokenizer, stats_file=stats, text=text, window=window,
                                                                 count=windows, batch_size=batch_size, quiet=quiet)
        analysis = _select(layer_stats, 1, "lorp", seed=seed, quiet=quiet)
        calibration = _check_windows([method], tokenizer, text, window, windows, compensate or rounds > 1)
        held_out = _eval_windows(tokenizer, eval_text, text, window, eval_windows)
        teacher = {"teacher": dense, "teacher_name": model, "lm_weight": lm_weight} if distill else {}  # still in memory
        healing = None
        if rounds > 1 and heal_steps:  # progressive: each round healed before the next is selected
            start = time.perf_counter()
            pruned = copy.deepcopy(dense)
            plan, healing = _prune_and_heal(pruned, tokenizer, layer_stats, amount, method, quiet=quiet, rounds=rounds,
                                            steps=heal_steps, windows=calibration, seed=seed, compensate=compensate,
                                            num_clusters=num_clusters, text=text, window=window, batch_size=batch_size,
                                            **teacher)
            timings["selection_seconds"] = plan.cost["seconds"]
            timings["heal_seconds"] = sum(record["seconds"] for record in healing["records"])
            timings["prune_seconds"] = time.perf_counter() - start - timings["selection_seconds"] - timings["heal_seconds"]
        else:
            start = time.perf_counter()
            plan = _select(layer_stats, amount, method, seed=seed, quiet=quiet, model=dense, compensate=compensate,
                           rounds=rounds, windows=calibration, num_clusters=num_clusters)
            timings["selection_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            pruned = prune_layers(dense, plan, inplace=False)
            timings["prune_seconds"] = time.perf_counter() - start
        if heal_steps and healing is None:
            healing = _heal_pruned(pruned, tokenizer, held_out, quiet=quiet, steps=heal_steps, text=text,
                                   window=window, batch_size=batch_size, seed=seed, **teacher)
            timings["heal_seconds"] = healing["record"]["seconds"]
        start = time.perf_counter()
        metrics = _evaluate({"dense": dense, "pruned": pruned}, held_out, quiet=quiet, prompt_tokens=prompt_tokens,
                            new_tokens=new_tokens, repeats=speed_repeats)
        timings["evaluation_seconds"] = time.perf_counter() - start
        eval_setup = {"text": eval_text, "split": "heldout", "windows": int(held_out.shape[0]), "window": window}
        pruned.save_pretrained(output.path)
        tokenizer.save_pretrained(output.path)
        report = {"command": "prune", "model": model, "dtype": dtype, "device": device, "plan": plan.to_dict(),
                  "calibration": {"text": text, "windows": windows, "window": window, "stats_file": stats},
                  "statistics": _stats_summary(layer_stats, analysis), "evaluation": eval_setup, "metrics": metrics,
                  "timings": timings, "versions": _versions()}
        if healing is not None:
            report["healing"] = healing
        write_json(output.path / "report.json", report)
    final = output.final
    print(plan)
    if healing is not None and "records" in healing:  # one healing per round
        for r, record in enumerate(healing["records"], 1):
            print(f"round {r}: " + _healing_line(record, None, metrics["pruned"]["perplexity"] if r == len(healing["records"])
                                                 else None))
    elif healing is not None:
        print(_healing_line(healing["record"], healing["perplexity_before_healing"], metrics["pruned"]["perplexity"]))
    print(_comparison_table(metrics))
    print(f"saved the pruned model to {final} (report.json beside it)")
    return report


def _comparison_table(metrics: dict[str, dict[str, Any]]) -> str:
    dense, pruned = metrics["dense"], metrics["pruned"]
    rows = [
        ("blocks", "num_layers", "{:d}", None),
        ("parameters (M)", "num_parameters", "{:.1f}", 1e-6),
        ("held-out perplexity", "perplexity", "{:.2f}", None),
        ("prefill latency (ms)", "prefill_seconds", "{:.1f}", 1e3),
        ("decode throughput (tokens/s)", "decode_tokens_per_second", "{:.1f}", None),
        ("peak memory (MB)", "peak_memory_mb", "{:.0f}", None),
    ]
    lines = [f"{'':34} {'dense':>12} {'pruned':>12} {'pruned/dense':>13}"]
    for label, key, fmt, scale in rows:
        a, b = dense[key], pruned[key]
        if isinstance(a, str) or isinstance(b, str):
            lines.append(f"{label:34} {a!s:>12} {b!s:>12} {'':>13}")
            continue
        shown_a, shown_b = (a * scale, b * scale) if scale else (a, b)
        lines.append(f"{label:34} {fmt.format(shown_a):>12} {fmt.format(shown_b):>12} {b / a:>13.3f}")
    ideal = dense["matmul_flops_per_token"] / pruned["matmul_flops_per_token"]
    measured_prefill = dense["prefill_seconds"] / pruned["prefill_seconds"]
    measured_decode = pruned["decode_tokens_per_second"] / dense["decode_tokens_per_second"]
    lines.append(f"speed-up: prefill {measured_prefill:.2f}x, decode {measured_decode:.2f}x; ideal from matmul FLOPs per token {ideal:.2f}x")
    return "\n".join(lines)


def compare(*, model: str, out: str, overwrite: bool, dtype: str, device: str, quiet: bool, amounts: str, methods: str,
            seed: int, text: str, windows: int, window: int, batch_size: int, stats: str | None, eval_text: str,
            eval_windows: int) -> dict:
    """``lorp compare``: every method of ``methods`` at every budget of ``amounts`` (comma-separated), from one
    calibration pass, by held-out perplexity; a report and a picture written to ``out``; the report."""
    from lorp_lightning.evaluation import perplexity
    from lorp_lightning.plots import save_perplexity_by_budget
    from lorp_lightning.surgery import prune_layers

    method_names = [m for m in methods.split(",") if m]
    for method in method_names:
        _check_method(method)
    budgets = [_fraction_or_count_or_usage(a) for a in amounts.split(",") if a]
    with _output(out, overwrite) as output:
        dense, tokenizer = _load(model, dtype, quiet, device)
        layer_stats, seconds = _calibrate(dense, tokenizer, stats_file=stats, text=text, window=window, count=windows,
                                          batch_size=batch_size, quiet=quiet)
        check_windows = _check_windows(method_names, tokenizer, text, window, windows)
        held_out = _eval_windows(tokenizer, eval_text, text, window, eval_windows)
        dense_ppl = perplexity(dense, held_out)
        rows = []
        for amount in budgets:
            for method in method_names:
                plan = _select(layer_stats, amount, method, seed=seed, quiet=quiet, model=dense, windows=check_windows)
                pruned = prune_layers(dense, plan, inplace=False)
                rows.append({"amount": amount, "method": method, "pruned": plan.pruned, "num_pruned": len(plan.pruned),
                             "perplexity": perplexity(pruned, held_out)})
                del pruned
        analysis = _select(layer_stats, 1, "lorp", seed=seed, quiet=quiet)
        report = {"command": "compare", "model": model, "dtype": dtype, "device": device, "dense_perplexity": dense_ppl,
                  "calibration": {"text": text, "windows": windows, "window": window, "seconds": seconds},
                  "statistics": _stats_summary(layer_stats, analysis),
                  "evaluation": {"text": eval_text, "split": "heldout", "windows": int(held_out.shape[0]), "window": window},
                  "results": rows, "versions": _versions()}
        write_json(output.path / "report.json", report)
        save_perplexity_by_budget(rows, dense_ppl, output.path / "perplexity.png", title=model,
                                  ylabel=f"held-out perplexity ({eval_text})")
    final = output.final
    print(f"{model}: dense perplexity {dense_ppl:.2f} on {eval_text} (held-out)")
    print(f"{'amount':>7} {'blocks':>6} " + " ".join(f"{m:>11}" for m in method_names))
    for amount in budgets:
        cells = {r["method"]: r for r in rows if r["amount"] == amount}
        ppl = [cells[m]["perplexity"] for m in method_names]
        print(f"{amount!s:>7} {cells[method_names[0]]['num_pruned']:>6} " + " ".join(f"{p:>11.2f}" for p in ppl))
    print(f"wrote {final}/report.json, perplexity.png")
    return report


def _fraction_or_count_or_usage(text: str):
    try:
        return _fraction_or_count(text)
    except argparse.ArgumentTypeError as error:
        raise UsageError(str(error)) from error


def evaluate(*, model: str, out: str, overwrite: bool, dtype: str, device: str, quiet: bool, window: int, eval_text: str,
             eval_windows: int, speed_repeats: int, prompt_tokens: int, new_tokens: int, texts: str | None,
             tasks: str | None, limit: int | None, zero_shot_batch_size: int) -> dict:
    """``lorp eval``: held-out perplexity of ``model`` on each of ``texts`` (comma-separated; default ``eval_text``),
    the zero-shot ``tasks``, size, speed and memory; a report written to ``out``; the report."""
    from lorp_lightning.evaluation import matmul_flops_per_token, measure_speed, num_parameters, perplexity, token_windows

    task_names = _zero_shot_tasks(tasks)
    with _output(out, overwrite) as output:
        lm, tokenizer = _load(model, dtype, quiet, device)
        ppl = {}
        for name in (texts or eval_text).split(","):
            held_out = token_windows(tokenizer, _eval_text(name), window=window, max_windows=eval_windows)
            ppl[name] = perplexity(lm, held_out, progress=not quiet)
        zero_shot = None
        if task_names:
            from lorp_lightning.zeroshot import evaluate_zero_shot

            zero_shot = evaluate_zero_shot(lm, tokenizer, tasks=task_names, limit=limit, batch_size=zero_shot_batch_size,
                                           progress=not quiet)
        speed = measure_speed({"model": lm}, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=speed_repeats)["model"]
        metrics = {"perplexity": ppl, "num_parameters": num_parameters(lm),
                   "num_layers": lm.config.get_text_config(decoder=True).num_hidden_layers,
                   "matmul_flops_per_token": matmul_flops_per_token(lm), **speed}
        if zero_shot is not None:
            metrics["zero_shot"] = zero_shot
        report = {"command": "eval", "model": model, "dtype": dtype, "device": device, "window": window,
                  "eval_windows": eval_windows, "zero_shot_limit": limit, "metrics": metrics, "versions": _versions()}
        write_json(output.path / "report.json", report)
    final = output.final
    print(f"{model}: {metrics['num_layers']} blocks, {metrics['num_parameters'] / 1e6:.1f} M parameters")
    for name, value in ppl.items():
        print(f"  held-out perplexity on {name}: {value if isinstance(value, str) else f'{value:.2f}'}")
    for task, figures in (zero_shot or {}).items():
        if task == "average":
            print(f"  zero-shot average acc over {figures['num_tasks']} tasks: {figures['acc']:.4f}")
        else:
            norm = f", acc_norm {figures['acc_norm']:.4f}" if "acc_norm" in figures else ""
            print(f"  {task}: acc {figures['acc']:.4f}{norm} ({figures['num_examples']} documents)")
    print(f"  prefill latency ({prompt_tokens} tokens): {speed['prefill_seconds'] * 1e3:.1f} ms; decode: {speed['decode_tokens_per_second']:.1f} tokens/s; peak memory {speed['peak_memory_mb']:.0f} MB")
    print(f"wrote {final}/report.json")
    return report


def _zero_shot_tasks(spec: str | None) -> tuple[str, ...]:
    """The zero-shot tasks named by ``--tasks``, checked before any work is done."""
    if not spec:
        return ()
    try:
        from lorp_lightning.zeroshot import ZERO_SHOT_TASKS
    except ImportError as error:
        raise UsageError(f"zero-shot tasks need lm-evaluation-harness: pip install 'lorp_lightning[eval]' ({error})") from error
    tasks = ZERO_SHOT_TASKS if spec == "all" else tuple(t for t in spec.split(",") if t)
    unknown = [t for t in tasks if t not in ZERO_SHOT_TASKS]
    if unknown:
        raise UsageError(f"unknown zero-shot task {unknown[0]!r}; tasks: all, {', '.join(ZERO_SHOT_TASKS)}")
    return tasks


def _heal_pruned(pruned, tokenizer, eval_windows, *, quiet: bool, **healing) -> dict:
    """`lorp prune --heal-steps N [--distill]`: the pruned model's perplexity on ``eval_windows``, then
    ``heal(pruned, tokenizer, **healing)`` (LoRA on the calibration text, by the next-token loss or, with a
    ``teacher``, by distillation)."""
    from lorp_lightning.evaluation import perplexity

    before = perplexity(pruned, eval_windows, progress=not quiet)
    record, losses = _run_healing(pruned, tokenizer, quiet, **healing)
    return {"record": record, "losses": losses, "perplexity_before_healing": before}


def _prune_and_heal(model, tokenizer, stats, amount, method, *, quiet: bool, **options) -> tuple[Any, dict]:
    """`lorp prune --rounds R --heal-steps N`: ``healing.prune_and_heal`` (Lightning's progress bar unless quiet); the
    plan, and the healing records of the rounds with the loss of every step."""

    from lorp_lightning.callbacks.heal import LossCurve
    from lorp_lightning.healing.record import healing_records
    from lorp_lightning.recipes.prune_and_heal import prune_and_heal

    curve = LossCurve()
    before = len(healing_records(model))
    try:
        with _lightning_warnings_only():
            plan = prune_and_heal(model, tokenizer, stats, amount, method=method, progress=not quiet,
                                          trainer_options={"callbacks": [curve]}, **options)
    except ValueError as error:
        raise UsageError(str(error).replace("num_clusters", "--num-clusters").replace("rounds=", "--rounds ")
                         .replace("steps=", "--heal-steps ")) from error
    return plan, {"records": healing_records(model)[before:], "losses": curve.losses}


@contextlib.contextmanager
def _lightning_warnings_only():
    """Lightning's logger at WARNING inside the ``with`` block: no "GPU available: False" lines around a healing."""
    import logging

    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lightning_logger.setLevel(level)


def _run_healing(model, tokenizer, quiet: bool, **options) -> tuple[dict, list[float]]:
    """heal(model, ...) with Lightning's progress bar (unless quiet); the healing record and the loss of every step."""

    from lorp_lightning.callbacks.heal import LossCurve
    from lorp_lightning.healing.record import healing_records
    from lorp_lightning.recipes.heal import heal  # the recipe, not this module's command of that name

    curve = LossCurve()
    try:
        with _lightning_warnings_only():
            heal(model, tokenizer, progress=not quiet, trainer_options={"callbacks": [curve]}, **options)
    except ValueError as error:
        raise UsageError(str(error)) from error
    return healing_records(model)[-1], curve.losses


def _healing_line(record: dict, before, after) -> str:
    """One line: what trained, on how much text, for how long; training loss and held-out perplexity before and after."""
    what = f"LoRA rank {record['rank']}" if record["mode"] == "lora" else f"blocks {record['trained_blocks']}, final norm, head"
    distillation = record.get("distillation")
    how = "" if distillation is None else f" by distillation from {distillation['teacher']}"
    loss = "training loss" if distillation is None else "training loss (KL to the teacher)"
    line = (f"healed for {record['num_steps']} steps{how} ({what}; {record['tokens']} calibration tokens of {record['text']}, "
            f"{record['seconds']:.0f} s): {loss} {record['initial_loss']:.3f} -> {record['final_loss']:.3f}")
    if before is None:
        return line
    def show(x: str | float) -> str:
        return x if isinstance(x, str) else f"{x:.2f}"

    return f"{line}; held-out perplexity {show(before)} -> {show(after)}"


def heal(*, model: str, out: str, overwrite: bool, dtype: str, device: str, quiet: bool, steps: int, mode: str,
         rank: int | None, alpha: float | None, target_modules: str | None, lr: float | None, text: str, window: int,
         batch_size: int, max_minutes: float | None, seed: int, teacher: str | None, lm_weight: float | None,
         eval_text: str, eval_windows: int, eval_window: int) -> dict:
    """``lorp heal``: the pruned model in the directory ``model`` healed (``lorp_lightning.heal``; by distillation
    from ``teacher`` when given), measured before and after on ``eval_windows`` held-out windows (0: not measured),
    and saved with a report to ``out`` (``"DIR-healed"``: beside ``model``); the report."""
    from lorp_lightning.evaluation import perplexity
    from lorp_lightning.surgery import pruning_record

    if out == "DIR-healed":
        out = f"{str(model).rstrip('/')}-healed"
    if mode == "adjacent" and dtype != "float32":
        raise UsageError(f"--mode adjacent trains the block weights themselves and needs --dtype float32 (in {dtype}, "
                         "AdamW's small updates would be lost); or heal with --mode lora")
    if lm_weight is not None and teacher is None:
        raise UsageError(f"--lm-weight {lm_weight} mixes the next-token loss into distillation; it needs --teacher MODEL")
    _calibration_text(text, "training")
    targets = None if target_modules is None else [t for t in target_modules.split(",") if t]
    with _output(out, overwrite) as output:
        student, tokenizer = _load(model, dtype, quiet, device)
        if pruning_record(student) is None:
            raise UsageError(f"{model} holds a model that was not pruned (no lorp_pruning record in its config); "
                             "heal the output directory of `lorp prune`")
        distill = {}
        if teacher is not None:  # loaded and checked before any evaluation or training
            from lorp_lightning.distillation import check_teacher

            teacher_model, teacher_tokenizer = _load(teacher, dtype, quiet, device)
            try:
                check_teacher(student, teacher_model, tokenizer=tokenizer, teacher_tokenizer=teacher_tokenizer)
            except ValueError as error:
                raise UsageError(f"--teacher {teacher}: {error}") from error
            distill = {"teacher": teacher_model, "teacher_tokenizer": teacher_tokenizer, "teacher_name": teacher,
                       "lm_weight": lm_weight}
        held_out = before = after = None
        if eval_windows:
            held_out = _eval_windows(tokenizer, eval_text, text, eval_window, eval_windows)
            before = perplexity(student, held_out, progress=not quiet)
        lora_only = {"rank": rank, "alpha": alpha, "target_modules": targets}  # heal() refuses them for adjacent
        record, losses = _run_healing(
            student, tokenizer, quiet, steps=steps, mode=mode, lr=lr, text=text, window=window, batch_size=batch_size,
            seed=seed, max_seconds=None if max_minutes is None else 60 * max_minutes,
            **{k: v for k, v in lora_only.items() if v is not None}, **distill,
        )
        if held_out is not None:
            after = perplexity(student, held_out, progress=not quiet)
        student.save_pretrained(output.path)
        tokenizer.save_pretrained(output.path)
        report = {"command": "heal", "model": model, "dtype": dtype, "device": device,
                  "teacher": teacher, "healing": record, "losses": losses,
                  "evaluation": None if held_out is None else {"text": eval_text, "split": "heldout",
                                                               "windows": int(held_out.shape[0]), "window": eval_window,
                                                               "perplexity_before": before, "perplexity_after": after},
                  "versions": _versions()}
        write_json(output.path / "report.json", report)
    final = output.final
    print(_healing_line(record, before, after))
    print(f"saved the healed model to {final} (report.json beside it)")
    return report


def apply(*, plan: str, checkpoint: str, out: str, overwrite: bool) -> dict:
    """``lorp apply``: the checkpoint in the directory ``checkpoint`` pruned on disk by ``plan`` (block numbers,
    comma-separated, or a saved plan), tensor by tensor, into ``out``; what was done."""
    import re

    from lorp_lightning.checkpoint import prune_checkpoint

    blocks = [int(b) for b in plan.split(",") if b.strip()] if re.fullmatch(r"[\d\s,]*\d[\d\s,]*", plan) else plan
    try:
        final = prune_checkpoint(blocks, checkpoint, out, overwrite=overwrite)
    except (ValueError, TypeError, NotImplementedError, FileNotFoundError, FileExistsError) as error:
        words = {"plan_or_blocks": "PLAN", "checkpoint_dir": "CHECKPOINT_DIR", "out_dir": "--out", "overwrite=True": "--overwrite"}
        raise UsageError(re.sub("|".join(words), lambda m: words[m.group(0)], str(error))) from error
    record = json.loads((final / "config.json").read_text())["lorp_pruning"]
    removed = record["steps"][-1]["pruned_layers"]
    remaining = record["original_num_layers"] - len(record["pruned_layers"])
    print(f"removed blocks {removed} (original numbering) of {checkpoint}: {remaining} of "
          f"{record['original_num_layers']} blocks remain")
    print(f"saved the pruned checkpoint to {final}")
    return {"command": "apply", "plan": plan, "checkpoint": checkpoint, "out": str(final), "lorp_pruning": record}


COMMANDS = {"analyze": analyze, "prune": prune, "compare": compare, "eval": evaluate, "heal": heal, "apply": apply}
"""Each command of ``lorp``: a plain function whose keyword parameters are the command's arguments (their
defaults are the parser's, ``build_parser``)."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):  # apply has no --quiet (nor --dtype): it copies bytes
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        # A terminated run unwinds like Ctrl-C, so its temporary output folder is removed.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if hasattr(args, "dtype"):
            _resolve_dtype(args)
        COMMANDS[args.command](**{name: value for name, value in vars(args).items() if name != "command"})
    except UsageError as error:
        print(f"lorp {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())

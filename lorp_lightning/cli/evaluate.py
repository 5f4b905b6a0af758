"""``lorp eval``: perplexity, zero-shot tasks, size, speed and memory of one model."""

from __future__ import annotations

import argparse

from lorp_lightning._io import write_json
from lorp_lightning.cli._arguments import MODEL_HELP, UsageError, add_common, add_evaluation, positive_int
from lorp_lightning.cli._shared import check_model_first, held_out_text, load, output_directory, versions


def add_arguments(commands) -> argparse.ArgumentParser:
    """The ``eval`` sub-command's parser, added to ``commands`` (argparse's sub-parsers)."""
    parser = commands.add_parser("eval", help="perplexity, size, speed and memory of one model")
    parser.add_argument("model", help=f"{MODEL_HELP}; e.g. the directory `lorp prune` wrote")
    parser.add_argument("--window", type=positive_int, default=512)
    add_evaluation(parser)
    parser.add_argument(
        "--texts", default=None, help="comma-separated held-out texts (bundled names or files); default: --eval-text"
    )
    parser.add_argument(
        "--tasks",
        default=None,
        help="zero-shot tasks through lm-evaluation-harness: 'all' or a comma-separated subset of "
        "arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa,rte,copa,piqa "
        "(default: none; the full sets take hours on a CPU, see --limit)",
    )
    parser.add_argument(
        "--limit", type=positive_int, default=None, help="zero-shot: the first N documents of each task (default: all)"
    )
    parser.add_argument("--zero-shot-batch-size", type=positive_int, default=8, help="zero-shot batch size (default: 8)")
    add_common(parser, "lorp-eval")
    return parser


def evaluate(
    *,
    model: str,
    out: str,
    overwrite: bool,
    dtype: str,
    device: str,
    quiet: bool,
    window: int,
    eval_text: str,
    eval_windows: int,
    speed_repeats: int,
    prompt_tokens: int,
    new_tokens: int,
    texts: str | None,
    tasks: str | None,
    limit: int | None,
    zero_shot_batch_size: int,
) -> dict:
    """``lorp eval``: held-out perplexity of ``model`` on each of ``texts`` (comma-separated; default ``eval_text``),
    the zero-shot ``tasks``, size, speed and memory; a report written to ``out``; the report."""
    from lorp_lightning.evaluation import measure_speed, model_size, perplexity, token_windows

    task_names = _zero_shot_tasks(tasks)
    check_model_first(model, windows={"window": window})
    with output_directory(out, overwrite) as output:
        lm, tokenizer = load(model, dtype, quiet, device)
        ppl = {}
        for name in (texts or eval_text).split(","):
            held_out = token_windows(tokenizer, held_out_text(name), window=window, max_windows=eval_windows)
            ppl[name] = perplexity(lm, held_out, progress=not quiet)
        zero_shot = None
        if task_names:
            from lorp_lightning.zeroshot import evaluate_zero_shot

            zero_shot = evaluate_zero_shot(
                lm, tokenizer, tasks=task_names, limit=limit, batch_size=zero_shot_batch_size, progress=not quiet
            )
        speed = measure_speed({"model": lm}, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=speed_repeats)["model"]
        metrics = {"perplexity": ppl, **model_size(lm), **speed}
        if zero_shot is not None:
            metrics["zero_shot"] = zero_shot
        report = {
            "command": "eval",
            "model": model,
            "dtype": dtype,
            "device": device,
            "window": window,
            "eval_windows": eval_windows,
            "zero_shot_limit": limit,
            "metrics": metrics,
            "versions": versions(),
        }
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
    print(
        f"  prefill latency ({prompt_tokens} tokens): {speed['prefill_seconds'] * 1e3:.1f} ms; "
        f"decode: {speed['decode_tokens_per_second']:.1f} tokens/s; peak memory {speed['peak_memory_mb']:.0f} MB"
    )
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

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
directories are written to a staging folder beside them and renamed at the end, so a failed
run leaves nothing half-written; an existing directory needs ``--overwrite``; a second run
writing the same directory at once is refused (exit status 1), as is a write the disk refuses,
each naming the directory and the cause.

One file per command, each with its ``add_arguments`` and its function side by side: ``analyze.py``,
``prune.py``, ``compare.py``, ``evaluate.py`` (``lorp eval``), ``heal.py``, ``apply.py``; the argument types
and groups they share, and ``UsageError``, in ``_arguments.py``; what several of them do (load, calibrate,
select, evaluate, heal) in ``_shared.py``. A library error that names its parameter (``ParameterError``) is
shown with the command's flag for it, from one table per command (``_arguments.flags``): no message is
rewritten.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading

from lorp_lightning._io import OutputError
from lorp_lightning.cli import analyze, apply, compare, evaluate, heal, prune
from lorp_lightning.cli._arguments import UsageError, flags
from lorp_lightning.cli._shared import COMMAND_LINE, resolve_dtype

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS = {"analyze": analyze, "prune": prune, "compare": compare, "eval": evaluate, "heal": heal, "apply": apply}
"""Each command of ``lorp`` and its module: ``add_arguments`` builds its parser, and the function of the
command's own name (``evaluate`` for ``eval``) runs it with the parsed arguments as keywords."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``lorp``; ``parser.flags[command]`` is each command's table of library parameters to flags."""
    parser = argparse.ArgumentParser(
        prog="lorp",
        description=__doc__.split("\n\nOne file per command")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.flags = {}
    for name, module in COMMANDS.items():
        parser.flags[name] = flags(module.add_arguments(commands), getattr(module, "RENAMED", None))
    return parser


def _run(name: str, arguments: dict) -> None:
    module = COMMANDS[name]
    getattr(module, module.__name__.rpartition(".")[2])(**arguments)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    COMMAND_LINE.set(shlex.join(["lorp", *(sys.argv[1:] if argv is None else argv)]))
    if getattr(args, "quiet", False):  # apply has no --quiet (nor --dtype): it copies bytes
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        # A terminated run unwinds like Ctrl-C, so its temporary output folder is removed.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if hasattr(args, "dtype"):
            resolve_dtype(args)
        _run(args.command, {name: value for name, value in vars(args).items() if name != "command"})
    except UsageError as error:
        flag = parser.flags[args.command].get(error.parameter) if error.parameter else None
        print(f"lorp {args.command}: error: {f'{flag}: ' if flag else ''}{error}", file=sys.stderr)
        return 2
    except OutputError as error:  # the disk refused a write, or another process writes the same output
        print(f"lorp {args.command}: error: {error}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0

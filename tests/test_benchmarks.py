"""The benchmark scripts are checked code: each still starts, and each name it takes from the library exists.

Nothing else imports benchmarks/, so a rename in ``lorp_lightning`` (a name a script imports that is gone)
would go unnoticed until someone ran the script, perhaps for hours. Here every Python script under
benchmarks/ (found by globbing: a new script is covered without a word here) runs its ``--help`` as
``python benchmarks/<folder>/<script>.py --help`` runs it: its own folder first on ``sys.path``, as
``__main__``. A helper module without a command line (no argparse) is imported instead, and must not
do work at import. All of it runs in ONE interpreter, so the suite pays one start and one torch import.
Many scripts import the library inside their functions, which ``--help`` never reaches, so every
``from lorp_lightning... import name`` anywhere in a script (in a string of code it runs in a child
process too), and every import from a module of its own folder, is also resolved: the module imports
and has the name. Shell scripts: ``bash -n``, and every benchmarks/ path they name exists. Last, every
benchmarks/ script a page, a test, a result's command line or a script names exists, so a moved
script leaves no stale path behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
PYTHON_SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in BENCHMARKS.rglob("*.py"))
SHELL_SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for p in BENCHMARKS.rglob("*.sh"))
SCRIPT_PATH = re.compile(r"(?<![\w/.])benchmarks/[\w./-]+\.(?:py|sh)\b")

# Run in one child interpreter: argv = root, file for the results (JSON), then the scripts (paths from root).
# It writes {script: [problem, ...]}; an empty list is a pass.
CHECKER = r'''
import ast, contextlib, importlib, io, json, os, re, runpy, sys, traceback

root, results_file, *scripts = sys.argv[1:]
benchmarks = os.path.join(root, "benchmarks")
base_path = list(sys.path[1:])  # without the child's own "" (the working directory)
code_import = re.compile(r"from\s+(lorp_lightning[\w.]*)\s+import\s+(\w+(?:\s*,\s*\w+)*)|import\s+(lorp_lightning[\w.]*)")


def last_lines(error: BaseException) -> str:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    return " | ".join("".join(lines).strip().splitlines()[-3:])


def has_name(module_name: str, name: str) -> str | None:
    """None if `from module_name import name` works, else why not."""
    try:
        module = importlib.import_module(module_name)
    except BaseException as error:
        return f"cannot import {module_name}: {last_lines(error)}"
    if hasattr(module, name):
        return None
    try:
        importlib.import_module(f"{module_name}.{name}")
        return None
    except ModuleNotFoundError:
        return f"{module_name} has no name {name}"
    except BaseException as error:
        return f"cannot import {module_name}.{name}: {last_lines(error)}"


def docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def imports(tree: ast.AST, folder: str) -> list[str]:
    """Every import from the library, or from a module of the script's folder, that does not resolve."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            ours = node.module.split(".")[0] == "lorp_lightning" or os.path.isfile(os.path.join(folder, node.module + ".py"))
            if ours:
                for alias in node.names:
                    if alias.name != "*" and (why := has_name(node.module, alias.name)):
                        problems.append(f"line {node.lineno}: from {node.module} import {alias.name}: {why}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lorp_lightning":
                    try:
                        importlib.import_module(alias.name)
                    except BaseException as error:
                        problems.append(f"line {node.lineno}: import {alias.name}: {last_lines(error)}")
    skip = docstrings(tree)
    for node in ast.walk(tree):  # code in strings, run in a child process (python -c "from lorp_lightning...")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            for match in code_import.finditer(node.value):
                if match.group(3):
                    try:
                        importlib.import_module(match.group(3))
                    except BaseException as error:
                        problems.append(f"line {node.lineno}: code in a string imports {match.group(3)}: {last_lines(error)}")
                else:
                    for name in re.split(r"\s*,\s*", match.group(2)):
                        if why := has_name(match.group(1), name):
                            problems.append(f"line {node.lineno}: code in a string imports {name} from {match.group(1)}: {why}")
    return problems


def top_level_work(tree: ast.Module) -> list[str]:
    """The statements of a module without a command line that would do work when it is imported."""
    calm = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    work = []
    for node in tree.body:
        if isinstance(node, calm) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(isinstance(n, ast.Call) for n in ast.walk(node)):
            continue
        work.append(f"line {node.lineno}")
    return work


results = {}
for script in scripts:
    path = os.path.join(root, script)
    folder = os.path.dirname(path)
    problems = []
    sys.path[:] = [folder] + base_path  # as `python benchmarks/<folder>/<script>.py` sets it
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        command_line = any(isinstance(n, ast.Attribute) and n.attr == "ArgumentParser" or isinstance(n, ast.Name)
                           and n.id == "ArgumentParser" for n in ast.walk(tree))
        if command_line:
            out, err = io.StringIO(), io.StringIO()
            sys.argv = [path, "--help"]
            code = "returned without exiting"
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    runpy.run_path(path, run_name="__main__")
            except SystemExit as stop:
                code = stop.code or 0
            if code != 0:
                problems.append(f"--help: exit status {code}, not 0; stderr: {err.getvalue().strip()[-600:]}")
            elif not out.getvalue().lstrip().startswith("usage:"):
                problems.append(f"--help printed no usage line: {out.getvalue()[:200]!r}")
        elif work := top_level_work(tree):
            problems.append(f"no argparse command line, yet importing it does work ({', '.join(work)}): give it an "
                            "argparse parser, so that --help can be checked without running it")
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                importlib.import_module(os.path.splitext(os.path.basename(path))[0])
        problems += imports(tree, folder)
    except BaseException as error:
        problems.append(f"{type(error).__name__}: {last_lines(error)}")
    finally:
        for name, module in list(sys.modules.items()):  # the next script imports its folder's modules afresh
            file = getattr(module, "__file__", None) or ""
            if os.path.abspath(file).startswith(benchmarks + os.sep):
                del sys.modules[name]
    results[script] = problems

with open(results_file, "w") as handle:
    json.dump(results, handle)
'''


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict[str, list[str]]:
    """{script: problems} for every Python script, all checked in one child interpreter."""
    results = tmp_path_factory.mktemp("benchmarks") / "results.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "MPLBACKEND": "Agg",
    }
    run = subprocess.run(
        [sys.executable, "-c", CHECKER, str(ROOT), str(results), *PYTHON_SCRIPTS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and results.is_file(), f"the checker itself failed: {run.stderr[-3000:]}"
    return json.loads(results.read_text())


def test_every_benchmark_script_is_found():
    assert PYTHON_SCRIPTS and SHELL_SCRIPTS
    assert {Path(s).parts[1] for s in PYTHON_SCRIPTS + SHELL_SCRIPTS} == {"performance", "decisions", "figures"}, (
        "a script outside benchmarks/performance, decisions or figures: see benchmarks/README.md"
    )


@pytest.mark.parametrize("script", PYTHON_SCRIPTS)
def test_the_script_runs_its_help_and_every_library_name_it_imports_exists(checked, script):
    problems = checked[script]
    assert not problems, f"{script}: " + "; ".join(problems)


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_the_shell_script_parses_and_every_benchmarks_path_it_names_exists(script):
    run = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"{script}: {run.stderr}"
    missing = sorted({p for p in SCRIPT_PATH.findall((ROOT / script).read_text()) if not (ROOT / p).is_file()})
    assert not missing, f"{script} names paths that do not exist: {missing}"


def test_every_benchmarks_script_that_the_repository_names_exists():
    """README, docs, notebooks, tests, the library, the scripts and the commands kept with their results."""
    patterns = [
        "README.md",
        "docs/**/*.md",
        "notebooks/*.ipynb",
        "notebooks/*.py",
        "tests/*.py",
        "lorp_lightning/**/*.py",
        "benchmarks/**/*.py",
        "benchmarks/**/*.sh",
        "benchmarks/**/*.md",
        "benchmarks/results/**/*.txt",
        "benchmarks/results/**/*.json",
        "constraints.txt",
        ".gitignore",
        "setup.sh",
        ".ci/run",
        "mkdocs.yml",
    ]
    stale = {}
    for pattern in patterns:
        for path in ROOT.glob(pattern):
            if path.is_file():
                missing = {p for p in SCRIPT_PATH.findall(path.read_text(errors="replace")) if not (ROOT / p).is_file()}
                if missing:
                    stale[path.relative_to(ROOT).as_posix()] = sorted(missing)
    assert not stale, f"paths of scripts that do not exist (moved or renamed?): {stale}"

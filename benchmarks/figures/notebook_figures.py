"""How far the figures of executed notebooks move from the stored ones: the measurement behind
nbval's figure tolerance (``FIGURE_RTOL`` in notebooks/conftest.py).

    python benchmarks/figures/notebook_figures.py STORED.ipynb RUN.ipynb [RUN.ipynb ...]

For every code cell whose output nbval compares (no ``nbval-ignore-output`` tag), it pairs the
figures of the stored output with those of each run (the same rule as nbval: a figure is a
number with a decimal point or an exponent) and prints the largest relative difference, and
whether the cell passes nbval's comparison. Text or integers that differ (a changed plan, a
different generated text) are printed in full, since no tolerance covers them. The runs are
notebooks executed elsewhere, e.g. by ``benchmarks/performance/portability.sh`` under another kernel path,
thread count or dtype. Exit status 1 when some compared cell would fail.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

_CONFTEST = Path(__file__).resolve().parents[2] / "notebooks" / "conftest.py"


def _figures_module():
    spec = importlib.util.spec_from_file_location("notebook_figures", _CONFTEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compared_outputs(path: Path) -> dict[int, str]:
    """Code-cell number (as nbval counts them) -> the text of its compared outputs."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    out = {}
    for number, cell in enumerate(cells):
        if "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []):
            continue
        texts = []
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                texts.append("".join(output["text"]))
            elif "text/plain" in output.get("data", {}):
                texts.append("".join(output["data"]["text/plain"]))
        out[number] = "".join(texts)
    return out


def _text_and_integers(figures, output: str) -> tuple[list[str], list[str]]:
    """What of an output no tolerance covers: the text between numbers, and the integers."""
    text, numbers = figures.split_figures(output)
    return text, [n for n in numbers if not figures.is_figure(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stored", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    figures = _figures_module()
    stored = compared_outputs(args.stored)
    failed = False
    for run in args.runs:
        computed = compared_outputs(run)
        print(f"{args.stored.name} against {run}")
        largest = 0.0
        for number, text in stored.items():
            other = computed.get(number, "")
            passes = figures.outputs_agree(text, other)
            differences = figures.figure_differences(text, other)
            worst = max(differences, key=lambda d: d[2], default=None)
            largest = max(largest, worst[2] if worst else 0.0)
            where = f"  cell {number}: {len(differences)} figures"
            if worst:
                where += f", largest relative difference {worst[2]:.2e} ({worst[0]} against {worst[1]})"
            print(where + ("" if passes else "  FAILS"))
            if not passes:
                failed = True
                if _text_and_integers(figures, text) != _text_and_integers(figures, other):  # not only figures differ
                    print(
                        "    text or integers differ:\n    stored:   "
                        + text.replace("\n", "\n              ")
                        + "\n    computed: "
                        + other.replace("\n", "\n              ")
                    )
        print(f"  largest relative difference of a figure: {largest:.2e} (tolerance {figures.FIGURE_RTOL})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""nbval with figures compared within a tolerance, so the notebooks pass on any CPU.

nbval runs every code cell and compares its output with the one stored in the notebook,
character by character. A figure computed by a model (a perplexity, an RLS) is not the same to
the last digit on every machine: bf16 and float32 matrix products round differently on
different CPU kernels (AVX-512-BF16, AVX-512, AVX2) and thread counts, and ``dtype="auto"``
computes in bf16 on one CPU and in float32 on another. So here:

- a **figure**, a number written with a decimal point or an exponent (``0.668``, ``12.7``,
  ``2e+04``), equals the stored one when the two differ by at most ``FIGURE_RTOL`` of the
  larger, plus half a unit of the last printed digit of each (the rounding of the print);
- everything else is compared exactly: the text, and every integer (block indices, counts, K,
  cluster labels), so a plan that changes still fails;
- runs of spaces count as one space, since a figure of another width shifts the columns.

A cell whose output may legitimately differ more carries nbval's own ``nbval-ignore-output``
tag. ``FIGURE_RTOL`` is measured, not guessed: ``benchmarks/performance/portability.sh`` runs the notebooks
under two kernel paths (the CPU's own and AVX2) and two thread counts, and
``python benchmarks/figures/notebook_figures.py REFERENCE.ipynb RUN.ipynb ...`` prints the largest
relative difference of any figure between them (see docs/running.md).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable

import nbval.plugin as nbval_plugin

FIGURE_RTOL = 0.05
"""Relative tolerance of a figure. Measured (docs/running.md): between the stored outputs (bf16,
AVX-512-BF16 kernels, 2 threads) and runs in float32 on the AVX2 path with 1 thread, or in bf16
with 1 thread, a dense model's perplexity and the RLS moved by at most 0.8%, and a damaged model's
perplexity by at most 2.0%; 5% leaves room for CPUs not measured. A collapsed model's perplexity
(above 1000) moves by up to 20%; the notebooks print only its order of magnitude, whose half
printed digit covers that."""


# A number that stands alone: not part of a word ("qwen2", "c1", "0.5b") or of a version
# ("2.13.0"); a sign counts only where no word character precedes it, so "1-10" is the two
# integers 1 and 10, and a full stop after a number ends a sentence.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?!\w)(?!\.\d)")


def is_figure(token: str) -> bool:
    """A number written with a decimal point or an exponent (an integer is not a figure)."""
    return "." in token or "e" in token.lower()


def _print_resolution(token: str) -> float:
    """One unit of the last printed digit: 0.01 for ``"0.67"``, 100 for ``"1.26e+04"``."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def figures_agree(stored: str, computed: str, rtol: float = FIGURE_RTOL) -> bool:
    """Two printed figures agree: within ``rtol`` of the larger plus half a printed digit of each."""
    a, b = float(stored), float(computed)
    slack = rtol * max(abs(a), abs(b)) + (_print_resolution(stored) + _print_resolution(computed)) / 2
    return abs(a - b) <= slack


def split_figures(text: str) -> tuple[list[str], list[str]]:
    """``text`` as (the text between numbers, whitespace runs as one space; the numbers)."""
    text = re.sub(r"\s+", " ", text).strip()
    return _NUMBER.split(text), _NUMBER.findall(text)


def outputs_agree(stored: str, computed: str, rtol: float = FIGURE_RTOL) -> bool:
    """The same text and integers, and figures that agree (see the module docstring)."""
    stored_text, stored_numbers = split_figures(stored)
    computed_text, computed_numbers = split_figures(computed)
    if stored_text != computed_text or len(stored_numbers) != len(computed_numbers):
        return False
    for a, b in zip(stored_numbers, computed_numbers):
        if is_figure(a) != is_figure(b):
            return False
        if not (figures_agree(a, b, rtol) if is_figure(a) else a == b):
            return False
    return True


def figure_differences(stored: str, computed: str) -> list[tuple[str, str, float]]:
    """The pairs of figures of two outputs of the same text, with their relative difference."""
    pairs = zip(split_figures(stored)[1], split_figures(computed)[1])
    return [(a, b, abs(float(a) - float(b)) / max(abs(float(a)), abs(float(b)), 1e-300))
            for a, b in pairs if is_figure(a) and is_figure(b)]


def _flatten(outputs: Iterable, skip: Iterable[str], sanitize: Callable[[str], str]) -> dict[str, list]:
    """nbval's view of a cell's outputs: each output field (stream name or MIME type) -> its values."""
    flat: dict[str, list] = defaultdict(list)
    for output in nbval_plugin.transform_streams_for_comparison(outputs):
        for key, value in output.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        flat[mime].append(sanitize(data))
            else:
                flat[key].append(sanitize(value))
    return flat


_exact_compare = nbval_plugin.IPyNbCell.compare_outputs


def _compare_outputs(self, test, ref, skip_compare=None):
    if _exact_compare(self, test, ref, skip_compare):
        return True
    skip = skip_compare or self.parent.skip_compare
    computed, stored = _flatten(test, skip, self.sanitize), _flatten(ref, skip, self.sanitize)
    if computed.keys() == stored.keys() and all(
        len(computed[key]) == len(values)
        and all(outputs_agree(s, c) if isinstance(s, str) and isinstance(c, str) else s == c
                for s, c in zip(values, computed[key]))
        for key, values in stored.items()
    ):
        self.comparison_traceback = []
        return True
    self.comparison_traceback.append(
        f"(figures were compared within a relative tolerance of {FIGURE_RTOL}, integers and text exactly: notebooks/conftest.py)"
    )
    return False


def pytest_configure(config):
    nbval_plugin.IPyNbCell.compare_outputs = _compare_outputs

"""nbval's comparison of notebook outputs: figures within FIGURE_RTOL, integers and text exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("notebook_figures", Path(__file__).parents[1] / "notebooks" / "conftest.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


@pytest.mark.parametrize(
    "stored, computed",
    [
        ("Gemma 3          RLS 1.129  ->  K 2", "Gemma 3          RLS 1.128  ->  K 2"),  # the last digit of a rounding
        ("dense        12.6", "dense        12.7"),
        ("lorp    6.51e+03", "lorp     6.5e+03"),  # another width: the runs of spaces count as one
        ("[4, 5, 6, 17]; RLS 0.672, K 4", "[4, 5, 6, 17]; RLS 0.674, K 4"),
    ],
)
def test_figures_that_differ_within_the_tolerance_agree(stored, computed):
    assert figures.outputs_agree(stored, computed)


@pytest.mark.parametrize(
    "stored, computed",
    [
        ("lorp: prune 7 of 30 blocks [4, 5, 6, 17]", "lorp: prune 7 of 30 blocks [4, 5, 6, 19]"),  # a plan: integers exactly
        ("SmolLM2 (llama)  0:c0  1-10:c1  11-24:c2", "SmolLM2 (llama)  0:c0  1-9:c1  10-24:c2"),  # cluster runs
        ("RLS 0.668  ->  K 4", "RLS 0.668  ->  K 3"),
        ("RLS 0.668", "RLS 0.720"),  # 7.2% apart
        ("healed is better than pruned: True", "healed is better than pruned: False"),
        ("ppl 28.0", "ppl 28"),  # a figure printed as an integer is another output
        ("ppl 28.0", "ppl 28.0 and more"),
        ("qwen2.5-0.5b", "qwen2.6-0.5b"),  # digits inside a word are text
    ],
)
def test_a_changed_plan_count_or_word_fails_and_so_does_a_figure_beyond_the_tolerance(stored, computed):
    assert not figures.outputs_agree(stored, computed)


def test_the_tolerance_is_relative_plus_half_a_printed_digit_of_each():
    # 10% of the larger (111.1) is 11.11, and half a digit of each adds 0.1: 11.21 in all
    assert figures.figures_agree("100.0", "111.1", rtol=0.1)
    assert figures.figures_agree("100.0", "111.2", rtol=0.1)  # 11.22 allowed
    assert not figures.figures_agree("100.0", "111.3", rtol=0.1)  # 11.23 allowed, 11.3 apart
    assert figures.figures_agree("1.26e+04", "1.28e+04", rtol=0.0) is False
    assert figures.figures_agree("1.26e+04", "1.27e+04", rtol=0.0)  # 100 apart: half a digit (50) of each


def test_numbers_are_found_as_figures_and_integers_apart_from_words():
    text, numbers = figures.split_figures("Qwen2.5  1-6:c1  RLS 0.635, ppl 6.51e+03, torch 2.13.0 ends 12.7.")
    assert numbers == ["1", "6", "0.635", "6.51e+03", "12.7"]
    assert [figures.is_figure(n) for n in numbers] == [False, False, True, True, True]
    assert text == ["Qwen2.5 ", "-", ":c1 RLS ", ", ppl ", ", torch 2.13.0 ends ", "."]

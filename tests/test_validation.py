"""The argument checks every module shares: one integer rule (NumPy ints count, bools do not), one
real-number rule (finite, not a bool), and one message shape that names the parameter and the value."""

import math

import numpy as np
import pytest

from lorp_lightning._validation import check_choice, check_int, check_real, is_integer, is_real
from lorp_lightning.evaluation import token_windows


def test_the_integer_and_real_rules():
    assert all(is_integer(v) for v in (0, -3, 7, np.int64(2), np.int32(5)))
    assert not any(is_integer(v) for v in (True, np.bool_(False), 2.0, "2", None))
    assert all(is_real(v) for v in (0, 2.5, np.float32(0.5), np.int64(3)))
    assert not any(is_real(v) for v in (True, math.inf, math.nan, "1", None))


def test_check_int_returns_a_plain_int_and_names_what_it_refuses():
    assert check_int(np.int64(3), "steps") == 3 and type(check_int(np.int64(3), "steps")) is int
    assert check_int(None, "limit", none_ok=True) is None
    with pytest.raises(ValueError, match=r"^steps must be a positive int, got steps=0$"):
        check_int(0, "steps")
    with pytest.raises(ValueError, match=r"^seed must be an int >= 0, got seed=True$"):
        check_int(True, "seed", low=0)
    with pytest.raises(ValueError, match=r"^limit must be a positive int or None, got limit=2.0$"):
        check_int(2.0, "limit", none_ok=True)
    with pytest.raises(ValueError, match=r"^window must be an int >= 2 \(tokens per window\), got window=1$"):
        check_int(1, "window", low=2, what="an int >= 2 (tokens per window)")


def test_check_choice_lists_the_choices_and_what_else_is_accepted():
    assert check_choice("lora", "mode", ("lora", "adjacent")) == "lora"
    with pytest.raises(ValueError, match=r"^mode must be one of 'lora', 'adjacent', got mode='qlora'$"):
        check_choice("qlora", "mode", ("lora", "adjacent"))
    with pytest.raises(ValueError, match=r"^method must be one of 'lorp', 'last' or a callable, got method=\['lorp'\]$"):
        check_choice(["lorp"], "method", {"lorp": 1, "last": 2}, also=" or a callable")  # unhashable, asked of a dict


def test_check_real_bounds():
    assert check_real(np.float32(0.5), "dropout", low=0.0, high=1.0, high_inclusive=False, what="in [0, 1)") == 0.5
    for bad in (1.0, -0.1, math.nan, True):
        with pytest.raises(ValueError, match=rf"^dropout must be in \[0, 1\), got dropout={bad!r}$"):
            check_real(bad, "dropout", low=0.0, high=1.0, high_inclusive=False, what="in [0, 1)")
    with pytest.raises(ValueError, match=r"^lr must be a number > 0, got lr=0$"):
        check_real(0, "lr", low=0.0, low_inclusive=False, what="a number > 0")


def test_the_glue_takes_numpy_ints_as_the_core_does(smollm2):
    # token_windows refused np.int64 while select_layers took it; one rule now
    _, tokenizer = smollm2
    windows = token_windows(
        tokenizer, "one two three four five six seven eight nine ten", window=np.int64(4), max_windows=np.int64(2)
    )
    assert tuple(windows.shape) == (2, 4)

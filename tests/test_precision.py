"""dtype="auto": bf16 where the CPU runs it natively, float32 elsewhere; an explicit dtype always wins."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from lorp_lightning import precision
from lorp_lightning.precision import BF16_MIN_SPEEDUP, DtypeChoice, choose_dtype


@pytest.mark.parametrize(
    "requested, expected",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
    ],
)
def test_an_explicit_dtype_is_taken_as_it_is_without_a_probe(requested, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("an explicit dtype must not run the probe"))
    assert choose_dtype(requested) == DtypeChoice(expected, "requested")


@pytest.mark.parametrize(
    "speedup, expected",
    [
        (3.0, torch.bfloat16),
        (BF16_MIN_SPEEDUP, torch.bfloat16),
        (1.3, torch.float32),
        (0.2, torch.float32),
    ],
)
def test_auto_on_a_cpu_takes_bf16_only_where_it_is_clearly_faster(speedup, expected, monkeypatch):
    monkeypatch.delenv("LORP_DTYPE", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
    choice = choose_dtype("auto", device="cpu")
    assert choice.dtype == expected
    assert f"{speedup:.1f}x" in choice.reason or f"{speedup:.2f}x" in choice.reason
    assert str(choice).startswith(f"dtype: {choice.name} (auto: ")


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_the_lorp_dtype_variable_decides_what_auto_means_but_not_an_explicit_dtype(name, monkeypatch):
    monkeypatch.setenv("LORP_DTYPE", name)
    assert choose_dtype("auto") == DtypeChoice(getattr(torch, name), f"auto: LORP_DTYPE={name}")
    assert choose_dtype(torch.float32) == DtypeChoice(torch.float32, "requested")


def test_a_bad_lorp_dtype_variable_names_the_variable_and_its_value(monkeypatch):
    monkeypatch.setenv("LORP_DTYPE", "fp32")
    with pytest.raises(
        ValueError, match=re.escape("LORP_DTYPE must be one of float32, bfloat16, float16 (or unset), got LORP_DTYPE='fp32'")
    ):
        choose_dtype("auto")


def test_auto_follows_the_measured_speed_of_this_cpu(monkeypatch):
    monkeypatch.delenv("LORP_DTYPE", raising=False)
    speedup = precision.cpu_bf16_speedup()
    assert speedup > 0
    assert choose_dtype().dtype == (torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32)


def test_the_probe_runs_once_and_leaves_the_thread_count_as_it_was():
    precision._measured_speedup.cache_clear()
    threads = torch.get_num_threads()
    first = precision.cpu_bf16_speedup()
    assert precision.cpu_bf16_speedup() == first  # the cached answer, not a second measurement
    assert precision._measured_speedup.cache_info().misses == 1
    assert torch.get_num_threads() == threads


def test_on_the_avx2_kernel_path_auto_chooses_float32():
    # The kernels of a CPU without native bf16 (most laptops): bf16 matrix products are emulated there.
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop("LORP_DTYPE", None)
    code = "from lorp_lightning.precision import choose_dtype; print(choose_dtype())"
    line = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert line.startswith("dtype: float32 (auto: this CPU has no native bf16 (bf16 matrix products run "), line


@pytest.mark.parametrize(
    "checkpoint, bf16_supported, expected",
    [
        (torch.bfloat16, True, torch.bfloat16),
        (torch.bfloat16, False, torch.float16),
        (torch.float16, False, torch.float16),
        (torch.float32, True, torch.float32),
        (None, True, torch.float32),
    ],
)
def test_auto_on_a_gpu_keeps_the_checkpoints_dtype_where_the_gpu_supports_it(checkpoint, bf16_supported, expected, monkeypatch):
    monkeypatch.delenv("LORP_DTYPE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    assert choose_dtype("auto", device="cuda:0", checkpoint_dtype=checkpoint).dtype == expected


@pytest.mark.parametrize("bad", ["fp32", "half", torch.int8, 32, None])
def test_a_bad_dtype_names_the_parameter_and_the_value(bad):
    with pytest.raises(ValueError, match=r"dtype must be 'auto'.*" + re.escape(f"got dtype={bad!r}")):
        choose_dtype(bad)


def test_load_model_and_the_module_take_auto_by_default(monkeypatch):
    from lorp_lightning.assets import load_model

    monkeypatch.delenv("LORP_DTYPE", raising=False)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.5)  # as on a CPU without native bf16
    model, _ = load_model("smollm2-135m", progress=False)
    assert model.dtype == torch.float32
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 3.0)  # as on a CPU with native bf16
    model, _ = load_model("smollm2-135m", progress=False)
    assert model.dtype == torch.bfloat16
    model, _ = load_model("smollm2-135m", dtype="float32", progress=False)
    assert model.dtype == torch.float32

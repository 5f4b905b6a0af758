"""Which dtype a model computes in: ``dtype="auto"`` chooses by what the hardware does fast.

bf16 halves the memory of the weights, and on CPUs with native bf16 matrix units (AVX-512-BF16,
AMX) it runs two to three times as fast as float32. On CPUs without them (AVX2, which most
laptops have, or AVX-512 without bf16) bf16 matrix products are emulated and run several times
*slower* than float32: a forward pass of SmolLM2-135M over 512 tokens took 11.7 s in bf16
against 1.1 s in float32 on the AVX2 path. So ``auto`` means:

- on a CUDA device: the checkpoint's own dtype, where the GPU supports it (bf16 needs
  ``torch.cuda.is_bf16_supported()``), else float16 for a half-precision checkpoint and float32
  otherwise;
- on a CPU: bfloat16 where a measured probe finds bf16 matrix products at least
  ``BF16_MIN_SPEEDUP`` times as fast as float32, and float32 elsewhere.

The probe times one matrix product of a decoder block's size (256 tokens x 576 x 1536, the
MLP of SmolLM2) in both dtypes on one thread, the best of 5 interleaved runs each after a
warm-up. It runs once per process and takes 0.05 s on the project's CPU and 0.2 s on its AVX2
path, where bf16 is slow (measured while another job kept both cores busy: the ratio was 3.9x
to 4.0x on the native path, 0.26x on AVX2 and 0.77x on AVX-512 without bf16). What torch reports of the CPU is not enough:
``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is True on AVX-512 CPUs without native bf16,
where bf16 is 1.5x slower than float32. An explicit dtype always wins over ``auto``; the
environment variable ``LORP_DTYPE`` (``float32``, ``bfloat16`` or ``float16``) decides what
``auto`` means in a whole process, for instance to run every notebook in float32.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

import torch

__all__ = ["BF16_MIN_SPEEDUP", "DTYPE_NAMES", "DTYPE_VARIABLE", "DtypeChoice", "choose_dtype", "cpu_bf16_speedup"]

BF16_MIN_SPEEDUP = 1.5
"""bf16 is chosen on a CPU only where its matrix products are at least this much faster: the
precision it gives up is worth a clear gain in speed, not a marginal one."""

DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a user may name, as strings (the command line's ``--dtype``), besides ``"auto"``."""

DTYPE_VARIABLE = "LORP_DTYPE"
"""The environment variable that, when set to a dtype name, is what ``auto`` resolves to."""

_PROBE_SHAPE = (256, 576, 1536)  # tokens, in features, out features: SmolLM2's MLP up-projection
_PROBE_REPEATS = 5


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why it was chosen (printed once by the command line)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        """The dtype's short name: ``"float32"``, ``"bfloat16"`` or ``"float16"``."""
        return str(self.dtype).removeprefix("torch.")

    def __str__(self) -> str:
        return f"dtype: {self.name} ({self.reason})"


def choose_dtype(
    dtype: torch.dtype | str = "auto", device: torch.device | str = "cpu", checkpoint_dtype: torch.dtype | None = None
) -> DtypeChoice:
    """Resolve a requested dtype: an explicit one as it is, ``"auto"`` by the hardware.

    Args:
        dtype: ``"auto"``, a ``torch.dtype``, or one of the names in `DTYPE_NAMES`.
        device: where the model will compute (``"cpu"``, ``"cuda"``, ``"cuda:N"``).
        checkpoint_dtype: the dtype the checkpoint was saved in, used by ``auto`` on a GPU.

    Returns:
        a [`DtypeChoice`][lorp_lightning.precision.DtypeChoice], the dtype and a short reason.

    Example:
        >>> choose_dtype(torch.float32)
        DtypeChoice(dtype=torch.float32, reason='requested')
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"dtype must be 'auto' or one of {', '.join(DTYPE_NAMES)}, got dtype={dtype!r}")
        return DtypeChoice(dtype, "requested")
    if not isinstance(dtype, str) or (dtype != "auto" and dtype not in DTYPE_NAMES):
        raise ValueError(f"dtype must be 'auto', a torch.dtype or one of {', '.join(DTYPE_NAMES)}, got dtype={dtype!r}")
    if dtype != "auto":
        return DtypeChoice(DTYPE_NAMES[dtype], "requested")
    forced = os.environ.get(DTYPE_VARIABLE)
    if forced:
        if forced not in DTYPE_NAMES:
            raise ValueError(
                f"the environment variable {DTYPE_VARIABLE} must be one of {', '.join(DTYPE_NAMES)} "
                f"(or unset), got {DTYPE_VARIABLE}={forced!r}"
            )
        return DtypeChoice(DTYPE_NAMES[forced], f"auto: {DTYPE_VARIABLE}={forced}")
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_choice(checkpoint_dtype)
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto on a {device.type} device")
    speedup = cpu_bf16_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return DtypeChoice(
            torch.bfloat16, f"auto: this CPU runs bf16 matrix products natively, {speedup:.1f}x as fast as float32"
        )
    return DtypeChoice(
        torch.float32, f"auto: this CPU has no native bf16 (bf16 matrix products run {speedup:.2f}x as fast as float32)"
    )


def _cuda_choice(checkpoint_dtype: torch.dtype | None) -> DtypeChoice:
    if checkpoint_dtype is None or checkpoint_dtype == torch.float32:
        return DtypeChoice(torch.float32, "auto: the checkpoint's own dtype")
    if checkpoint_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return DtypeChoice(torch.float16, "auto: a bf16 checkpoint on a GPU without bf16")
    return DtypeChoice(checkpoint_dtype, "auto: the checkpoint's own dtype")


def cpu_bf16_speedup() -> float:
    """How many times as fast a bf16 matrix product runs as a float32 one on this CPU (measured once per process)."""
    return _measured_speedup()


@lru_cache(maxsize=1)
def _measured_speedup() -> float:
    tokens, features_in, features_out = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, features_in, generator=generator)
    w = torch.randn(features_out, features_in, generator=generator)
    operands = {dtype: (x.to(dtype), w.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(operands, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a busy neighbour on the other cores barely moves the ratio
    try:
        with torch.no_grad():
            for a, b in operands.values():
                torch.nn.functional.linear(a, b)  # warm-up: kernel selection, primitive creation
            for _ in range(_PROBE_REPEATS):  # interleaved, so a slow moment hits both dtypes alike
                for dtype, (a, b) in operands.items():
                    start = time.perf_counter()
                    torch.nn.functional.linear(a, b)
                    best[dtype] = min(best[dtype], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[torch.bfloat16]

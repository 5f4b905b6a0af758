"""Evaluation of dense and pruned models: held-out perplexity, size, speed and memory, side by side.

Perplexity is measured over non-overlapping windows of ``window`` tokens of a held-out text:
the text is tokenized once, cut into consecutive windows, and every token of a window after its
first is predicted from the tokens before it in the same window. torchmetrics' ``Perplexity``
does the accumulation, so the figure is exp(mean negative log-likelihood over all predicted
tokens).
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import torch
from torch import Tensor, nn

from lorp_lightning._validation import ParameterError, check_int
from lorp_lightning.next_token import IGNORE_INDEX, next_token_pairs

__all__ = [
    "PeakRSS",
    "check_window",
    "compare_models",
    "comparison_table",
    "matmul_flops_per_token",
    "measure_speed",
    "model_size",
    "num_parameters",
    "parameter_bytes",
    "perplexity",
    "token_windows",
]


def check_window(window: Any) -> int:
    """``window``, tokens per window, as an int >= 2 (one prediction needs two tokens), else a ValueError."""
    return check_int(window, "window", low=2, what="an int >= 2 (tokens per window)")


def token_windows(tokenizer, text: str, window: int = 512, max_windows: int | None = None) -> Tensor:
    """Tokenize ``text`` once and cut it into consecutive, non-overlapping windows.

    Returns a (num_windows, window) long tensor; a last partial window is dropped. A tokenizer
    that adds a BOS token (Gemma's) adds it once, at the start of the text.
    """
    window = check_window(window)
    max_windows = check_int(max_windows, "max_windows", none_ok=True)
    ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0]
    count = ids.numel() // window
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ParameterError(
            "window",
            f"the text has {ids.numel()} tokens, fewer than one window of window={window}; use a smaller window or a longer text",
        )
    return ids[: count * window].reshape(count, window)


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 1, progress: bool = False) -> float:
    """Perplexity of ``model`` over token ``windows`` ((num_windows, window) input ids)."""
    from torchmetrics.text import Perplexity
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    metric = Perplexity(ignore_index=IGNORE_INDEX).to(device)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            metric.update(*next_token_pairs(logits, batch))
    finally:
        model.train(was_training)
    return float(metric.compute())


# --------------------------------------------------------------------------- size, speed, memory


def num_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def matmul_flops_per_token(model: nn.Module) -> int:
    """Multiply-accumulate FLOPs (2 per weight) of the model's matrix multiplications for one token.

    Counts every ``nn.Linear`` (the decoder blocks and the language-model head); attention's
    score and value products, which grow with the context, are left out. The ratio of this
    count between a dense and a pruned model is the ideal speed-up of depth pruning.
    """
    return sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def parameter_bytes(model: nn.Module) -> int:
    """Bytes held by the model's distinct parameters and buffers."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


class PeakRSS:
    """Samples the resident memory (RSS) of this process every 2 ms while the ``with`` block runs.

    ``.start`` is the RSS on entry, ``.peak`` the highest seen; ``.growth`` their difference.
    """

    def __enter__(self) -> PeakRSS:
        import psutil

        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


@torch.no_grad()
def _prefill(model: nn.Module, ids: Tensor) -> None:
    model(input_ids=ids, use_cache=False)


@torch.no_grad()
def _decode(model: nn.Module, ids: Tensor, new_tokens: int) -> None:
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )


def measure_speed(
    models: dict[str, nn.Module],
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    batch_size: int = 1,
    repeats: int = 5,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Prefill latency and decode throughput of several models, measured side by side.

    The models run in turns (model A, model B, A, B, ...) ``repeats`` times after one warm-up
    each, so that a slower or busier moment of the machine affects all of them alike; each
    figure is the median over the repeats. The prompt is ``batch_size`` x ``prompt_tokens``
    random token ids (seeded), the same for every model.

    Returns, per model name: ``prefill_seconds`` (one forward pass over the prompt, no cache),
    ``decode_tokens_per_second`` (``new_tokens`` greedy tokens per sequence with the KV cache,
    after the prompt's prefill, whose time is subtracted), and ``peak_memory_mb``: on CUDA,
    ``max_memory_allocated`` during the model's runs; on CPU, where one process's resident
    memory cannot be split between the models it holds, the model's parameter and buffer bytes
    plus the largest growth of resident memory seen during one of its runs (activations and
    KV cache).
    """
    import statistics

    if not models:
        raise ValueError("models must name at least one model")
    first = next(iter(models.values()))
    device = next(first.parameters()).device
    vocab = vocab_size or first.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, prompt_tokens), generator=torch.Generator().manual_seed(seed)).to(device)
    times: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "decode": []} for name in models}
    peaks = {name: 0 for name in models}

    def timed(run) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for model in models.values():  # warm-up
        model.eval()
        _prefill(model, ids)
        _decode(model, ids, 2)
    for _ in range(repeats):
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with PeakRSS() as memory:
                times[name]["prefill"].append(timed(functools.partial(_prefill, model, ids)))
                times[name]["decode"].append(timed(functools.partial(_decode, model, ids, new_tokens)))
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
            else:
                peak = parameter_bytes(model) + memory.growth
            peaks[name] = max(peaks[name], peak)
    results = {}
    for name in models:
        prefill = statistics.median(times[name]["prefill"])
        decode = statistics.median(times[name]["decode"])
        results[name] = {
            "prefill_seconds": prefill,
            "decode_tokens_per_second": batch_size * new_tokens / max(decode - prefill, 1e-9),
            "peak_memory_mb": peaks[name] / 2**20,
        }
    return results


def model_size(model: nn.Module) -> dict[str, int]:
    """The model's parameters, decoder blocks and matmul FLOPs per token."""
    return {
        "num_parameters": num_parameters(model),
        "num_layers": model.config.get_text_config(decoder=True).num_hidden_layers,
        "matmul_flops_per_token": matmul_flops_per_token(model),
    }


def compare_models(
    models: dict[str, nn.Module],
    windows: Tensor,
    *,
    prompt_tokens: int = 512,
    new_tokens: int = 64,
    repeats: int = 5,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each model's held-out perplexity on ``windows``, its size (``model_size``), and its speed and memory measured
    side by side with the others' (``measure_speed``): what ``lorp prune`` reports for dense against pruned.

        metrics = compare_models({"dense": dense, "pruned": pruned}, held_out)
        print(comparison_table(metrics))
    """
    results: dict[str, dict[str, Any]] = {
        name: {"perplexity": perplexity(model, windows, progress=progress), **model_size(model)} for name, model in models.items()
    }
    speed = measure_speed(models, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats)
    for name in models:
        results[name].update(speed[name])
    return results


def comparison_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The table ``lorp prune`` prints: dense against pruned, side by side (``compare_models``' figures of the models
    named ``"dense"`` and ``"pruned"``), with the measured speed-ups and the ideal one from matmul FLOPs."""
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
    lines.append(
        f"speed-up: prefill {measured_prefill:.2f}x, decode {measured_decode:.2f}x; ideal from matmul FLOPs per token {ideal:.2f}x"
    )
    return "\n".join(lines)

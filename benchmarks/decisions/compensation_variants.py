"""Which compensation? The variants of issue 36 on calibration data only, for the default's plans.

For each bundled model and each budget of the quality study (1/8, 1/4, 1/3 of the blocks), the default
method chooses its plan as in the study (statistics from 32 windows of 512 tokens of the `wiki`
calibration split; checks on the first 256 tokens of the first 8, the last 128 scored). Then the plan's
check loss is measured with the stream at each gap multiplied by the factor of each variant:

    none          no compensation
    l2            the ratio of mean L2 norms m_b / m_a (LayerStats.norms)
    abs           the ratio of mean absolute values (Prune&Comp's get_scale_params)
    lsq           the least-squares scalar that maps h_a onto h_b: sum <h_a, h_b> / sum ||h_a||^2
    fitted        l2 ** strength, the strength of compensation.STRENGTHS with the lowest check loss

The dense model's h_a and h_b give every factor (a one-shot plan; hidden states of the statistics'
windows, recorded by hooks in a pass of their own). No held-out text is read.

    python benchmarks/decisions/compensation_variants.py [--models smollm2-135m ...] [--out benchmarks/results/compensation_variants.txt]
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

from lorp_lightning.architectures import decoder_layers
from lorp_lightning.assets import load_model, load_text
from lorp_lightning.compensation import fit_strength, gap_factors, gaps
from lorp_lightning.evaluation import token_windows
from lorp_lightning.methods import CHECK_TOKENS, CHECK_WINDOWS, DEFAULT_METHOD, SCORE_LAST, select_layers
from lorp_lightning.search import PlanLoss
from lorp_lightning.stats import collect_layer_stats

BUDGETS = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 3))
MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b")


@torch.no_grad()
def magnitudes(model, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per hidden state h_0..h_N over all tokens: the mean absolute value (N+1,) and the Gram of raw inner
    products sum_t <h_i(t), h_j(t)> (N+1, N+1), float64."""
    layers = decoder_layers(model)
    N = len(layers)
    mean_abs = torch.zeros(N + 1, dtype=torch.float64)
    gram = torch.zeros(N + 1, N + 1, dtype=torch.float64)
    states: dict[int, torch.Tensor] = {}

    def keep(index):
        def hook(module, args, kwargs):
            states[index] = (args[0] if args else kwargs["hidden_states"]).double().reshape(-1, model.config.hidden_size)

        return hook

    def keep_last(module, args, output):
        states[N] = (output[0] if isinstance(output, (tuple, list)) else output).double().reshape(-1, model.config.hidden_size)

    handles = [layer.register_forward_pre_hook(keep(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(keep_last))
    count = 0
    try:
        for batch in windows.split(4):
            model(input_ids=batch, use_cache=False, logits_to_keep=1)
            stacked = torch.stack([states[i] for i in range(N + 1)])  # (N+1, tokens, H)
            mean_abs += stacked.abs().mean(dim=-1).sum(dim=1)
            for chunk in stacked.split(512, dim=1):
                flat = chunk.transpose(0, 1)  # (tokens, N+1, H)
                gram += torch.einsum("tih,tjh->ij", flat, flat)
            count += stacked.shape[1]
    finally:
        for handle in handles:
            handle.remove()
    return mean_abs / count, gram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", default="benchmarks/results/compensation_variants.txt")
    args = parser.parse_args()
    lines = [
        f"# python benchmarks/decisions/compensation_variants.py {' '.join(sys.argv[1:])}".rstrip(),
        f"# {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {torch.get_num_threads()} threads; check loss "
        f"(first {CHECK_WINDOWS} calibration windows, {CHECK_TOKENS} tokens, last {SCORE_LAST} scored) of the "
        f"default's plan, by variant; fitted: the strength chosen",
        f"{'model':<14} {'k/N':>6} {'plan':<34} {'none':>7} {'l2':>7} {'abs':>7} {'lsq':>7} {'fitted':>7} strength",
    ]
    print("\n".join(lines), flush=True)
    for name in args.models:
        torch.manual_seed(0)
        model, tokenizer = load_model(name, progress=False)
        windows = token_windows(tokenizer, load_text("wiki", "calibration"), window=512, max_windows=32)
        stats = collect_layer_stats(model, windows.split(4), progress=False)
        mean_abs, gram = magnitudes(model, windows)
        checks = PlanLoss(model, windows[:CHECK_WINDOWS, :CHECK_TOKENS], score_last=SCORE_LAST)
        N = stats.num_layers
        for budget in BUDGETS:
            k = int(budget * N)
            plan = select_layers(stats, k, method=DEFAULT_METHOD, shared_checks=checks).pruned
            factors = {
                "l2": gap_factors(stats.norms.tolist(), plan, 1.0),
                "abs": gap_factors(mean_abs.tolist(), plan, 1.0),
                "lsq": {b: float(gram[a, b] / gram[a, a]) for a, b in gaps(plan, N)},
            }
            losses = {"none": checks(plan)} | {v: checks.compensated(plan, f) for v, f in factors.items()}
            strength, _, fitted = fit_strength(checks, plan, stats.norms.tolist())
            losses["fitted"] = fitted[strength]
            line = (
                f"{name:<14} {f'{k}/{N}':>6} {str(plan):<34} "
                + " ".join(f"{losses[v]:7.3f}" for v in ("none", "l2", "abs", "lsq", "fitted"))
                + f" {strength}"
            )
            lines.append(line)
            print(line, flush=True)
            lines.append(
                "    factors "
                + "; ".join(f"{v}: " + ", ".join(f"{b}: {c:.3f}" for b, c in f.items()) for v, f in factors.items())
            )
            print(lines[-1], flush=True)
        del model
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

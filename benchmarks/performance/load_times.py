"""First (GGUF conversion) and cached load time of each bundled model, measured in one run.

    python benchmarks/performance/load_times.py [--models smollm2-135m,gemma3-270m,qwen2.5-0.5b]

The first load uses a fresh, empty cache directory (so it assembles, verifies, converts and
caches); the second load reads that cache. Prints seconds and the ratio first / cached.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-0.5b")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["LORP_CACHE_DIR"] = cache
        from lorp_lightning.assets import load_model

        print(f"{'model':<14} {'first load (s)':>15} {'cached load (s)':>16} {'ratio':>7}")
        for name in args.models.split(","):
            start = time.perf_counter()
            model, _ = load_model(name, progress=False)
            first = time.perf_counter() - start
            del model
            start = time.perf_counter()
            model, _ = load_model(name, progress=False)
            cached = time.perf_counter() - start
            del model
            print(f"{name:<14} {first:>15.1f} {cached:>16.2f} {first / cached:>7.1f}")


if __name__ == "__main__":
    main()

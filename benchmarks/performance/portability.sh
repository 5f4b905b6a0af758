#!/usr/bin/env bash
# The suite and the notebooks under other CPU kernel paths and thread counts, on one machine.
#
#   bash benchmarks/performance/portability.sh suite     [COMBO ...]   the README's test command (in one process) under each COMBO
#   bash benchmarks/performance/portability.sh notebooks [COMBO ...]   each notebook executed under each COMBO, timed,
#                                                          its figures compared with the stored outputs
#
# A COMBO is KERNELS-THREADS: KERNELS is "native" (what this CPU has; on the project's machine
# AVX-512 with native bf16) or "avx2" (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: the
# kernels of a CPU without AVX-512 and without native bf16, as most laptops have), THREADS the
# number of torch threads (OMP_NUM_THREADS). Default combos: native-2 avx2-1 (both levers
# changed at once), then native-1 avx2-2 for the suite as well if you have the time.
# dtype="auto" picks bf16 on "native" here and float32 on "avx2", so the runs also cover both
# precisions. Logs and executed notebooks go to $PORTABILITY_DIR (default: runs/portability);
# NOTEBOOKS="notebooks/03_methods_compared.ipynb ..." runs only those notebooks.
# Exit status: non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
mode="${1:-}"
shift || true
combos=("$@")
[ ${#combos[@]} -gt 0 ] || combos=(native-2 avx2-1)
out="${PORTABILITY_DIR:-runs/portability}"
mkdir -p "$out"
py=.venv/bin/python
# the README's test command (.ci/run checks it) in one process, without its "-n 2" (two xdist workers, each
# with a share of the cores), so that THREADS is the thread count of every test and notebook
test_command='.venv/bin/python -m pytest'

combo_env() {  # print the environment assignments of a combo, or fail on a bad one
  local kernels="${1%-*}" threads="${1##*-}"
  [[ "$threads" =~ ^[0-9]+$ ]] || { echo "bad COMBO '$1': expected KERNELS-THREADS, e.g. avx2-1" >&2; return 1; }
  case "$kernels" in
    native) echo "OMP_NUM_THREADS=$threads" ;;
    avx2) echo "OMP_NUM_THREADS=$threads ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" ;;
    *) echo "bad COMBO '$1': KERNELS must be native or avx2" >&2; return 1 ;;
  esac
}

status=0
case "$mode" in
  suite)
    for combo in "${combos[@]}"; do
      vars=$(combo_env "$combo") || exit 2
      echo "== $combo ($vars): $test_command"
      start=$(date +%s)
      env $vars bash -c "$test_command" > "$out/suite-$combo.log" 2>&1
      rc=$?
      echo "   exit $rc in $(( $(date +%s) - start )) s: $(tail -n 1 "$out/suite-$combo.log")"
      [ $rc -eq 0 ] || status=1
    done
    ;;
  notebooks)
    for combo in "${combos[@]}"; do
      vars=$(combo_env "$combo") || exit 2
      mkdir -p "$out/$combo"
      echo "== $combo ($vars): $(env $vars $py -c 'from lorp_lightning.precision import choose_dtype; print(choose_dtype())')"
      for notebook in ${NOTEBOOKS:-notebooks/*.ipynb}; do
        start=$(date +%s)
        env $vars .venv/bin/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 \
          --output-dir "$out/$combo" "$notebook" > "$out/$combo/$(basename "$notebook" .ipynb).log" 2>&1
        rc=$?
        echo "   $(basename "$notebook"): exit $rc in $(( $(date +%s) - start )) s"
        if [ $rc -ne 0 ]; then status=1; continue; fi
        $py benchmarks/figures/notebook_figures.py "$notebook" "$out/$combo/$(basename "$notebook")" | sed 's/^/   /' || status=1
      done
    done
    ;;
  *)
    echo "usage: bash benchmarks/performance/portability.sh suite|notebooks [COMBO ...]   (COMBO: native-2, avx2-1, ...)" >&2
    exit 2
    ;;
esac
exit $status

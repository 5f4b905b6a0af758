#!/usr/bin/env bash
# Wall time of `lorp prune` (its defaults) and of each notebook under dtype="auto", bf16 and float32,
# on the CPU's own kernels ("native") and on the AVX2 path (ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2: a CPU without native bf16, as most laptops have), 2 torch threads.
#
#   bash benchmarks/performance/precision_speed.sh [JOB ...]      JOB: prune, or a notebook file name
#
# For each kernel path and job it runs auto first. The dtype auto chose is not run again (its
# time is auto's, less the probe of 0.05-0.2 s). The other dtype runs under a cap of CAP times
# auto's time (default 1.1): a run that is stopped there shows as ">N s", which is enough to
# show auto within 10% of the faster dtype. The notebooks are forced to a dtype by LORP_DTYPE,
# which decides what their "auto" means. Output: a table, and runs/precision_speed/*.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(prune $(cd notebooks && ls *.ipynb))
cap="${CAP:-1.1}"
out=runs/precision_speed
mkdir -p "$out"

run_job() {  # run_job KERNELS DTYPE JOB TIMEOUT -> prints "seconds exit-status"
  local kernels="$1" dtype="$2" job="$3" limit="$4" vars="OMP_NUM_THREADS=2"
  [ "$kernels" = avx2 ] && vars="$vars ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
  local log="$out/$kernels-$dtype-$job.log" start rc
  start=$(date +%s.%N)
  if [ "$job" = prune ]; then
    env $vars timeout "$limit" .venv/bin/lorp prune --overwrite --quiet --dtype "$dtype" --out "$out/pruned" > "$log" 2>&1
  else
    local forced=""
    [ "$dtype" = auto ] || forced="LORP_DTYPE=$dtype"
    env $vars $forced timeout "$limit" .venv/bin/jupyter nbconvert --to notebook --execute \
      --ExecutePreprocessor.timeout=-1 --output-dir "$out/executed-$kernels-$dtype" "notebooks/$job" > "$log" 2>&1
  fi
  rc=$?
  echo "$(python3 -c "print($(date +%s.%N) - $start)") $rc"
}

printf '%-8s %-34s %-10s %10s %10s %10s\n' kernels job "auto is" auto bfloat16 float32
for job in "${jobs[@]}"; do
  for kernels in native avx2; do
    read -r auto_s auto_rc < <(run_job "$kernels" auto "$job" 3600)
    chosen=$(grep -ho '^dtype: [a-z0-9]*' "$out/$kernels-auto-$job.log" | head -n 1 | cut -d' ' -f2)
    if [ -z "$chosen" ]; then  # a notebook does not print it: ask the same process settings
      vars="OMP_NUM_THREADS=2"; [ "$kernels" = avx2 ] && vars="$vars ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
      chosen=$(env $vars .venv/bin/python -c 'from lorp_lightning.precision import choose_dtype; print(choose_dtype().name)')
    fi
    limit=$(python3 -c "print(round($auto_s * $cap, 1))")
    declare -A shown=()
    for dtype in bfloat16 float32; do
      if [ "$dtype" = "$chosen" ]; then shown[$dtype]="(auto)"; continue; fi
      read -r s rc < <(run_job "$kernels" "$dtype" "$job" "$limit")
      if [ "$rc" = 124 ]; then shown[$dtype]=">$(printf '%.0f' "$limit") s"; else shown[$dtype]="$(printf '%.0f' "$s") s"; fi
      [ "$rc" = 0 ] || [ "$rc" = 124 ] || shown[$dtype]="failed($rc)"
    done
    auto_shown="$(printf '%.0f' "$auto_s") s"; [ "$auto_rc" = 0 ] || auto_shown="failed($auto_rc)"
    printf '%-8s %-34s %-10s %10s %10s %10s\n' "$kernels" "$job" "$chosen" "$auto_shown" "${shown[bfloat16]}" "${shown[float32]}"
    unset shown
  done
done

#!/usr/bin/env bash
# Benchmark the runs that bench/train_cpu_presets.sh writes: one suite per preset (baseline, MonoCon, std-MLP,
# Matryoshka), each on the same CPU in one process, with the unfolded PyTorch model timed side by side.
# Missing or unfinished runs are skipped (Matryoshka runs exist only where the comparator was merged).
# Usage: bash bench/run_cpu_bench.sh [RUNS_DIR] [RESULTS_DIR]     (defaults: runs/cpu-presets, bench/results)
# Knobs (environment): PRESETS, DIMS (128,64,16,deff), THREADS (all CPUs), WARMUP (10), ITERATIONS (100),
#   BATCH (64), BATCH_ITERATIONS (10), SEARCH_ITERATIONS (50), MAX_QUERIES (all), INT8 (1), EXTRA (more options)
set -euo pipefail
runs=${1:-runs/cpu-presets}
results=${2:-bench/results}
presets=${PRESETS:-"tiny-imagenet-100 cifar10-subset nli-pairs"}
threads=${THREADS:-$(nproc)}
opts=(--dims "${DIMS:-128,64,16,deff}" --threads "$threads" --warmup "${WARMUP:-10}"
      --iterations "${ITERATIONS:-100}" --batch "${BATCH:-64}" --batch-iterations "${BATCH_ITERATIONS:-10}"
      --search-iterations "${SEARCH_ITERATIONS:-50}" --results-dir "$results")
[ -n "${MAX_QUERIES:-}" ] && opts+=(--max-queries "$MAX_QUERIES")
[ "${INT8:-1}" = 0 ] && opts+=(--no-int8)
mkdir -p "$results"
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$results/bench-timings.txt"; }
for preset in $presets; do
  found=()
  for head in none monotonic mlp matryoshka; do
    run="$runs/$preset-$head"
    if [ -f "$run/summary.json" ]; then found+=("$run"); else log "skip $run (missing or unfinished)"; fi
  done
  if [ ${#found[@]} -eq 0 ]; then continue; fi
  t0=$SECONDS
  # shellcheck disable=SC2086
  monocon-edge bench "${found[@]}" --suite "cpu-$preset" "${opts[@]}" ${EXTRA:-}
  log "cpu-$preset ${#found[@]} models $((SECONDS - t0)) s"
done

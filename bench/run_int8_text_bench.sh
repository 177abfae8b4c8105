#!/usr/bin/env bash
# Issue 12: the text artifact's int8 graph against its fp32 graph and PyTorch eager, at one thread and at every
# CPU, batch 1 and batch 64, on one machine in one process. Exports the nli-pairs MonoCon run at 16 dims with
# --int8 (the scheme chosen by measurement; the export prints the candidate table) unless the artifact exists.
# Usage: bash bench/run_int8_text_bench.sh RUN_DIR [ARTIFACT_DIR] [RESULTS_DIR]
#   defaults: ARTIFACT_DIR = RUN_DIR/export-d16-int8, RESULTS_DIR = bench/results
# Knobs (environment): DIMS (16), THREADS (all CPUs), WARMUP (20), ITERATIONS (300), BATCH (64),
#   BATCH_ITERATIONS (10), EXPORT_EXTRA (more `export` options, e.g. --int4), EXTRA (more `bench` options)
set -euo pipefail
run=${1:?usage: bash bench/run_int8_text_bench.sh RUN_DIR [ARTIFACT_DIR] [RESULTS_DIR]}
dims=${DIMS:-16}
artifact=${2:-$run/export-d$dims-int8}
results=${3:-bench/results}
threads=${THREADS:-$(nproc)}
export COLUMNS=${COLUMNS:-160}  # the export and bench tables, unwrapped in the saved output
mkdir -p "$results"
if [ ! -f "$artifact/manifest.json" ]; then
  # shellcheck disable=SC2086
  monocon-edge export "$run" --dims "$dims" --int8 --out "$artifact" ${EXPORT_EXTRA:-} | tee "$results/int8-text-export-d$dims.txt"
fi
# shellcheck disable=SC2086
monocon-edge bench "$artifact" --suite "int8-text-d$dims" --threads "$threads" --also-threads 1 \
  --warmup "${WARMUP:-20}" --iterations "${ITERATIONS:-300}" --batch "${BATCH:-64}" \
  --batch-iterations "${BATCH_ITERATIONS:-10}" --results-dir "$results" ${EXTRA:-}

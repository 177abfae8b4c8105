#!/usr/bin/env bash
# Issue 12: the text bench of one artifact, N times (default 5), each in a fresh process — how much the batch-1
# figures move between processes (onnxruntime places its buffers anew in each) — then one line per run
# (bench/text_bench_table.py). Each run writes OUT/run-I/ (as bench/run_int8_text_bench.sh; its knobs apply).
# Usage: bash bench/repeat_text_bench.sh RUN_DIR ARTIFACT_DIR OUT [N]
set -euo pipefail
run=${1:?usage: bash bench/repeat_text_bench.sh RUN_DIR ARTIFACT_DIR OUT [N]}
artifact=${2:?usage: bash bench/repeat_text_bench.sh RUN_DIR ARTIFACT_DIR OUT [N]}
out=${3:?usage: bash bench/repeat_text_bench.sh RUN_DIR ARTIFACT_DIR OUT [N]}
n=${4:-5}
if [ ! -f "$artifact/manifest.json" ]; then
  echo "error: no artifact at $artifact (export it first, e.g. bash bench/run_int8_text_bench.sh)" >&2
  exit 1
fi
here=$(dirname "$0")
mkdir -p "$out"
for i in $(seq 1 "$n"); do
  echo "run $i: load average before $(cut -d' ' -f1-3 /proc/loadavg)"
  bash "$here/run_int8_text_bench.sh" "$run" "$artifact" "$out/run-$i" > "$out/run-$i.log" 2>&1
done
python3 "$here/text_bench_table.py" "$out"/run-*/int8-text-d*-fp32-int8-*.json

#!/usr/bin/env bash
# Issue 12: does `monocon-edge export RUN --dims 16 --int8` ship the same int8 graph every time? Runs the export
# N times (default 3) into OUT/auto-I and prints, per export, the winner and every candidate's size, CPU p50
# (batch 1, one thread) and per-round CPU-time ratio to the fastest with its 90 % interval (the tie rule's input).
# Extra options after OUT go to every export (e.g. --int8-prefer size).
# Usage: bash bench/export_repeats.sh RUN_DIR OUT [N] [EXPORT OPTIONS...]
set -euo pipefail
run=$1; out=$2; n=${3:-3}; shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
for i in $(seq 1 "$n"); do
  rm -rf "${out:?}/auto-$i"
  echo "export $i: load average before $(cut -d' ' -f1-3 /proc/loadavg)"
  COLUMNS=200 monocon-edge export "$run" --dims 16 --int8 --out "$out/auto-$i" "$@" > "$out/auto-$i.log" 2>&1
  python3 - "$out/auto-$i/manifest.json" <<'PY'
import json, sys
sel = json.load(open(sys.argv[1]))["models"]["int8"]["selection"]
print(f"  winner {sel['winner']}")
for r in sel["candidates"]:
    vs = r.get("vs_fastest")
    ratio = f"ratio to fastest {vs['ratio']:.3f} [{vs['low']:.3f}, {vs['high']:.3f}]" if vs else ""
    gate = "pass" if r.get("passed") else "FAIL"
    print(f"  {r['name']:18s} {r.get('bytes', 0) / 1e6:5.1f} MB  cpu p50 {r.get('cpu_p50_ms', float('nan')):.3f} ms"
          f"  {gate}  {ratio}")
PY
done

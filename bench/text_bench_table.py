"""Issue 12: one line per text bench (``monocon-edge bench`` JSON with one-thread figures): PyTorch eager, fp32 and
int8 CPU p50 at batch 1 and one thread, and the two speed ratios the issue's targets are about (and, in benches that
timed them side by side, the same ratios paired by round: median [90 % interval]).

Usage: python3 bench/text_bench_table.py BENCH.json [BENCH.json ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def bench_line(path: Path) -> str:
    """Return the summary line of one bench JSON (float32 index codes; figures at batch 1, one thread, CPU time)."""
    rows = {r["precision"]: r for r in json.loads(path.read_text())["rows"] if r["index_codes"] == "float32"}
    fp32, int8 = rows["fp32"], rows["int8"]
    eager = fp32["torch_eager_latency_cpu_ms_p50_1t"]
    f, q = fp32["latency_cpu_ms_p50_1t"], int8["latency_cpu_ms_p50_1t"]
    line = (f"{path.parent.name:16s} eager {eager:5.2f} ms  fp32 {f:5.2f} ms  int8 {q:5.2f} ms  "
            f"fp32 x eager {eager / f:4.2f}  int8 x fp32 {f / q:4.2f}  int8 {int8['model_bytes'] / 1e6:4.1f} MB")
    if fp32.get("speedup_cpu_paired_1t") is not None:  # benches since the side-by-side timing
        line += (f"  paired: fp32 x eager {_paired(fp32, 'speedup_cpu_paired_1t')}"
                 f"  int8 x fp32 {_paired(int8, 'speedup_vs_fp32_cpu_paired_1t')}")
    return line


def _paired(row: dict, key: str) -> str:
    """Return a paired ratio of ``row`` as ``median [low-high]``."""
    low, high = row[f"{key}_interval"]
    return f"{row[key]:4.2f} [{low:4.2f}-{high:4.2f}]"


def main(argv: list[str]) -> int:
    """Print one line per bench JSON in ``argv``; return the exit status."""
    if not argv:
        print("usage: python3 bench/text_bench_table.py BENCH.json [BENCH.json ...]", file=sys.stderr)
        return 2
    print("batch 1, one thread, CPU time p50 (monocon-edge bench, --also-threads 1)")
    for name in argv:
        try:
            print(bench_line(Path(name)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {name}: not a text bench JSON with fp32, int8 and one-thread figures ({exc!r})",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

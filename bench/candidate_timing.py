"""Issue 12: time the same ONNX graphs two ways in one process — one call per graph per round (the old
interleaved schedule of export's candidate table) and blocks of consecutive calls per graph (export's schedule
now, monocon_edge/exporting/latency.py) — on a text run's real timing sentences, batch 1, one thread.

Usage: python3 bench/candidate_timing.py RUN_DIR REFERENCE.onnx OTHER.onnx [...] [--calls 200] [--block 20]
         [--rewarm 5] [--repeats 2] [--json OUT.json]
Prints, per schedule and repeat, each graph's CPU p50 (ms), wall p50 and its speed-up over REFERENCE, and its
per-round CPU-time ratio to REFERENCE with a 90 % interval (export's tie rule); the load average before and after.
The schedules alternate (interleaved, blocked, interleaved, ...).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from monocon_edge.device.errors import MonoconError


def _feeds(run_dir: str) -> list:
    from monocon_edge.exporting.build import artifact_tokenize
    from monocon_edge.exporting.gate_inputs import text_gate_inputs
    from monocon_edge.runs import load_run

    loaded = load_run(run_dir)
    if loaded.cfg.modality != "text":
        raise MonoconError(f"{run_dir} is not a text run")
    return text_gate_inputs(loaded.task, 0, artifact_tokenize(loaded), 16, 16).timing


def feeds_for(run_dir: str, graphs: list[Path]) -> list | None:
    """Return the text run's batch-1 timing feeds (export's 16 real sentences), or None after printing one error
    line on stderr when a graph file is missing or the run cannot be loaded."""
    missing = [str(g) for g in graphs if not g.is_file()]
    try:
        if missing:
            raise MonoconError(f"no graph at {', '.join(missing)}")
        return _feeds(run_dir)
    except MonoconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def main(argv: list[str]) -> int:
    """Run the comparison; return the process exit status."""
    from monocon_edge.exporting.latency import BLOCK_CALLS, REWARM_CALLS, blocked_latency, paired_ratio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("graphs", nargs="+", type=Path)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--block", type=int, default=BLOCK_CALLS)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rewarm", type=int, default=REWARM_CALLS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if len(args.graphs) < 2:
        print("error: need a reference graph and at least one other", file=sys.stderr)
        return 1
    feeds = feeds_for(args.run, args.graphs)
    if feeds is None:
        return 1
    paths = {g.stem: g for g in args.graphs}
    ref = args.graphs[0].stem
    out = {"load_average_before": os.getloadavg(), "calls": args.calls, "block": args.block, "runs": []}
    print(f"load average before: {out['load_average_before']}")
    for repeat in range(args.repeats):
        for schedule, block, rewarm in (("interleaved", 1, 0), ("blocked", args.block, args.rewarm)):
            timed = blocked_latency(paths, feeds, args.calls, block=block, rewarm=rewarm, seed=repeat)
            out["runs"].append({"schedule": schedule, "repeat": repeat, "timed": timed})
            print(f"{schedule} (block {block}), repeat {repeat}: " + ", ".join(
                f"{n} {t['cpu_p50_ms']:.2f} ms cpu / {t['p50_ms']:.2f} wall "
                f"({timed[ref]['cpu_p50_ms'] / t['cpu_p50_ms']:.2f}x)" for n, t in timed.items()), flush=True)
            # CPU time per round of each graph over the reference's (what export's tie rule reads)
            print("  per-round ratio to " + ref + ": " + ", ".join(
                "{} {:.3f} (90 % interval {:.3f}-{:.3f})".format(n, *paired_ratio(t["cpu_block_ms"],
                                                                                 timed[ref]["cpu_block_ms"]))
                for n, t in timed.items() if n != ref), flush=True)
    out["load_average_after"] = os.getloadavg()
    print(f"load average after: {out['load_average_after']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Issue 12: where a text graph's batch-1 time goes, from onnxruntime's own profiler (one thread, the graph as
a device loads it: default optimisation level, so the fusions onnxruntime applies at load are included).

Usage: python3 bench/profile_onnx.py RUN_DIR GRAPH.onnx [--calls 300]
Prints the mean model_run time, the kernel time per operator type, and for each weight MatMul shape its median
time and the weight bytes it reads per second (time proportional to bytes = bound by memory bandwidth).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from candidate_timing import feeds_for


def profile(graph: Path, feeds: list, calls: int, warmup: int = 20) -> dict:
    """Return {model_run_ms, ops: {op: {ms, nodes}}, matmuls: {shape: {us, nodes, mb, gb_per_s}}} per call."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(graph), load_external_data=False)
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    weight = {n.name: inits.get(n.input[1]) for n in model.graph.node if n.op_type == "MatMul"}
    options = ort.SessionOptions()
    options.log_severity_level, options.intra_op_num_threads, options.inter_op_num_threads = 3, 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        for i in range(warmup + calls):
            sess.run(None, feeds[i % len(feeds)])
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][warmup:]
    ops: dict = collections.defaultdict(lambda: {"us": 0.0, "count": 0})
    mm: dict = collections.defaultdict(list)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        ops[op]["us"] += e["dur"]
        ops[op]["count"] += 1
        shape = weight.get(e["name"][:-len("_kernel_time")])
        if op == "MatMul" and shape:
            mm[shape].append(e["dur"])
    n = warmup + calls
    out = {"model_run_ms": float(np.mean(runs) / 1e3), "calls": calls,
           "ops": {k: {"ms": v["us"] / n / 1e3, "nodes": v["count"] / n}
                   for k, v in sorted(ops.items(), key=lambda kv: -kv[1]["us"])}, "matmuls": {}}
    for shape, durs in mm.items():
        mb = float(np.prod(shape)) * 4 / 1e6
        us = float(np.median(durs))
        out["matmuls"][str(shape)] = {"us": us, "nodes": len(durs) / n, "mb_fp32": mb, "gb_per_s": mb / us * 1e3}
    return out


def main(argv: list[str]) -> int:
    """Profile and print; return the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("graph", type=Path)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args(argv)
    feeds = feeds_for(args.run, [args.graph])
    if feeds is None:
        return 1
    print(f"load average before: {os.getloadavg()}")
    p = profile(args.graph, feeds, args.calls)
    kernels = sum(v["ms"] for v in p["ops"].values())
    print(f"{args.graph}: model_run {p['model_run_ms']:.3f} ms per call (profiler on), kernels {kernels:.3f} ms")
    for op, v in p["ops"].items():
        print(f"  {op:28s} {v['ms']:7.3f} ms  {v['nodes']:5.1f} nodes  {100 * v['ms'] / kernels:5.1f} %")
    for shape, v in p["matmuls"].items():
        print(f"  MatMul weight {shape}: {v['nodes']:.0f} nodes, median {v['us']:.1f} us, {v['mb_fp32']:.2f} MB "
              f"(if fp32) -> {v['gb_per_s']:.1f} GB/s")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

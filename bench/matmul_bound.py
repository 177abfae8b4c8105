"""Is the fp32 text artifact's MatMul time bound by memory bandwidth or by arithmetic? (issue 12, fp32 vs eager)

Usage: python bench/matmul_bound.py [--tokens 8,16,32,64] [--layers 12] [--calls 200] [--out FILE.json]

Builds two onnxruntime graphs of MiniLM's feed-forward shape (384 -> 1536 -> 384, fp32, one thread):
- **streamed**: ``--layers`` pairs with distinct weights (12 pairs = 56.6 MB, more than this CPU's 32 MiB L3), so
  every call reads the weights from memory, as the 42.5 MB of the artifact's encoder weights are read;
- **cached**: one pair's weights used ``--layers`` times in a row (4.7 MB, stays in cache), the same arithmetic.
Both are timed at batch 1 with several token counts (M). Same time for both = the arithmetic bounds it;
streamed much slower = memory bandwidth bounds it. Prints and writes per-pair ms, GB/s of weights and GFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HIDDEN, INNER = 384, 1536


def ffn_chain(layers: int, distinct: bool, seed: int = 0) -> bytes:
    """Return a serialized ONNX model: ``layers`` MatMul pairs (384x1536, 1536x384) with a Relu between, each pair
    with its own weights (``distinct``) or all sharing one pair's."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        j = i if distinct else 0
        if distinct or i == 0:
            scale = 1.0 / np.sqrt(HIDDEN)
            inits += [numpy_helper.from_array((rng.standard_normal((HIDDEN, INNER)) * scale).astype(np.float32), f"w1_{j}"),
                      numpy_helper.from_array((rng.standard_normal((INNER, HIDDEN)) * scale / 2).astype(np.float32), f"w2_{j}")]
        nodes += [helper.make_node("MatMul", [x, f"w1_{j}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{j}"], [f"y{i}"])]
        x = f"y{i}"
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", HIDDEN])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["m", HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def time_per_pair(model: bytes, tokens: int, layers: int, calls: int) -> float:
    """Return the median CPU seconds of one call divided by ``layers`` (one thread, after 20 warm-up calls)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).standard_normal((tokens, HIDDEN)).astype(np.float32)}
    for _ in range(20):
        sess.run(None, feed)
    times = []
    for _ in range(calls):
        t0 = time.thread_time()
        sess.run(None, feed)
        times.append(time.thread_time() - t0)
    return float(np.median(times)) / layers


def main() -> None:
    """Time both graphs at each token count; print a table and write it as JSON with ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="8,16,32,64")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    weight_bytes = 2 * HIDDEN * INNER * 4
    graphs = {"streamed": ffn_chain(args.layers, True), "cached": ffn_chain(args.layers, False)}
    rows = []
    print(f"one pair = {weight_bytes / 1e6:.2f} MB of fp32 weights; streamed graph "
          f"{args.layers * weight_bytes / 1e6:.1f} MB; onnxruntime {ort.__version__}, one thread, CPU time")
    print("tokens  graph      ms/pair   GB/s weights   GFLOP/s")
    for m in (int(t) for t in args.tokens.split(",")):
        for name, model in graphs.items():
            sec = time_per_pair(model, m, args.layers, args.calls)
            row = {"tokens": m, "graph": name, "ms_per_pair": sec * 1e3, "weight_gb_per_s": weight_bytes / sec / 1e9,
                   "gflop_per_s": 2 * 2 * m * HIDDEN * INNER / sec / 1e9}
            rows.append(row)
            print(f"{m:6d}  {name:9s} {row['ms_per_pair']:8.3f}   {row['weight_gb_per_s']:12.1f}   "
                  f"{row['gflop_per_s']:7.1f}")
    if args.out:
        args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                        "onnxruntime": ort.__version__, "layers": args.layers, "rows": rows},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()

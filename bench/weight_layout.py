"""Issue 12: the fp32 text graph with its weight MatMuls as exported (plain) against the same graph rewritten to
Gemm(Wᵀ, x) (transposed, monocon_edge/exporting/weight_layout.py), per sentence length, one thread.

Usage: python3 bench/weight_layout.py GRAPH.onnx [--tokens 4,8,13,16,17,24,32,48,64,128] [--calls 150]
         [--batch 64] [--batch-tokens 32] [--sessions 8] [--session-tokens 13] [--offsets inline,0,256,512]
         [--json OUT.json]
GRAPH: an fp32 text graph with plain weight MatMuls (an artifact exported with ``--fp32-layout plain``). The
transposed graph is made from it here, its A-operand weights in an external data file at the offset (mod 4096)
export ships them at. Each length T is one sentence of T tokens (fixed random ids, CLS ... SEP,
no padding) at batch 1; each graph runs it ``--calls`` times in a row after 10 untimed calls — as a device calls
one model — in the order plain, transposed, transposed, plain; the figure is the median CPU time of the calling
thread over both of its runs. Then batch ``--batch`` x ``--batch-tokens``, 3 calls per graph. With ``--sessions N``,
each graph is also loaded N times afresh (alternating), and each new session times ``--session-tokens`` tokens
(60 calls after 10): the spread between sessions of one graph; ``--offsets`` adds the transposed graph with its
weights at other offsets mod 4096 ("inline": inside the .onnx file, where onnxruntime copies them). Prints tables
(and writes them as JSON with ``--json``) with the load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def sentence(tokens: int, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Return model feeds of ``batch`` sentences of ``tokens`` ids each (101 ... 102), all unmasked."""
    rng = np.random.default_rng(seed + tokens)
    ids = rng.integers(1000, 2000, (batch, tokens)).astype(np.int64)  # ordinary word pieces in any BERT vocabulary
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def cpu_times(run, feeds: dict, calls: int, warmup: int = 10) -> list[float]:
    """Return the calling thread's CPU ms of ``calls`` consecutive calls of ``run(feeds)`` after ``warmup`` ones."""
    for _ in range(warmup):
        run(feeds)
    out = []
    for _ in range(calls):
        start = time.thread_time()
        run(feeds)
        out.append((time.thread_time() - start) * 1e3)
    return out


def _plain_vs_transposed(runs: dict, tokens: int, batch: int, calls: int, warmup: int) -> dict:
    """Return {tokens, batch, plain_ms, transposed_ms, ratio}: each session runs ``batch`` sentences of ``tokens``
    tokens ``calls`` times in a row (after ``warmup``), in the order plain, transposed, transposed, plain; the
    median CPU ms of each graph over both of its runs."""
    feeds = sentence(tokens, batch)
    times: dict[str, list[float]] = {"plain": [], "transposed": []}
    for name in ("plain", "transposed", "transposed", "plain"):
        times[name] += cpu_times(lambda f, s=runs[name]: s.run(None, f), feeds, calls, warmup)
    row = {"tokens": tokens, "batch": batch, **{f"{k}_ms": float(np.median(v)) for k, v in times.items()}}
    row["ratio"] = row["transposed_ms"] / row["plain_ms"]
    return row


def _session_spread(graphs: dict[str, Path], sessions: int, tokens: int) -> dict | None:
    """Return {"tokens", "ms": {name: [CPU ms of each fresh session]}}: every graph loaded ``sessions`` times, in
    turn, each session timing one sentence of ``tokens`` tokens (None when ``sessions`` is 0)."""
    from monocon_edge.exporting.latency import session

    if not sessions:
        return None
    feeds = sentence(tokens)
    ms: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(sessions):
        for name, path in graphs.items():
            s = session(path, threads=1)
            ms[name].append(float(np.median(cpu_times(lambda f, s=s: s.run(None, f), feeds, 60))))
            del s
    return {"tokens": tokens, "ms": ms}


def _placed(model, folder: Path, offset: int | str) -> Path:
    """Return the path of a copy of ``model`` saved in its own sub-folder of ``folder``: its A-operand weights at
    ``offset`` mod 4096 in an external data file (as export ships them), or inside the graph file for "inline"."""
    import onnx

    from monocon_edge.exporting.weight_layout import place_left_operands

    path = folder / f"at-{offset}" / "model.onnx"
    path.parent.mkdir()
    if offset == "inline":
        onnx.save_model(model, str(path))
    else:  # placing empties the placed initializers: work on a copy
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        place_left_operands(copy, path, offset)
    return path


def main(argv: list[str]) -> int:
    """Time both layouts; print the table; return the exit status."""
    import onnx

    from monocon_edge.device.errors import MonoconError
    from monocon_edge.exporting.latency import session
    from monocon_edge.exporting.weight_layout import LEFT_OPERAND_OFFSET, weights_as_left_operand

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", type=Path)
    ap.add_argument("--tokens", default="4,8,13,16,17,24,32,48,64,128")
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch-tokens", type=int, default=32)
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--session-tokens", type=int, default=13)
    ap.add_argument("--offsets", default="")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    try:
        lengths = [int(t) for t in args.tokens.split(",")]
        offsets = [o if o == "inline" else int(o) for o in args.offsets.split(",") if o]
        if any(o != "inline" and not 0 <= o < 4096 for o in offsets) or (offsets and not args.sessions):
            raise ValueError
        if (min(lengths) < 2 or args.calls < 1 or args.batch < 1 or args.batch_tokens < 2 or args.sessions < 0
                or args.session_tokens < 2):
            raise ValueError
    except ValueError:
        print("error: --tokens takes integers >= 2 separated by commas; --calls, --batch >= 1, --batch-tokens >= 2; "
              "--offsets takes 'inline' or offsets 0-4095 separated by commas, with --sessions", file=sys.stderr)
        return 2
    if not args.graph.is_file():
        print(f"error: no graph at {args.graph}", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    try:
        model = onnx.load(str(args.graph))
        stats = weights_as_left_operand(model)
        if not stats["matmuls"]:
            raise MonoconError(f"{args.graph} has no plain weight MatMul (already rewritten? export with "
                               "--fp32-layout plain)")
        with tempfile.TemporaryDirectory() as tmp:
            graphs = {"plain": args.graph, "transposed": _placed(model, Path(tmp), LEFT_OPERAND_OFFSET)}
            for offset in offsets:
                graphs[f"at {offset}"] = _placed(model, Path(tmp), offset)
            del model
            runs = {name: session(graphs[name], threads=1) for name in ("plain", "transposed")}
            spread = _session_spread(graphs, args.sessions, args.session_tokens)
    except MonoconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # not an ONNX file, or not a text graph onnxruntime can run
        print(f"error: {args.graph}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    out = {"graph": str(args.graph), "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "rewrite": stats, "load_average_before": load_before, "calls": args.calls, "rows": [],
           "session_spread": spread}
    print(f"load average before: {out['load_average_before']}")
    if spread:
        print(f"fresh sessions, {args.session_tokens} tokens, batch 1, one thread, CPU ms (median of 60 calls each):")
        for name, values in spread["ms"].items():
            print(f"  {name:10s} " + " ".join(f"{v:.2f}" for v in values))
    print(f"rewrite: {stats}")
    print("tokens  plain ms  transposed ms  transposed / plain   (batch 1, one thread, CPU time, median)")
    for tokens in lengths:
        row = _plain_vs_transposed(runs, tokens, 1, args.calls, warmup=10)
        out["rows"].append(row)
        print(f"{tokens:6d}  {row['plain_ms']:8.2f}  {row['transposed_ms']:13.2f}  {row['ratio']:18.2f}", flush=True)
    row = _plain_vs_transposed(runs, args.batch_tokens, args.batch, 3, warmup=1)
    out["rows"].append(row)
    print(f"batch {args.batch} x {args.batch_tokens} tokens: plain {row['plain_ms']:.1f} ms, transposed "
          f"{row['transposed_ms']:.1f} ms ({row['ratio']:.2f})")
    out["load_average_after"] = os.getloadavg()
    print(f"load average after: {out['load_average_after']}")
    if args.json:
        from monocon_edge.files import write_json_atomic

        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

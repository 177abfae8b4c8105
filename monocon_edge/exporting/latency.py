"""Batch-1 latency of several ONNX graphs measured side by side in one process, the way a device runs one model.

A device calls one model over and over, so its weights stay in the CPU caches between calls. Calling several
graphs in turn (one call each per round) evicts a small graph's weights with the others' (the six text graphs
hold ~230 MB) and times it cold. So each graph is timed in *blocks* of consecutive calls — ``block`` calls in a
row, the first ``rewarm`` of them untimed — and the blocks of all graphs are interleaved, in a fresh random order
per round, so that drift of the machine (other processes, frequency) still falls on every graph alike.
``block=1, rewarm=0`` is the old one-call-per-graph interleaving (kept for comparison: bench/candidate_timing.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..device.errors import MonoconError

Batch = dict[str, np.ndarray]
# Consecutive calls per graph in one block, and how many of them (the first) re-warm the caches untimed.
BLOCK_CALLS = 25
REWARM_CALLS = 5


def session(path: Path | bytes, threads: int | None = None) -> Any:
    """Return a CPU onnxruntime session of ``path`` (a file or serialized model); ``threads`` caps intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def load_ms(path: Path, repeats: int = 3) -> float:
    """Return the median wall time (ms) of creating a one-thread session of ``path`` (graph optimisation included)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session(path, threads=1)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def block_schedule(names: Sequence[str], calls: int, block: int, seed: int = 0) -> list[list[str]]:
    """Return the rounds of a blocked timing: each round lists every name once, in a fresh random order; a graph
    runs one block of ``block`` calls per round, so ceil(calls / block) rounds give each at least ``calls``."""
    if calls < 1 or block < 1:
        raise MonoconError("latency needs at least one call per graph and blocks of at least one call")
    rng = np.random.default_rng(seed)
    rounds = -(-calls // block)
    return [[names[i] for i in rng.permutation(len(names))] for _ in range(rounds)]


def time_blocks(runners: dict[str, Callable[[Batch], Any]], feeds: Sequence[Batch], calls: int,
                block: int = BLOCK_CALLS, rewarm: int = REWARM_CALLS,
                seed: int = 0, rewarm_s: float = 0.0) -> dict[str, dict[str, float]]:
    """Return {name: {p50_ms, p90_ms, p95_ms, p99_ms, mean_ms, cpu_p50_ms, cpu_block_ms, calls, block, rewarm}} of
    ``calls`` timed calls of each runner (``cpu_block_ms``: the median CPU time of each of its blocks, in round
    order).

    Rounds come from ``block_schedule``; in a round, every graph runs ``rewarm`` untimed then ``block`` timed
    calls in a row on the same inputs as the others (input i of a round: ``feeds[(round * block + i) % n]``), and
    more untimed calls on the round's first input until ``rewarm_s`` seconds have passed since the block began:
    with several intra-op threads, the previous runner's idle worker threads (onnxruntime's pool, PyTorch's
    OpenMP team) keep spinning for tens of milliseconds and slow the next runner's first calls.
    ``cpu_p50_ms`` is the calling thread's CPU time per call: with one intra-op thread onnxruntime computes on
    that thread, so it is the call's compute time without the waits for a CPU that wall time includes on a
    shared machine. Percentiles are over all timed calls of a graph.
    """
    if not feeds:
        raise MonoconError("latency needs at least one input")
    if rewarm < 0 or rewarm_s < 0:
        raise MonoconError("rewarm calls and seconds must be >= 0")
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    block_cpu: dict[str, list[float]] = {name: [] for name in runners}
    for r, order in enumerate(block_schedule(list(runners), calls, block, seed)):
        for name in order:
            run = runners[name]
            began = time.perf_counter()
            for i in range(rewarm):
                run(feeds[(r * block + i) % len(feeds)])
            while time.perf_counter() - began < rewarm_s:
                run(feeds[(r * block) % len(feeds)])
            timed = min(block, calls - r * block)
            for i in range(timed):
                feed = feeds[(r * block + i) % len(feeds)]
                start, start_cpu = time.perf_counter(), time.thread_time()
                run(feed)
                cpu[name].append(time.thread_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
            block_cpu[name].append(float(np.median(cpu[name][-timed:]) * 1e3))
    out = {}
    for name in runners:
        ms = np.asarray(wall[name]) * 1e3
        p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
        out[name] = {"p50_ms": p50, "p90_ms": p90, "p95_ms": p95, "p99_ms": p99, "mean_ms": float(ms.mean()),
                     "cpu_p50_ms": float(np.median(cpu[name]) * 1e3), "cpu_block_ms": block_cpu[name],
                     "calls": len(ms), "block": block, "rewarm": rewarm}
    return out


def blocked_latency(paths: dict[str, Path], feeds: Sequence[Batch], calls: int, block: int = BLOCK_CALLS,
                    rewarm: int = REWARM_CALLS, warmup: int = 5, threads: int = 1,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Return ``time_blocks`` figures of one-thread onnxruntime sessions of ``paths`` (batch-1 ``feeds``), after
    ``warmup`` untimed calls per graph."""
    if not feeds:
        raise MonoconError("latency needs at least one input")
    sessions = {name: session(p, threads) for name, p in paths.items()}
    return sessions_latency(sessions, feeds, calls, block, rewarm, warmup, seed)


def sessions_latency(sessions: dict[str, Any], feeds: Sequence[Batch], calls: int, block: int = BLOCK_CALLS,
                     rewarm: int = REWARM_CALLS, warmup: int = 5, seed: int = 0) -> dict[str, dict[str, float]]:
    """Return ``time_blocks`` figures of onnxruntime ``sessions`` already open (batch-1 ``feeds``), after ``warmup``
    untimed calls per session."""
    if not feeds:
        raise MonoconError("latency needs at least one input")
    for s in sessions.values():
        for feed in list(feeds)[:max(warmup, 1)]:
            s.run(None, feed)
    runners = {name: (lambda feed, s=s: s.run(None, feed)) for name, s in sessions.items()}
    return time_blocks(runners, feeds, calls, block, rewarm, seed)


def paired_ratio(blocks: Sequence[float], reference_blocks: Sequence[float], confidence: float = 0.9,
                 resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Return (median, low, high) of the per-round ratio ``blocks[r] / reference_blocks[r]`` of two graphs timed in
    the same rounds (``time_blocks``' ``cpu_block_ms``): the median over rounds and a bootstrap ``confidence``
    interval of that median (rounds resampled with replacement; a fixed seed, so the same timings give the same
    interval). Pairing by round cancels the machine's drift, which falls on both graphs of a round alike."""
    ratios = np.asarray(blocks, dtype=np.float64) / np.asarray(reference_blocks, dtype=np.float64)
    if ratios.size == 0:
        raise MonoconError("a paired ratio needs at least one round")
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(resamples, ratios.size), replace=True), axis=1)
    tail = (1 - confidence) / 2
    return (float(np.median(ratios)), float(np.quantile(medians, tail)), float(np.quantile(medians, 1 - tail)))

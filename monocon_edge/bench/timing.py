"""Wall-clock timing of a callable: warm-up calls first, then timed calls. Pure Python, no torch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency percentiles in milliseconds over ``iterations`` timed calls (after ``warmup``)."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    iterations: int
    warmup: int
    # median CPU time of the calling thread per call: the compute time when the work runs on that thread (one
    # intra-op thread), without the waits for a CPU that wall time includes on a busy machine
    cpu_p50_ms: float | None = None


def _timed_calls(fn: Callable[[], object], warmup: int, iterations: int,
                 cpu: list[float] | None = None) -> np.ndarray:
    """Return the seconds taken by each of ``iterations`` calls of ``fn`` made after ``warmup`` untimed calls
    (and append each call's calling-thread CPU seconds to ``cpu`` when given)."""
    if iterations < 1 or warmup < 0:
        raise ValueError("timing needs iterations >= 1 and warmup >= 0")
    for _ in range(warmup):
        fn()
    times = np.empty(iterations, dtype=np.float64)
    for i in range(iterations):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        times[i] = time.perf_counter() - start
        if cpu is not None:
            cpu.append(time.thread_time() - start_cpu)
    return times


def measure_latency(fn: Callable[[], object], warmup: int, iterations: int) -> LatencyStats:
    """Return the latency percentiles of ``fn`` (one call = one request)."""
    cpu: list[float] = []
    ms = _timed_calls(fn, warmup, iterations, cpu) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return LatencyStats(float(p50), float(p95), float(p99), float(ms.mean()), iterations, warmup,
                        float(np.median(cpu) * 1e3))

"""The candidate timing schedule (exporting/latency.py): blocks of consecutive calls per graph, interleaved."""
from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from monocon_edge.device.errors import MonoconError
from monocon_edge.exporting import latency


def _recording(names: list[str], log: list[tuple[str, int]]) -> dict:
    return {n: (lambda feed, n=n: log.append((n, int(feed["id"][0])))) for n in names}


@pytest.mark.parametrize("calls, block, rewarm", [(60, 20, 1), (45, 20, 1), (30, 10, 0)])
def test_each_graph_runs_in_blocks_of_consecutive_calls(calls, block, rewarm) -> None:
    names = ["fp32", "a", "b", "c"]
    feeds = [{"id": np.array([i])} for i in range(7)]
    log: list[tuple[str, int]] = []
    timed = latency.time_blocks(_recording(names, log), feeds, calls, block=block, rewarm=rewarm, seed=3)
    runs = [(name, [f for _, f in group]) for name, group in itertools.groupby(log, key=lambda c: c[0])]
    rounds = -(-calls // block)
    # one run of consecutive calls per graph and round: never a single call of one graph between others'
    assert len(runs) == rounds * len(names)
    for r in range(rounds):
        in_round = runs[r * len(names):(r + 1) * len(names)]
        assert sorted(n for n, _ in in_round) == sorted(names)  # every graph once per round
        timed_calls = min(block, calls - r * block)
        want = [(r * block + i) % len(feeds) for i in range(rewarm)] + [
            (r * block + i) % len(feeds) for i in range(timed_calls)]
        assert all(fs == want for _, fs in in_round)  # same inputs for every graph
    assert {t["calls"] for t in timed.values()} == {calls}
    assert all(t["cpu_p50_ms"] >= 0 and t["p50_ms"] >= 0 for t in timed.values())
    assert all(len(t["cpu_block_ms"]) == rounds for t in timed.values())  # one median per block, round order


def test_graph_order_changes_between_rounds() -> None:
    schedule = latency.block_schedule(["fp32", "a", "b", "c", "d"], calls=200, block=20, seed=0)
    assert len(schedule) == 10 and len({tuple(r) for r in schedule}) > 1


def test_one_call_blocks_without_rewarm_are_the_old_interleaving() -> None:
    log: list[tuple[str, int]] = []
    latency.time_blocks(_recording(["x", "y"], log), [{"id": np.array([0])}], 5, block=1, rewarm=0)
    assert len(log) == 10 and all(a[0] != b[0] for a, b in zip(log[0::2], log[1::2]))


@pytest.mark.parametrize("calls, block, rewarm, feeds", [(0, 20, 1, 1), (10, 0, 1, 1), (10, 5, -1, 1),
                                                         (10, 5, 1, 0)])
def test_bad_timing_settings_are_refused(calls, block, rewarm, feeds) -> None:
    with pytest.raises(MonoconError):
        latency.time_blocks({"x": lambda f: None}, [{"id": np.array([0])}] * feeds, calls, block, rewarm)


def test_paired_ratio_cancels_drift_shared_by_a_round() -> None:
    drift = np.array([1.0, 1.4, 0.9, 2.0, 1.1, 1.0, 1.3, 0.95])  # the machine slows down and speeds up
    ratio, low, high = latency.paired_ratio(1.04 * drift, drift)
    assert ratio == pytest.approx(1.04) and low == pytest.approx(1.04) and high == pytest.approx(1.04)
    # unpaired medians of the same blocks would mix the drift in; per-round noise widens the interval instead
    noisy = 1.04 * drift * np.array([1.03, 0.97, 1.02, 0.98, 1.01, 0.99, 1.04, 0.96])
    ratio, low, high = latency.paired_ratio(noisy, drift)
    assert low < 1.04 < high and low <= ratio <= high
    assert latency.paired_ratio(noisy, drift) == (ratio, low, high)  # a fixed seed: the same interval again
    with pytest.raises(MonoconError):
        latency.paired_ratio([], [])


def test_each_block_waits_out_the_previous_runners_spinning_threads() -> None:
    # rewarm_s: untimed calls until that long after the block began, on top of the rewarm calls.
    log: list[tuple[str, float]] = []

    def runner(name):
        def run(feed):
            time.sleep(0.001)
            log.append((name, time.perf_counter()))
        return run

    timed = latency.time_blocks({"a": runner("a"), "b": runner("b")}, [{"id": np.array([0])}], 4, block=2, rewarm=1,
                                rewarm_s=0.03)
    assert {t["calls"] for t in timed.values()} == {4}
    runs = [list(group) for _, group in itertools.groupby(log, key=lambda c: c[0])]
    assert len(runs) >= 3  # 2 rounds x 2 runners (a round may end with the runner the next one starts with)
    for run in runs:
        assert len(run) > 1 + 2  # more untimed calls than the one rewarm call
        assert run[-3][1] - run[0][1] >= 0.03 - 0.002  # the untimed calls span rewarm_s before the timed ones
    with pytest.raises(MonoconError):
        latency.time_blocks({"a": runner("a")}, [{"id": np.array([0])}], 4, block=2, rewarm=1, rewarm_s=-1)

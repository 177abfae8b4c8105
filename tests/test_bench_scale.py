"""bench-index (retrieval at scale on FAISS): tiny sizes through the real CLI, and its building blocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monocon_edge.bench import scale
from monocon_edge.device.errors import MonoconError
from monocon_edge.serving.faiss_index import FaissIndex

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("n", "dims", "codes", "index", "index_bytes", "threads", "p50_ms_batch1", "recall_at_10", "fits")


def test_sizes_and_options_parse_or_refuse() -> None:
    assert scale.parse_sizes("10m,10k, 100k,1m") == (10_000, 100_000, 1_000_000, 10_000_000)
    assert scale.parse_sizes("2500,1.5k") == (1500, 2500)
    for bad in ("", "ten", "0", "-5k"):
        with pytest.raises(MonoconError):
            scale.parse_sizes(bad)
    for field, value in (("codes", "int4"), ("indexes", "lsh"), ("threads", "0"), ("nprobe", "4,x"),
                         ("queries", 0), ("dims", "sixteen")):
        with pytest.raises(MonoconError):
            scale.ScaleOptions(**{field: value}).check()
    assert scale.ScaleOptions(threads="1,all,1").thread_counts() == tuple(dict.fromkeys((1, scale.available_threads())))


def test_synthetic_galleries_are_nested_seeded_unit_vectors_after_the_real_ones() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 6)).astype(np.float32) + np.array([3, 0, 0, 0, 0, 0], np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    mix = scale.fit_mixture(real, 4, seed=0)
    small, n_small = scale.build_gallery(real, mix, 300, seed=1)
    big, n_big = scale.build_gallery(real, mix, 2000, seed=1)
    again, _ = scale.build_gallery(real, mix, 2000, seed=1)
    assert (n_small, n_big) == (300, 400)
    np.testing.assert_array_equal(small, real[:300])
    np.testing.assert_array_equal(big[:400], real)
    np.testing.assert_array_equal(big, again)
    np.testing.assert_allclose(np.linalg.norm(big, axis=1), 1.0, atol=1e-5)
    # The mixture follows the real data: the synthetic vectors' mean direction is the real one's.
    assert np.dot(big[400:].mean(0), real.mean(0)) / np.linalg.norm(big[400:].mean(0)) > 0.95 * np.linalg.norm(
        real.mean(0))
    other, _ = scale.build_gallery(real, mix, 2000, seed=2)
    assert not np.allclose(other[400:], big[400:])


@pytest.mark.parametrize("codes", ["float32", "int8"])
@pytest.mark.parametrize("index,params", [("flat", {}), ("ivf", {"nlist": 32}), ("hnsw", {"M": 12})])
def test_memory_estimates_match_built_indexes(codes, index, params) -> None:
    x = np.random.default_rng(1).normal(size=(5000, 16)).astype(np.float32)
    scales = np.full(16, 0.01, np.float32)
    built = FaissIndex(16, codes, scales if codes == "int8" else None, index=index, params=params)
    built.add(x)
    est = scale.estimate_index_bytes(5000, 16, codes, index, params.get("nlist", 0), params.get("M", 16))
    assert abs(est - built.structure_bytes) <= 0.1 * built.structure_bytes


def test_recall_counts_ties_and_task_hits_only_real_items() -> None:
    gallery = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
    queries = np.array([[1, 0]], np.float32)
    truth = np.array([[1.0, 1.0]], np.float32)  # exact top-2 scores
    real = scale.RealSet("vision", "", None, np.array([7]), None, np.array([7, 7, 3]))
    q = scale._quality(np.array([[1, 0]]), queries, gallery, truth, 3, real)  # the tie, in the other order
    assert q == {"recall_at_1": 1.0, "recall_at_10": 1.0, "task_recall_at_1": 1.0}
    q = scale._quality(np.array([[3, 0]]), queries, gallery, truth, 3, real)  # a synthetic vector first
    assert q == {"recall_at_1": 0.0, "recall_at_10": 0.5, "task_recall_at_1": 0.0}


def test_bench_index_cli_on_tiny_sizes(digits_artifact, tmp_path) -> None:
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "monocon_edge", "bench-index", str(digits_artifact), "--sizes", "800,3000,40000",
           "--queries", "24", "--iterations", "2", "--batch", "8", "--batch-iterations", "1", "--threads", "1",
           "--nprobe", "4,64", "--ef-search", "32", "--memory-budget-mb", "2", "--gmm-components", "4",
           "--results-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    stem = [f for f in files if f.endswith(".json")][0][:-5]
    assert stem.startswith("scale-") and files == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    data = json.loads((out / f"{stem}.json").read_text())
    rows = data["rows"]
    assert all(k in r for r in rows for k in REQUIRED)
    assert {r["n"] for r in rows} == {800, 3000, 40000}
    assert {(r["codes"], r["index"]) for r in rows} == {(c, i) for c in ("float32", "int8")
                                                          for i in ("flat", "ivf", "hnsw")}
    refused = [r for r in rows if not r["fits"]]
    # 40000 x 16 float32 = 2.56 MB > the 2 MiB budget: reported with what it would need, not run.
    assert refused and all(r["n"] == 40000 and r["p50_ms_batch1"] is None and r["recall_at_10"] is None
                           for r in refused)
    flat8 = [r for r in refused if r["codes"] == "int8" and r["index"] == "flat"][0]
    assert flat8["index_bytes"] == 40000 * 16 and flat8["bench_bytes_needed"] == 40000 * 16 * 5
    ran = [r for r in rows if r["fits"]]
    assert all(r["n"] < 40000 and r["p50_ms_batch1"] > 0 and 0 <= r["recall_at_10"] <= 1 for r in ran)
    for r in ran:
        assert r["n_synthetic"] == r["n"] - r["n_real"] and r["dims"] == 16 and r["threads"] == 1
        if r["index"] == "flat":
            assert r["index_bytes"] == r["n"] * 16 * (4 if r["codes"] == "float32" else 1)
        if r["codes"] == "float32" and r["index"] == "flat":
            assert r["recall_at_1"] == 1.0 and r["recall_at_10"] == 1.0  # exact search against itself
    big = [r for r in ran if r["n"] == 3000]
    assert big and all(r["n_synthetic"] > 0 for r in big)
    ivf = {r["index_params"]["nprobe"]: r["recall_at_10"] for r in big if r["index"] == "ivf" and r["codes"] == "float32"}
    assert ivf[64] >= ivf[4] and ivf[64] == 1.0  # probing every list is exact
    assert any("SYNTHETIC" in n for n in data["notes"])
    assert data["header"]["versions"]["faiss"] and data["targets"]
    md = (out / f"{stem}.md").read_text()
    assert "| 40,000 |" in md and "**no**" in md
    # --from-json measures nothing: it re-evaluates the targets and rewrites the files from the rows.
    (out / f"{stem}.md").unlink()
    again = subprocess.run([sys.executable, "-m", "monocon_edge", "bench-index", "--from-json", str(out / f"{stem}.json")],
                           capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / f"{stem}.md").read_text() == md
    assert json.loads((out / f"{stem}.json").read_text())["rows"] == rows
    dotted = out / "scale-v0.1.json"  # a dot in the name: the .md beside it keeps the whole name
    dotted.write_text((out / f"{stem}.json").read_text())
    assert subprocess.run([sys.executable, "-m", "monocon_edge", "bench-index", "--from-json", str(dotted)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path).returncode == 0
    assert (out / "scale-v0.1.md").read_text() == md

"""monocon-edge bench: every field measured on tiny digits runs/artifacts, file outputs, the export cache, and
one clear line for bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import tree_state

from monocon_edge.bench.accuracy import Embedded, quality
from monocon_edge.bench.evaldata import text_eval_set
from monocon_edge.bench.output import markdown, result_stem, write_json, write_markdown, write_plot
from monocon_edge.bench.runner import (EAGER, BenchOptions, BenchResult, _accuracy_fields, paired_speedup,
                                       run_bench, side_by_side)
from monocon_edge.bench.targets import bench_dims, parse_dims, run_cache_dir
from monocon_edge.bench.timing import measure_latency
from monocon_edge.exporting.latency import REWARM_CALLS
from monocon_edge.cli import app
from monocon_edge.device.errors import ArtifactError, MonoconError
from monocon_edge.device.integrity import seal

runner = CliRunner()
# Few iterations: these tests check fields and wiring; timings worth reading come from bench/ suites.
FAST = dict(dims="16", warmup=1, iterations=5, batch=8, batch_iterations=2, search_iterations=3, parity_atol=1e-3)
FAST_CLI = ["--dims", "16", "--warmup", "1", "--iterations", "5", "--batch", "8", "--batch-iterations", "2",
            "--search-iterations", "3", "--parity-atol", "1e-3"]
REQUIRED = ("model", "head", "precision", "index_codes", "dims", "recall_at_1", "recall_at_5", "latency_ms_p50",
            "latency_ms_p95", "latency_ms_p99", "throughput_per_s", "peak_rss_mb", "model_bytes",
            "index_bytes_per_vector", "index_bytes", "search_ms_p50", "torch_eager_latency_ms_p50",
            "speedup_latency_p50", "knn5_accuracy", "threads", "latency_cpu_ms_p50", "torch_eager_latency_cpu_ms_p50")
BYTES_PER_CODE = {"float32": 4, "int8": 1}


@pytest.fixture(scope="module")
def bench_result(tiny_runs, digits_artifact, tmp_path_factory):
    """Bench a copy of the MonoCon digits run (exported here) and the baseline's 16-d artifact, once."""
    run = tmp_path_factory.mktemp("bench") / "monotonic"
    shutil.copytree(tiny_runs["monotonic"], run)
    before = tree_state(run)
    events: list[tuple[str, str]] = []
    result = run_bench([run, digits_artifact], BenchOptions(**FAST, threads=2, extra_threads=(1,)),
                       on_event=lambda kind, info: events.append((kind, info.get("name", ""))))
    return SimpleNamespace(run=run, result=result, events=events, run_before=before, run_after=tree_state(run))


def test_bench_measures_every_field(bench_result) -> None:
    rows, header = bench_result.result.rows, bench_result.result.header
    heads = {r["head"] for r in rows}
    assert heads == {"monotonic", "none"}
    # MonoCon run: full + 16 dims (+ d_eff when < d_enc); the artifact: its own 16 dims; 2 graphs x 2 codes each.
    mono = [r for r in rows if r["head"] == "monotonic"]
    assert {r["dims_label"] for r in mono} >= {"full", "16"} or {r["dims_label"] for r in mono} >= {"full", "16+deff"}
    assert len([r for r in rows if r["head"] == "none"]) == 4
    for row in rows:
        missing = [k for k in REQUIRED if row.get(k) is None]
        assert not missing, (row["model"], row["dims"], missing)
        assert 0.0 <= row["recall_at_1"] <= row["recall_at_5"] <= 1.0
        assert 0.0 <= row["knn5_accuracy"] <= 1.0
        assert row["sts_spearman"] is None
        assert row["latency_ms_p50"] <= row["latency_ms_p95"] <= row["latency_ms_p99"]
        assert row["throughput_per_s"] > 0 and row["torch_eager_throughput_per_s"] > 0
        # --also-threads 1: every graph and PyTorch eager timed again at one thread, batch 1 and the batch
        assert row["threads"] == 2 and row["latency_ms_p50_1t"] > 0 and row["throughput_per_s_1t"] > 0
        assert 0 < row["latency_cpu_ms_p50_1t"] and 0 < row["torch_eager_latency_cpu_ms_p50_1t"]
        assert row["speedup_latency_p50_1t"] == row["torch_eager_latency_ms_p50_1t"] / row["latency_ms_p50_1t"]
        # ratios paired by round of the side-by-side timing, at both thread counts, each inside its interval;
        # over eager only for a model's first artifact, whose rounds eager ran in (the others' are other rounds)
        with_eager = row["dims_label"] == "full" or row["head"] == "none"
        for key in (("speedup_cpu_paired", "speedup_cpu_paired_1t") if with_eager else ()) + (
                ("speedup_vs_fp32_cpu_paired", "speedup_vs_fp32_cpu_paired_1t") if row["precision"] == "int8" else ()):
            low, high = row[f"{key}_interval"]
            assert 0 < low <= row[key] <= high, (key, row[key], low, high)
        assert len(row["latency_cpu_ms_blocks_1t"]) == 1
        if not with_eager:
            assert row["speedup_cpu_paired_1t"] is None and row["torch_eager_latency_cpu_ms_blocks_1t"] is None
            assert row["speedup_latency_p50_1t"] > 0  # the unpaired ratio to eager's own p50 stays
        if row["precision"] == "fp32":
            assert row["speedup_vs_fp32_cpu_paired"] is None and row["speedup_vs_fp32_cpu_paired_1t_interval"] is None
        assert row["peak_rss_mb"] > 0 and row["rss_probe_imported_torch"] is False
        assert row["index_bytes_per_vector"] == row["dims"] * BYTES_PER_CODE[row["index_codes"]]
        assert row["index_bytes"] == row["dims"] * BYTES_PER_CODE[row["index_codes"]] * row["gallery_size"]
        artifact = Path(row["artifact"])
        manifest = json.loads((artifact / "manifest.json").read_text())
        assert row["model_bytes"] == (artifact / manifest["models"][row["precision"]]["file"]).stat().st_size
        assert row["dims"] == manifest["output"]["dims"]
    for key in ("cpu", "threads", "versions", "date"):
        assert header[key]
    assert {"onnxruntime", "torch", "numpy"} <= set(header["versions"])


def test_bench_leaves_the_run_directory_as_it_was(bench_result) -> None:
    assert bench_result.run_after == bench_result.run_before
    assert not run_cache_dir(bench_result.run).is_relative_to(bench_result.run)


def test_bench_exports_into_its_cache_and_reuses_it(bench_result) -> None:
    cache = run_cache_dir(bench_result.run)
    assert (cache / "d16-int8" / "manifest.json").is_file()
    exported = [name for kind, name in bench_result.events if kind == "export"]
    assert exported
    # Corrupt one cached artifact: the next bench exports it again and reuses the others.
    (cache / "d16-int8" / "model.onnx").write_bytes(b"not onnx")
    events: list[str] = []
    opts = BenchOptions(**{**FAST, "memory_probe": False, "torch_reference": False})
    again = run_bench([bench_result.run], opts, on_event=lambda kind, info: events.append(kind))
    assert events.count("stale") == 1 and "reuse" in events
    assert events.count("export") == 1
    assert all(r["torch_eager_latency_ms_p50"] is None and r["peak_rss_mb"] is None for r in again.rows)

    # An artifact whose int8 scheme was chosen among other candidates (an older exporter) is exported again.
    manifest_path = cache / "d16-int8" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["models"]["int8"]["selection"]["candidates"] = manifest["models"]["int8"]["selection"]["candidates"][:1]
    manifest["integrity"] = seal(manifest)  # re-sealed: an intact manifest, as that exporter wrote it
    manifest_path.write_text(json.dumps(manifest))
    events.clear()
    run_bench([bench_result.run], opts, on_event=lambda kind, info: events.append(kind))
    assert events.count("stale") == 1 and events.count("export") == 1


def test_outputs_json_markdown_plot(bench_result, tmp_path) -> None:
    result = bench_result.result
    write_json(tmp_path / "r.json", result)
    write_markdown(tmp_path / "r.md", result)
    write_plot(tmp_path / "r.png", result)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result.rows)) and saved["header"]["threads"] >= 1
    md = (tmp_path / "r.md").read_text()
    assert md.count("\n| ") == len(result.rows) + 1 and result.header["cpu"] in md
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stem = result_stem(result)
    assert stem.startswith("bench-fp32-int8-") and stem.endswith("-2-1t")
    assert "| p50 ms 1t |" in md
    assert "| codes | R@1 | R@5 | 5-NN |" in md and "pair+STS" not in md  # vision: training's Recall@k name


def test_cli_bench_artifact_writes_results(digits_artifact, tmp_path) -> None:
    out = runner.invoke(app, ["bench", str(digits_artifact), *FAST_CLI, "--no-int8", "--no-memory",
                              "--results-dir", str(tmp_path), "--suite", "digits"])
    assert out.exit_code == 0, out.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "md", "png"]
    assert all(f.startswith("digits-fp32-") for f in files)
    rows = json.loads((tmp_path / files[0]).read_text())["rows"]
    assert {(r["precision"], r["index_codes"]) for r in rows} == {("fp32", "float32"), ("fp32", "int8")}


def _fails_cleanly(args: list[str], expected: str) -> None:
    out = runner.invoke(app, ["bench", *args])
    assert out.exit_code != 0
    assert "Traceback" not in out.output
    assert expected in out.output
    assert len(out.output.strip().splitlines()) == 1, out.output


def test_cli_missing_corrupt_or_foreign_inputs_fail_in_one_line(digits_artifact, tmp_path) -> None:
    _fails_cleanly([str(tmp_path / "nope"), *FAST_CLI], "not found")
    (tmp_path / "empty").mkdir()
    _fails_cleanly([str(tmp_path / "empty"), *FAST_CLI], "neither a run directory")
    broken = tmp_path / "broken"
    shutil.copytree(digits_artifact, broken)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    _fails_cleanly([str(broken), *FAST_CLI], "sha256")
    (broken / "manifest.json").write_text("{not json")
    _fails_cleanly([str(broken), *FAST_CLI], "cannot read")
    _fails_cleanly([str(digits_artifact), "--dims", "16,wide"], "--dims")
    _fails_cleanly([str(digits_artifact), "--threads", "0"], "--threads")


def test_cuda_without_the_provider_is_one_clear_line(digits_artifact) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    _fails_cleanly([str(digits_artifact), "--device", "cuda", *FAST_CLI], "CUDAExecutionProvider")


def test_corrupt_artifact_raises_artifact_error(digits_artifact, tmp_path) -> None:
    broken = tmp_path / "a"
    shutil.copytree(digits_artifact, broken)
    (broken / "model.int8.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        run_bench([broken], BenchOptions(**FAST))
    with pytest.raises(MonoconError, match="at least one"):
        run_bench([], BenchOptions(**FAST))


def test_dims_labels() -> None:
    assert parse_dims("128,64,16,deff") == ("full", "128", "64", "16", "deff")
    # 128 >= d_enc is skipped; deff = 16 shares the 16-d artifact; full is the PCA width.
    assert bench_dims(parse_dims("128,64,16,deff"), d_enc=128, d_eff=16, limit=128) == \
        {128: "full", 64: "64", 16: "16+deff"}
    assert bench_dims(parse_dims("16"), d_enc=32, d_eff=40, limit=30) == {30: "full", 16: "16"}
    with pytest.raises(MonoconError):
        parse_dims("0")


def test_timing_percentiles() -> None:
    calls = []
    lat = measure_latency(lambda: calls.append(1), warmup=3, iterations=7)
    assert len(calls) == 10 and lat.iterations == 7
    assert 0 <= lat.p50_ms <= lat.p95_ms <= lat.p99_ms


def test_graphs_and_eager_are_timed_side_by_side_not_one_after_another(monkeypatch) -> None:
    # A machine that slows down half way through a bench must slow every runner alike: their calls interleave.
    monkeypatch.setattr("monocon_edge.bench.runner.SWITCH_REWARM_S", 0.0)  # counted calls; the seconds: test_latency
    log: list[tuple[str, int]] = []
    runners = {name: (lambda feed, name=name: log.append((name, len(feed)))) for name in ("fp32", "int8", EAGER)}
    opts = BenchOptions(**{**FAST, "warmup": 2, "iterations": 60, "batch_iterations": 4})
    timed = side_by_side(runners, [1], [1] * 8, opts)
    batch1 = [name for name, n in log if n == 1][3 * opts.warmup:]
    changes = sum(a != b for a, b in zip(batch1, batch1[1:]))
    assert len(batch1) == 3 * (opts.iterations + 3 * min(REWARM_CALLS, opts.warmup))  # 3 rounds of 25, rewarm 2
    # every runner once in each of the 3 rounds (9 stretches; a round may end with the runner the next starts with),
    # not all of one runner's calls in one stretch (2 changes)
    assert changes >= 9 - 1 - 2
    batch = [name for name, n in log if n == 8][3 * min(opts.warmup, 3):]
    pairs = batch[0::2]  # each runner's timed call comes right after one untimed call of its own
    assert len(batch) == 2 * 3 * opts.batch_iterations and pairs == batch[1::2]
    assert all(sorted(pairs[i:i + 3]) == sorted(runners) for i in range(0, len(pairs), 3))  # one each per round
    for figures in timed.values():
        assert len(figures["cpu_blocks"]) == 3 and figures["throughput"] > 0
        assert figures["p50"] <= figures["p95"] <= figures["p99"]
    assert paired_speedup({"cpu_blocks": [1.0, 2.0, 1.0]}, {"cpu_blocks": [3.0, 6.0, 3.3]})[0] == pytest.approx(3.0)
    assert paired_speedup(timed["fp32"], None) is None


def test_text_protocol_pairs_and_sts() -> None:
    sts = SimpleNamespace(first=["s1", "s2", "s3"], second=["t1", "t2", "t3"], scores=np.array([4.5, 1.0, 4.0]))
    task = SimpleNamespace(val_pairs=[("a", "b"), ("c", "b")], sts=sts)
    data = text_eval_set(task)
    # Held-out pairs + the STS pairs scored >= 4; a shared partner ("b") is one gallery item.
    assert data.query == ["a", "c", "s1", "s3"] and data.gallery == ["b", "t1", "t3"]
    assert data.query_labels.tolist() == [0, 0, 1, 2]
    vec = {"a": [1, 0, 0], "c": [1, 0.1, 0], "s1": [0, 1, 0], "s3": [0, 0, 1], "b": [1, 0, 0], "t1": [0, 1, 0],
           "t3": [0, 0, 1], "s2": [1, 0, 0], "t2": [0, 1, 0]}
    emb = lambda texts: np.asarray([vec[t] for t in texts], dtype=np.float32)  # noqa: E731
    e = Embedded(emb(data.query), emb(data.gallery), emb(sts.first), emb(sts.second))
    q = quality(e, data, "float32", np.full(3, 1 / 127, dtype=np.float32))
    assert q.recall_at_1 == 1.0 and q.knn5_accuracy is None
    # cosines (1, 0, 1) against scores (4.5, 1.0, 4.0): ranks agree up to the tie -> Spearman 0.866
    assert q.sts_spearman == pytest.approx(np.sqrt(3) / 2)


def test_text_recall_is_named_pair_sts_in_rows_and_tables() -> None:
    # Bench's text Recall@k pools held-out pairs with STS pairs and shares repeated partners: not training's (and
    # the gates') pair Recall@k, so rows and tables name it pair+STS; vision keeps training's name.
    data = text_eval_set(SimpleNamespace(val_pairs=[("a", "b"), ("c", "d")], sts=SimpleNamespace(
        first=["s1", "s2"], second=["t1", "t2"], scores=np.array([4.5, 1.0]))))
    vec = {"a": [1, 0], "b": [1, 0], "c": [0, 1], "d": [0, 1], "s1": [1, 1], "t1": [1, 1], "s2": [1, 0], "t2": [0, 1]}
    emb = lambda texts: np.asarray([vec[t] for t in texts], dtype=np.float32)  # noqa: E731
    e = Embedded(emb(data.query), emb(data.gallery), emb(["s1", "s2"]), emb(["t1", "t2"]))
    fields = _accuracy_fields(e, data, "float32", np.full(2, 1 / 127, dtype=np.float32), BenchOptions(**FAST), "text")
    assert "recall_at_1" not in fields and 0 < fields["pair_sts_recall_at_1"] <= fields["pair_sts_recall_at_5"] <= 1
    assert _accuracy_fields(None, None, "float32", None, BenchOptions(**FAST), "vision")["recall_at_1"] is None
    header = {"suite": "t", "cpu": "cpu", "cpu_count": 1, "threads": 1, "device": "cpu", "providers": ["CPU"],
              "versions": {}, "date": "d", "latency": "l", "options": {}}
    text_row = dict(fields, model="m", modality="text", dims=2, precision="fp32", index_codes="float32")
    md = markdown(BenchResult(header, [text_row]))
    assert "| codes | pair+STS R@1 | pair+STS R@5 | 5-NN |" in md and "| R@1 |" not in md
    vision_row = dict(model="v", modality="vision", dims=2, precision="fp32", index_codes="float32", recall_at_1=0.5)
    md = markdown(BenchResult(header, [vision_row, text_row]))
    assert "| codes | R@1 | R@5 | pair+STS R@1 | pair+STS R@5 | 5-NN |" in md


def test_dims_that_cannot_be_measured_are_said_not_dropped_silently(tiny_runs, digits_artifact, tmp_path) -> None:
    from monocon_edge.bench.runner import _Bench

    run = tmp_path / "monotonic"
    shutil.copytree(tiny_runs["monotonic"], run)
    bench = _Bench(BenchOptions(**{**FAST, "dims": "999,8"}), lambda kind, info: None)
    targets = bench.targets([digits_artifact, run])
    assert sorted(targets[0].artifacts) == [16] and 999 not in targets[1].artifacts and 8 in targets[1].artifacts
    notes = " ".join(bench.result.notes)
    assert "an artifact is measured at its own 16 dims (--dims applies to run directories)" in notes
    assert f"--dims 999 skipped (not below the embedding width {targets[1].d_enc} " in notes
    assert "--dims 8" not in notes


def test_text_bench_table_reads_the_recorded_issue_12_benches(tmp_path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    recorded = root / "bench" / "results" / "int8-text-extdata-1" / "int8-text-d16-fp32-int8-amd-epyc-2-1t.json"
    rows = {r["precision"]: r for r in json.loads(recorded.read_text())["rows"] if r["index_codes"] == "float32"}
    eager = rows["fp32"]["torch_eager_latency_cpu_ms_p50_1t"]
    fp32, int8 = rows["fp32"]["latency_cpu_ms_p50_1t"], rows["int8"]["latency_cpu_ms_p50_1t"]
    script = root / "bench" / "text_bench_table.py"
    done = subprocess.run([sys.executable, str(script), str(recorded)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[-1]
    assert f"fp32 x eager {eager / fp32:4.2f}" in line and f"int8 x fp32 {fp32 / int8:4.2f}" in line
    assert line.startswith("int8-text-extdata-1")
    (tmp_path / "vision.json").write_text(json.dumps({"rows": [{"precision": "fp32", "index_codes": "float32"}]}))
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "vision.json")], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr

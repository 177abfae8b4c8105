"""The mission's command lines as a new user types them: export and bench with no path, and monocon-edge runs.

``export`` takes the newest finished run under ./runs, ``bench`` the newest artifact plus the baseline of the
same data (training it for the embedded default when missing); with nothing there, one line says what to run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import tree_state
from monocon_edge.cli import app
from monocon_edge.device.errors import MonoconError
from monocon_edge.runs_index import artifacts, counterpart, finished_runs, latest_artifact, latest_run, run_info

runner = CliRunner()
FAST_BENCH = ["--warmup", "1", "--iterations", "3", "--batch", "8", "--batch-iterations", "1",
              "--search-iterations", "2", "--parity-atol", "1e-3", "--no-memory", "--no-reference"]
# The tiny 3-epoch runs need the looser tolerances the other digits tests use.
LOOSE_EXPORT = ["--dims", "16", "--int8", "--int8-max-recall-drop", "100", "--parity-atol", "1e-3",
                "--int8-min-cosine", "0.9"]


def _place(run: Path, dest: Path, age_s: float) -> Path:
    """Copy a finished run to ``dest`` and make it look finished ``age_s`` seconds ago."""
    shutil.copytree(run, dest)
    t = time.time() - age_s
    os.utime(dest / "summary.json", (t, t))
    return dest


def _one_clear_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and expected in result.output.replace("\n", " ")
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args, expected", [
    (["export", "--dims", "16", "--int8"], "no finished run under runs/: run `monocon-edge train` first"),
    (["bench", "--device", "cpu"], "no artifact under runs/: run `monocon-edge train`, then `monocon-edge export"),
    (["runs"], "no finished run or artifact under runs/: run `monocon-edge train` first"),
])
def test_nothing_there_says_what_to_run_first(tmp_path, monkeypatch, args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    _one_clear_line(runner.invoke(app, args), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def test_bench_with_runs_but_no_artifact_says_export_first(tiny_runs, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _place(tiny_runs["monotonic"], tmp_path / "runs" / "mono", 10)
    _one_clear_line(runner.invoke(app, ["bench"]), "no artifact under runs/: run `monocon-edge export --dims 16 --int8`")


def test_export_then_bench_with_no_path_side_by_side(tiny_runs, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = _place(tiny_runs["none"], tmp_path / "runs" / "base", 100)
    mono = _place(tiny_runs["monotonic"], tmp_path / "runs" / "mono", 10)
    exported = runner.invoke(app, ["export", *LOOSE_EXPORT])
    assert exported.exit_code == 0, exported.output
    out = " ".join(exported.output.split())
    assert "using the most recent finished run, runs/mono (MonoCon, default)" in out
    assert (mono / "export-d16-int8" / "manifest.json").is_file()

    listed = runner.invoke(app, ["runs"])
    assert listed.exit_code == 0, listed.output
    text = listed.output
    assert text.index("runs/mono") < text.index("runs/base") and "runs/mono/export-d16-int8" in text
    assert "MonoCon" in text and "baseline" in text

    before = {p: tree_state(p) for p in (base, mono)}
    benched = runner.invoke(app, ["bench", "--device", "cpu", *FAST_BENCH])
    assert benched.exit_code == 0, benched.output
    out = " ".join(benched.output.split())
    assert "benchmarking the most recent artifact, runs/mono/export-d16-int8" in out
    assert "side by side with the baseline run of the same data: runs/base" in out
    side = benched.output[benched.output.index("side by side ("):]
    assert "MonoCon" in side and "baseline" in side
    assert {p: tree_state(p) for p in (base, mono)} == before  # bench wrote nothing into the runs


def test_bench_trains_the_missing_default_baseline(tiny_runs, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mono = _place(tiny_runs["monotonic"], tmp_path / "runs" / "mono", 10)
    assert runner.invoke(app, ["export", *LOOSE_EXPORT]).exit_code == 0
    benched = runner.invoke(app, ["bench", *FAST_BENCH])
    assert benched.exit_code == 0, benched.output
    assert "training it now" in benched.output
    new = [r for r in finished_runs("runs") if r.path.resolve() != mono.resolve()]
    assert len(new) == 1 and new[0].head == "none" and new[0].data_key() == run_info(mono).data_key()
    assert "side by side (" in benched.output


@pytest.mark.parametrize("args, expected", [(["--device", "tpu"], "--device must be cpu or cuda, got 'tpu'"),
                                            (["--threads", "0"], "--threads and --also-threads must be >= 1")])
def test_bench_refuses_bad_options_before_training_the_baseline(tiny_runs, tmp_path, monkeypatch, args,
                                                                expected) -> None:
    monkeypatch.chdir(tmp_path)
    mono = _place(tiny_runs["monotonic"], tmp_path / "runs" / "mono", 10)
    assert runner.invoke(app, ["export", *LOOSE_EXPORT]).exit_code == 0
    before = tree_state(tmp_path)
    _one_clear_line(runner.invoke(app, ["bench", *args]), expected)
    assert tree_state(tmp_path) == before  # no baseline trained for a bench that cannot run
    assert [r.path.name for r in finished_runs("runs")] == [mono.name]


def _fake_run(folder: Path, head: str, age_s: float, preset: str = "default", max_train: int | None = 400,
              loss: str = "supcon") -> Path:
    folder.mkdir(parents=True)
    cfg = {"name": f"x-{head}", "preset": preset, "modality": "vision",
           "data": {"kind": "digits", "path": None, "max_train": max_train, "augment": "none"},
           "model": {"head": head}, "optim": {"seed": 42, "loss": loss}}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "summary.json").write_text(json.dumps({"final": {"recall@1": 0.5, "d_eff": 3}}))
    (folder / "best.pt").write_bytes(b"")
    (folder / "pca.npz").write_bytes(b"")
    t = time.time() - age_s
    os.utime(folder / "summary.json", (t, t))
    return folder


def test_runs_index_order_finished_and_counterparts(tmp_path) -> None:
    root = tmp_path / "runs"
    old_base = _fake_run(root / "a", "none", 300)
    new_base = _fake_run(root / "nested" / "b", "none", 200)
    _fake_run(root / "other-data", "none", 5, max_train=None)
    mono = _fake_run(root / "c", "monotonic", 100)
    _fake_run(root / "d", "mlp", 50, loss="matryoshka")
    unfinished = root / "e"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    assert [r.path.name for r in finished_runs(root)] == ["other-data", "d", "c", "b", "a"]
    assert latest_run(root).path.name == "other-data"
    assert counterpart(run_info(mono), root).path == new_base  # same data, newest baseline
    assert counterpart(run_info(old_base), root).path == mono  # a baseline's counterpart is MonoCon (not Matryoshka)
    assert finished_runs(root)[1].label == "Matryoshka"
    assert artifacts(root) == []
    with pytest.raises(MonoconError, match="run `monocon-edge export --dims 16 --int8` first"):
        latest_artifact(root)


def test_bench_names_the_baseline_to_train_for_other_presets(tmp_path, monkeypatch, digits_artifact) -> None:
    monkeypatch.chdir(tmp_path)
    run = _fake_run(tmp_path / "runs" / "tin", "monotonic", 100, preset="tiny-imagenet-100")
    art = tmp_path / "runs" / "tin" / "export-d16"
    shutil.copytree(digits_artifact, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source_run"]["path"] = str(run.resolve())
    from monocon_edge.device.integrity import seal

    manifest["integrity"] = seal({k: v for k, v in manifest.items() if k != "integrity"})
    (art / "manifest.json").write_text(json.dumps(manifest))
    _one_clear_line(runner.invoke(app, ["bench"]), "no baseline run of the same data as runs/tin under runs/: run "
                                                   "`monocon-edge train --preset tiny-imagenet-100 --head none` first")

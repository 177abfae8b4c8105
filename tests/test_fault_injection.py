"""Faults from outside, through the real command line: kill -9 of training mid-run then --resume gives the
uninterrupted run's best.pt and metrics; kill -9 during export leaves no artifact directory (and the next export clears its staging folder); Ctrl-C (SIGINT)
exits 130 with one line. No timing is asserted: the tests wait for files to appear, then strike."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "monocon_edge.cli"]
# Tiny digits, 4 epochs (warm-up 1), small batches so that an epoch lasts long enough to be killed in.
TRAIN = ["train", "--max-train", "400", "--width", "4", "--epochs", "5", "--warmup-epochs", "1",
         "--batch-size", "16"]
TIMING = ("examples_per_s", "epoch_s")


def _env() -> dict[str, str]:
    # Same threads for every process: the runs compared below must do the same floating-point work.
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "COLUMNS": "200"}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(CLI + args, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def _start(args: list[str], cwd: Path, default_sigint: bool = False) -> subprocess.Popen:
    # A shell without job control starts background jobs (`pytest ... &`, nohup) with SIGINT ignored, and the
    # children inherit that: Python then installs no KeyboardInterrupt handler. Ctrl-C tests restore the default.
    reset = (lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if default_sigint else None
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=cwd, preexec_fn=reset)


def _wait_for(proc: subprocess.Popen, ready, what: str) -> None:
    """Poll until ``ready()`` (no deadline assertion: the process ending first is the failure)."""
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.01)


def _checkpoint_epoch(path: Path) -> int:
    """Return the epoch of the checkpoint at ``path`` (0 while there is none; it is replaced atomically)."""
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # replaced between the check and the read
        return 0


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_kill_9_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path) -> None:
    _run(TRAIN + ["--out", str(tmp_path / "whole")], tmp_path)
    killed = tmp_path / "killed"
    proc = _start(TRAIN + ["--out", str(killed)], tmp_path)
    # Killed inside the main phase (epoch >= 2), so that AdamW moments and the cosine position must come back.
    _wait_for(proc, lambda: _checkpoint_epoch(killed / "last.pt") >= 2, "its epoch-2 checkpoint")
    proc.send_signal(signal.SIGKILL)  # no handler, no clean-up: as a power cut or the OOM killer would
    proc.wait()
    proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert 2 <= stopped_at < 5  # killed before the end: there is something to resume
    _run(["train", "--resume", str(killed)], tmp_path)
    whole = tmp_path / "whole"
    assert _rows(killed) == _rows(whole)
    a = torch.load(whole / "best.pt", weights_only=True)
    b = torch.load(killed / "best.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] and a["metric"] == b["metric"]
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (whole, killed))
    assert sa["final"] == sb["final"] and sa["best_epoch"] == sb["best_epoch"]
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]  # no temporary file survived


def test_kill_9_during_export_leaves_no_artifact_directory(tiny_runs, tmp_path) -> None:
    out = tmp_path / "art"
    proc = _start(["export", str(tiny_runs["none"]), "--dims", "16", "--int8", "--int8-max-recall-drop", "100",
                   "--out", str(out)], tmp_path)
    _wait_for(proc, lambda: any(p.name.startswith(".art.") for p in tmp_path.iterdir()), "its staging folder")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # only the hidden staging folder is left: never a half-written artifact
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".art.")] == []
    # The leftover does not get in the way of the next export to the same place, which removes it (its process
    # is gone).
    _run(["export", str(tiny_runs["none"]), "--dims", "16", "--out", str(out)], tmp_path)
    assert (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_ctrl_c_exits_130_with_one_line(tmp_path) -> None:
    run = tmp_path / "run"
    # Far more epochs than the signal needs, so that only an ignored SIGINT can let the run finish (rc 0).
    proc = _start(TRAIN + ["--epochs", "400", "--patience", "400", "--out", str(run)], tmp_path, default_sigint=True)
    _wait_for(proc, lambda: (run / "config.json").is_file(), "its run directory")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted" and "Traceback" not in out
    # Interrupted before its first checkpoint, the run removed what it created; after it, it stays resumable.
    assert not run.exists() or (run / "last.pt").is_file()


def _file_size_limit(limit: int):
    """Return a preexec_fn capping every file the child writes at ``limit`` bytes (a short write, as on a full
    disk: SIGXFSZ ignored, so write() fails with EFBIG instead of killing the process)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_half_run(tmp_path) -> None:
    # The tiny run's last.pt is ~200 kB, its config and metrics a few kB: the first checkpoint write comes up short,
    # as it did in CI on a full disk (torch's zip writer: "unexpected pos").
    run = tmp_path / "run"
    done = subprocess.run(CLI + TRAIN + ["--epochs", "2", "--out", str(run)], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=600, preexec_fn=_file_size_limit(100_000))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: cannot write checkpoint") and "full disk" in lines[0], lines[0]
    # No first checkpoint: nothing to resume, so the run removed what it created (no temp file left either).
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_failed_checkpoint_write_keeps_the_last_good_one_and_says_how_to_resume(tmp_path, monkeypatch) -> None:
    from monocon_edge.device.errors import MonoconError
    from monocon_edge.training.run_dir import RunDir

    run = RunDir(tmp_path)
    run.save_checkpoint(run.last_path, {"model": {"w": torch.ones(3)}, "epoch": 1})

    def short_write(obj, f, *args, **kwargs) -> None:
        Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 98880 vs 98768")

    monkeypatch.setattr(torch, "save", short_write)
    try:
        run.save_checkpoint(run.last_path, {"model": {"w": torch.zeros(3)}, "epoch": 2})
    except MonoconError as exc:
        message = str(exc)
    else:
        raise AssertionError("a failed write raised nothing")
    assert "unexpected pos 98880 vs 98768" in message and f"--resume {tmp_path}" in message
    monkeypatch.undo()
    assert run.load_checkpoint(run.last_path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_an_export_with_no_room_to_write_is_one_line_and_leaves_nothing(tiny_runs, tmp_path) -> None:
    out = tmp_path / "art"
    done = subprocess.run(CLI + ["export", str(tiny_runs["none"]), "--dims", "16", "--int8",
                                 "--int8-max-recall-drop", "100", "--out", str(out)],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600,
                          preexec_fn=_file_size_limit(20_000))
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == ["error: cannot write a file: File too large - make room, then run "
                                                "it again"], done.stderr
    assert [p.name for p in tmp_path.iterdir()] == []  # neither the artifact nor its staging folder

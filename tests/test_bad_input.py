"""Bad input through the real entry points: a subprocess of `python -m monocon_edge.cli` (what the
`monocon-edge` console script runs) or of export/monocon_device.py. Each case must exit != 0 with exactly one
line on stderr, no traceback, and leave nothing new (nor anything changed) on disk: neither next to its inputs
nor in the working directory, where default outputs (runs/NAME-TIME, analysis-TIME) would go."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monocon_edge.device.artifact import FP32_FILE, MANIFEST

from helpers import tree_state

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "monocon_edge.cli"]
DEVICE = [sys.executable, str(ROOT / "export" / "monocon_device.py")]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _copy_run(src: Path, dst: Path, *, unfinished: bool = False) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("export-*", "artifacts"))
    if unfinished:
        (dst / "summary.json").unlink()
        (dst / "pca.npz").unlink()
    return dst


@pytest.fixture(scope="module")
def ws(tiny_runs, digits_artifact, tmp_path_factory) -> Path:
    """Return a folder of bad inputs, built once (each case must leave it exactly as it is)."""
    ws = tmp_path_factory.mktemp("bad-input")
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = np.round(d.images * (255 / 16)).astype(np.uint8)[..., None], d.target
    np.savez(ws / "digits.npz", images=images, labels=labels)
    (ws / "junk.npz").write_bytes(b"this is not a zip archive")
    shutil.copy(ws / "digits.npz", ws / "truncated.npz")
    _truncate(ws / "truncated.npz")
    np.savez(ws / "wrong-keys.npz", pixels=images[:20], labels=labels[:20])
    np.savez(ws / "empty.npz", images=images[:0], labels=labels[:0])
    (ws / "latin1.tsv").write_bytes("premise\thypothesis\nun caf\xe9\tune cr\xe8me\n".encode("latin-1"))
    (ws / "empty.tsv").write_bytes(b"")
    # Runs with one bad file each (copies of a finished tiny run).
    base = tiny_runs["none"]
    _truncate(_copy_run(base, ws / "run-best-truncated") / "best.pt")
    (_copy_run(base, ws / "run-best-junk") / "best.pt").write_bytes(b"\x80\x02junk" * 100)
    _truncate(_copy_run(base, ws / "run-pca-truncated") / "pca.npz")
    _truncate(_copy_run(base, ws / "run-last-truncated", unfinished=True) / "last.pt")
    _copy_run(base, ws / "run-good")
    # Artifacts: a truncated ONNX file, an edited manifest.
    shutil.copytree(digits_artifact, ws / "art-onnx-truncated")
    _truncate(ws / "art-onnx-truncated" / FP32_FILE)
    shutil.copytree(digits_artifact, ws / "art-manifest-edited")
    manifest = json.loads((ws / "art-manifest-edited" / MANIFEST).read_text())
    manifest["output"]["dims"] = 8  # claims 8 dims; the graph gives 16
    (ws / "art-manifest-edited" / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.copytree(digits_artifact, ws / "art")
    # Device inputs.
    np.save(ws / "nan.npy", np.full((2, 1, 8, 8), np.nan, np.float32))
    np.save(ws / "empty.npy", np.zeros((0, 8, 8, 1), np.uint8))
    np.save(ws / "int32.npy", np.zeros((2, 8, 8, 1), np.int32))
    np.save(ws / "rgb.npy", np.zeros((2, 8, 8, 3), np.uint8))
    np.save(ws / "gray.npy", np.zeros((2, 8, 8, 1), np.uint8))  # good images, for the bad-output cases
    (ws / "not-npy.npy").write_bytes(b"\x93NUMPY garbage")
    (ws / "images").mkdir()
    (ws / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return ws


# (id, command, arguments with {ws} for the inputs folder, expected text on stderr)
CASES = [
    # ----- the command line itself: typer's usage errors, one line too -----
    ("usage-unknown-option", "cli", "train --bogus", "No such option: --bogus"),
    ("usage-not-a-number", "cli", "train --epochs abc", "Invalid value for '--epochs'"),
    ("usage-missing-argument", "cli", "analyze", "Missing argument 'runs'"),
    ("usage-unknown-command", "cli", "fly", "No such command 'fly'"),
    # ----- train: data -----
    ("train-data-missing", "cli", "train --data {ws}/missing.npz", "data file not found"),
    ("train-data-corrupt", "cli", "train --data {ws}/junk.npz", "cannot read"),
    ("train-data-truncated", "cli", "train --data {ws}/truncated.npz", "cannot read"),
    ("train-data-wrong-keys", "cli", "train --data {ws}/wrong-keys.npz", "lacks the key(s) images"),
    ("train-data-empty", "cli", "train --data {ws}/empty.npz", "empty"),
    ("train-text-not-utf8", "cli", "train --preset nli-pairs --data {ws}/latin1.tsv --val-data {ws}/latin1.tsv",
     "UTF-8"),
    ("train-text-empty", "cli", "train --preset nli-pairs --data {ws}/empty.tsv --val-data {ws}/empty.tsv",
     "empty"),
    # Neither .npz nor .tsv: the default preset would have trained on digits and ignored the file.
    ("train-data-not-npz-or-tsv", "cli", "train --data {ws}/not-npy.npy", "the embedded default (digits) reads no"),
    ("train-data-dir-on-default", "cli", "train --data-dir {ws}/images", "the embedded default (digits) reads no"),
    ("train-out-uncreatable", "cli", "train --out /proc/monocon-run", "cannot create the run directory /proc/"),
    # ----- train: numbers -----
    ("train-seed-negative", "cli", "train --seed -1", "--seed must be >= 0"),
    ("train-lr-nan", "cli", "train --lr-head nan", "--lr-head must be a finite number"),
    ("train-temperature-inf", "cli", "train --temperature inf", "--temperature must be a finite number"),
    ("train-lr-warmup-neg-inf", "cli", "train --lr-warmup -inf", "--lr-warmup must be a finite number"),
    ("train-batch-over-data", "cli", "train --max-train 300 --batch-size 1000", "not one full batch of 1000"),
    ("train-width-zero", "cli", "train --width 0", "must be >= 1"),
    ("train-select-dims-negative", "cli", "train --select-dims -1", "--select-dims must be >= 0"),
    ("train-select-dims-full-width", "cli", "train --select-dims 64", "must be below the embedding width (64)"),
    ("train-select-dims-over-pca", "cli", "train --max-train 40 --batch-size 8 --select-dims 60",
     "needs a PCA of at least 60 axes"),
    ("train-top-layers-vision", "cli", "train --train-top-layers 1", "applies to text encoders"),
    ("train-top-layers-frozen", "cli", "train --preset nli-pairs --train-top-layers 1", "needs the encoder to train"),
    ("train-top-layers-too-many", "cli", "train --preset nli-pairs --train-encoder --lr-encoder 1e-5 "
     "--train-top-layers 7", "must lie in 1..6"),
    # ----- train: checkpoints -----
    ("train-resume-last-truncated", "cli", "train --resume {ws}/run-last-truncated", "corrupt or truncated"),
    ("train-resume-finished", "cli", "train --resume {ws}/run-good", "already finished"),
    ("train-init-from-best-truncated", "cli", "train --init-from {ws}/run-best-truncated", "corrupt or truncated"),
    ("train-init-from-best-junk", "cli", "train --init-from {ws}/run-best-junk", "corrupt or truncated"),
    # ----- export -----
    ("export-best-truncated", "cli", "export {ws}/run-best-truncated --dims 8", "corrupt or truncated"),
    ("export-pca-truncated", "cli", "export {ws}/run-pca-truncated --dims 8", "pca.npz"),
    ("export-out-uncreatable", "cli", "export {ws}/run-good --dims 8 --out /proc/monocon-art",
     "cannot write /proc/monocon-art"),
    ("export-dims-zero", "cli", "export {ws}/run-good --dims 0", "between 1 and 32"),
    ("export-dims-too-many", "cli", "export {ws}/run-good --dims 33", "between 1 and 32"),
    ("export-atol-nan", "cli", "export {ws}/run-good --dims 8 --parity-atol nan", "--parity-atol > 0"),
    ("export-min-cos-over-1", "cli", "export {ws}/run-good --dims 8 --int8 --int8-cosine-floor 2",
     "--int8-cosine-floor must be between 0 and 1"),
    ("export-min-cos-negative", "cli", "export {ws}/run-good --dims 8 --int8 --int8-cosine-floor -1",
     "--int8-cosine-floor must be between 0 and 1"),
    ("export-prefer-unknown", "cli", "export {ws}/run-good --dims 8 --int8 --int8-prefer fast",
     "--int8-prefer must be one of speed, size"),
    ("export-fp32-layout-unknown", "cli", "export {ws}/run-good --dims 8 --fp32-layout fast",
     "--fp32-layout must be one of auto, transposed, plain"),
    # ----- analyze (a good run first: the bad one fails after the first run's figures were made) -----
    ("analyze-best-truncated", "cli", "analyze {ws}/run-good {ws}/run-best-truncated", "corrupt or truncated"),
    ("analyze-best-junk", "cli", "analyze {ws}/run-good {ws}/run-best-junk", "corrupt or truncated"),
    # ----- verify / bench on artifacts -----
    ("verify-onnx-truncated", "cli", "verify {ws}/art-onnx-truncated", "does not match its sha256"),
    ("verify-manifest-edited", "cli", "verify {ws}/art-manifest-edited", "manifest"),
    ("bench-onnx-truncated", "cli", "bench {ws}/art-onnx-truncated --dims 16 --json {ws}/bench.json --no-memory "
                                    "--no-reference", "does not match its sha256"),
    ("bench-json-unwritable", "cli", "bench {ws}/art --dims 16 --json /proc/monocon-bench.json --no-memory "
                                     "--no-reference", "cannot write /proc/monocon-bench.json"),
    # ----- the device script -----
    ("device-usage", "device", "query {ws}/art --top-k many", "argument --top-k: invalid int value: 'many'"),
    ("device-threads-zero", "device", "check {ws}/art --threads 0", "threads must be >= 1"),
    ("device-embed-unwritable", "device", "embed {ws}/art --images {ws}/gray.npy --out /proc/monocon-e.npy",
     "cannot write /proc/monocon-e.npy"),
    ("device-index-unwritable", "device", "index {ws}/art --images {ws}/gray.npy --out /proc/monocon-g.npz",
     "cannot write /proc/monocon-g.npz"),
    ("device-onnx-truncated", "device", "check {ws}/art-onnx-truncated", "does not match its sha256"),
    ("device-manifest-edited", "device", "check {ws}/art-manifest-edited", "manifest"),
    ("device-nan", "device", "embed {ws}/art --images {ws}/nan.npy --out {ws}/e.npy", "NaN or inf"),
    ("device-empty", "device", "embed {ws}/art --images {ws}/empty.npy --out {ws}/e.npy", "empty batch"),
    ("device-dtype", "device", "embed {ws}/art --images {ws}/int32.npy --out {ws}/e.npy", "dtype int32"),
    ("device-shape", "device", "embed {ws}/art --images {ws}/rgb.npy --out {ws}/e.npy", "(N, 8, 8, 1)"),
    ("device-npy-corrupt", "device", "embed {ws}/art --images {ws}/not-npy.npy --out {ws}/e.npy", "ValueError"),
    ("device-image-unreadable", "device", "index {ws}/art --images {ws}/images --out {ws}/g.npz",
     "cannot identify image file"),
    ("device-texts-on-vision", "device", "embed {ws}/art --texts {ws}/latin1.tsv --out {ws}/e.npy", "--images"),
]


def _state(*roots: Path) -> dict[str, tuple[int, int]]:
    """Return {path: (size, mtime_ns)} of everything under ``roots``."""
    return {f"{r}/{name}": v for r in roots for name, v in tree_state(r).items()}


def _case_id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("case, tool, args, expected", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_fails_with_one_line_and_leaves_nothing(ws, tmp_path, case, tool, args, expected) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _state(ws, cwd)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    env.pop("MONOCON_DEBUG", None)
    argv = (CLI if tool == "cli" else DEVICE) + args.format(ws=ws).split()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    stderr = done.stderr.strip()
    assert done.returncode != 0, (done.stdout, stderr)
    assert "Traceback" not in stderr + done.stdout, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error:") and expected in stderr, stderr
    # The CLI's catch-all for unexpected exceptions says this: an input error must be a designed message.
    assert "(MONOCON_DEBUG=1 shows the traceback)" not in stderr, stderr
    assert _state(ws, cwd) == before, sorted(set(_state(ws, cwd)) ^ set(before))


def test_bare_command_prints_the_help(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    done = subprocess.run(CLI, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "Usage: monocon-edge" in done.stdout and "train" in done.stdout and "export" in done.stdout
    assert list(tmp_path.iterdir()) == []

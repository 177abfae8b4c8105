"""The GPU vision protocol script and its data transport, run as a user would (subprocesses), on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import bench_script

REPO = Path(__file__).resolve().parents[1]
TIN = "tiny_imagenet32_jpg"


def _script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / name), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=600)


def test_jpeg_mosaic_round_trip_keeps_labels_and_images(shared_data, tmp_path):
    src = shared_data / TIN / "tiny_imagenet32_jpg_train.npz"
    with np.load(src) as npz:
        images, labels, names = npz["images"][:4200], npz["labels"][:4200], npz["class_names"]
    small = tmp_path / "small.npz"
    np.savez(small, images=images, labels=labels, class_names=names)
    packed, restored = tmp_path / "packed.npz", tmp_path / "restored.npz"
    assert _script("jpeg_mosaic.py", "pack", str(small), str(packed)).returncode == 0
    done = _script("jpeg_mosaic.py", "unpack", str(packed), str(restored))
    assert done.returncode == 0, done.stderr
    assert packed.stat().st_size < small.stat().st_size / 3
    with np.load(restored) as npz:
        back = npz["images"]
        np.testing.assert_array_equal(npz["labels"], labels)
        assert list(npz["class_names"]) == list(names)
    assert back.shape == images.shape  # 4200 images: a second, partly filled mosaic
    mse = ((back.astype(np.float64) - images) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) > 40  # q95 4:4:4: each image coded on its own, no bleeding


def test_jpeg_mosaic_missing_input_is_one_line(tmp_path):
    done = _script("jpeg_mosaic.py", "pack", str(tmp_path / "absent.npz"), str(tmp_path / "out.npz"))
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [f"error: {tmp_path / 'absent.npz'} not found"]


def _protocol(shared_data: Path, tmp_path: Path, *options: str) -> tuple[Path, Path, dict]:
    """Run the protocol script on the CPU with a small CNN and 800 images a file; return (runs, results, record)."""
    runs, results = tmp_path / "runs", tmp_path / "results" / "gpu"
    done = _script("gpu_vision_protocol.py", "--runs", str(runs), "--results", str(results), "--device", "cpu",
                   "--encoder", "smallcnn", "--workers", "0", "--pretrain-epochs", "1", "--max-train", "800",
                   *options, env={"OMP_NUM_THREADS": "1", "MONOCON_DATA_ROOT": str(shared_data)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return runs, results, json.loads((results.parent / f"{results.name}.json").read_text())


def test_protocol_runs_pretrain_then_four_heads_from_it(shared_data, tmp_path):
    runs, results, record = _protocol(shared_data, tmp_path, "--parallel", "4", "--finetune-epochs", "1",
                                      "--warmup-epochs", "1")
    assert list(record["runs"]) == ["pretrain", "tin-none", "tin-monotonic", "tin-mlp", "tin-matryoshka"]
    pretrained = str(runs / "pretrain")
    for name, run in record["runs"].items():
        assert run["rc"] == 0 and run["examples_per_s"] > 0 and "report_recall@1" in run["final"] or name == "pretrain"
        config = json.loads((runs / name / "config.json").read_text())
        if name != "pretrain":
            assert config["preset"] == "tiny-imagenet-100" and config["init_from"] == pretrained
    table = (results.parent / f"{results.name}.md").read_text()
    assert "| tin-monotonic |" in table and "report R@1 @16" in table


def test_protocol_seeds_share_seed_42s_split_and_are_averaged():
    protocol = bench_script("gpu_vision_protocol")
    runs = protocol.finetune_runs([42, 7])
    assert [name for name, _, _ in runs] == ["tin-none", "tin-monotonic", "tin-mlp", "tin-matryoshka", "tin-none-seed7",
                                             "tin-monotonic-seed7", "tin-mlp-seed7", "tin-matryoshka-seed7"]
    assert all("--seed" not in opts for _, opts, _ in runs[:4])
    assert all(opts[-4:] == ["--seed", "7", "--split-seed", "42"] for _, opts, _ in runs[4:])
    record = {"device": "d", "encoder": "e", "data_note": "n", "python": "3", "plan": {}, "commands": [], "runs": {
        name: {"rc": 0, "wall_s": 1, "epochs_run": 1, "best_epoch": 1, "truncation": "pca",
               "final": {"d_eff": d, "report_recall@1": r, "report_recall@1_pca16": r, "val_recall@1": r}}
        for name, d, r in (("tin-monotonic", 10, 0.20), ("tin-monotonic-seed7", 14, 0.30))}}
    table = protocol.markdown(record)
    # mean 25.0, standard error = sample sd / sqrt(2) = 5.0
    assert "| tin-monotonic | 2 | 12.0 ± 2.0 | 25.0 ± 5.0 | 25.0 ± 5.0 | 25.0 ± 5.0 |" in table
    one_seed = {**record, "runs": {"tin-monotonic": record["runs"]["tin-monotonic"]}}
    assert "Mean ± standard error" not in protocol.markdown(one_seed)


def test_protocol_records_the_waves_a_deadline_leaves_out(shared_data, tmp_path):
    runs, results, record = _protocol(shared_data, tmp_path, "--deadline-s", "0")
    assert record["runs"]["pretrain"]["rc"] == 0
    skipped = {name: r for name, r in record["runs"].items() if name != "pretrain"}
    assert list(skipped) == ["tin-none", "tin-monotonic", "tin-mlp", "tin-matryoshka"]
    assert all("--deadline-s 0" in r["skipped"] for r in skipped.values())
    assert not any((runs / name).exists() for name in skipped)
    assert "| tin-mlp | not started (--deadline-s 0:" in (results.parent / f"{results.name}.md").read_text()

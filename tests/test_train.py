"""Training end to end on tiny data: run directory contents, resume equivalence, init-from, frozen fast path."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monocon_edge.training.config import override
from monocon_edge.device.errors import MonoconError
from monocon_edge.training.run_dir import RunDir
from monocon_edge.training.loop import plan_phases, train

from helpers import tiny_digits


def test_tiny_run_writes_everything(tmp_path) -> None:
    result = train(tiny_digits(), tmp_path / "run")
    run = RunDir(result.run_dir)
    for f in ("config.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "pca.npz", "splits.npz",
              "summary.json"):
        assert (run.path / f).is_file(), f
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [r["phase"] for r in rows] == ["init", "warmup", "main", "main"]
    for key in ("loss", "knn5", "val_knn5", "recall@1", "recall@5", "d_eff", "recon_rmse", "d_eff_encoder"):
        assert key in rows[-1]
    summary = run.read_summary()
    assert 1 <= summary["final"]["d_eff"] <= summary["d_enc"] == 32
    assert 0.0 <= summary["final"]["recall@1"] <= 1.0
    pca, d_eff = run.load_pca()
    assert pca.components.shape[1] == 32 and d_eff == summary["final"]["d_eff"]
    assert "recall@1_pca16" in summary["final"]
    # Checkpoints load with weights_only=True and hold what resuming needs.
    last = torch.load(run.last_path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "early_stop"} <= set(last)


def test_training_improves_on_the_initial_model(tmp_path) -> None:
    cfg = override(tiny_digits("none"), "optim", epochs=4)
    result = train(cfg, tmp_path / "run")
    losses = [r["loss"] for r in result.history[1:]]
    assert losses[-1] < losses[0]
    assert max(r["val_knn5"] for r in result.history[1:]) > result.history[0]["val_knn5"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path) -> None:
    cfg = tiny_digits()
    whole = train(cfg, tmp_path / "whole")
    part = train(cfg, tmp_path / "part", stop_after_epoch=1)
    assert not part.finished and not (tmp_path / "part" / "summary.json").exists()
    resumed = train(resume=tmp_path / "part")
    assert resumed.finished
    assert resumed.final == whole.final
    a = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in RunDir(tmp_path / "part").metrics()] == [0, 1, 2, 3]


def test_init_from_copies_the_encoder(tmp_path) -> None:
    base = train(tiny_digits("none"), tmp_path / "base")
    cfg = override(tiny_digits("monotonic"), None, init_from=str(base.run_dir))
    cfg = override(cfg, "model", width=16)  # overridden by the source run's encoder settings
    result = train(cfg, tmp_path / "mono", stop_after_epoch=1)  # epoch 1 is the warm-up: encoder frozen
    src = torch.load(base.run_dir / "best.pt", weights_only=True)["model"]
    got = torch.load(result.run_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(src[k], got[k]) for k in src if k.startswith("encoder."))
    assert json.loads((result.run_dir / "config.json").read_text())["model"]["width"] == 4


def test_frozen_encoder_trains_only_the_head(tmp_path) -> None:
    cfg = override(tiny_digits("mlp"), "optim", freeze_encoder=True, warmup_epochs=0, epochs=2)
    result = train(cfg, tmp_path / "run")
    init = torch.load(result.run_dir / "last.pt", weights_only=True)["model"]
    fresh = train(override(cfg, "optim", epochs=0), tmp_path / "zero")
    start = torch.load(fresh.run_dir / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(init[k], start[k]) for k in init if k.startswith("encoder."))
    assert not all(torch.equal(init[k], start[k]) for k in init if k.startswith("head."))


def test_phases() -> None:
    phases = plan_phases(tiny_digits())
    assert [(p.name, p.first_epoch, p.last_epoch, p.train_encoder) for p in phases] == [
        ("warmup", 1, 1, False), ("main", 2, 3, True)]
    assert plan_phases(override(tiny_digits("none"), "optim", freeze_encoder=True)) == []


def test_existing_run_directory_is_not_touched(tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MonoconError, match="already exists"):
        train(tiny_digits(), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_corrupt_checkpoint_is_refused(tmp_path) -> None:
    train(tiny_digits(), tmp_path / "run", stop_after_epoch=1)
    last = tmp_path / "run" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(MonoconError, match="corrupt or truncated"):
        train(resume=tmp_path / "run")
    assert last.read_bytes() == data[: len(data) // 2]


def test_splits_are_stratified_and_disjoint(tmp_path) -> None:
    result = train(override(tiny_digits(), "optim", epochs=0), tmp_path / "run")
    with np.load(result.run_dir / "splits.npz") as s:
        train_idx, val, gallery, query = s["train"], s["val"], s["gallery"], s["query"]
    assert not set(train_idx) & set(val)
    assert sorted(np.concatenate([gallery, query]).tolist()) == sorted(train_idx.tolist())
    assert len(val) == 40 and len(query) == 36

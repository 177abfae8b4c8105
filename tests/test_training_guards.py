"""Training behaviour that only shows when something goes wrong or stops: validation before the run directory
exists, clean-up of a run that fails before its first checkpoint, the non-finite-loss guard, early stopping,
and --resume of a finished run."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from monocon_edge.device.errors import MonoconError
from monocon_edge.training import loop
from monocon_edge.training.config import override
from monocon_edge.training.loop import train
from monocon_edge.training.run_dir import RunDir

from helpers import tiny_digits


def _tree(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("section, changes, expected", [
    ("optim", {"lr_head": float("nan")}, "--lr-head must be a finite number"),
    ("optim", {"lr_encoder": float("inf")}, "--lr-encoder must be a finite number"),
    ("optim", {"temperature": float("nan")}, "--temperature must be a finite number"),
    ("data", {"val_fraction": float("nan")}, "--val-fraction must be a finite number"),
    ("optim", {"eval_every": 0}, "--eval-every and --patience must be >= 1"),
    ("optim", {"batch_size": 1000}, "not one full batch of 1000 in 360 training examples"),
])
def test_bad_numbers_are_refused_before_the_run_directory_exists(tmp_path, section, changes, expected) -> None:
    cfg = override(tiny_digits(), section, **changes)
    with pytest.raises(MonoconError, match=expected):
        train(cfg, tmp_path / "out" / "run", runs_root=tmp_path / "runs")
    assert _tree(tmp_path) == []
    with pytest.raises(MonoconError, match=expected):  # default location: RUNS_DIR/NAME-TIME, RUNS_DIR new
        train(cfg, runs_root=tmp_path / "runs")
    assert _tree(tmp_path) == []


class _NaNLoss(torch.nn.Module):
    def forward(self, emb, labels, *args):
        return emb.sum() * float("nan")


def test_non_finite_loss_stops_the_run_and_removes_what_it_created(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(loop, "build_loss", lambda name, temperature: _NaNLoss())
    with pytest.raises(MonoconError, match=r"the loss became nan at epoch 1, step 1: lower the learning rate"):
        train(tiny_digits(), tmp_path / "run")
    assert _tree(tmp_path) == []  # config.json, splits.npz and the epoch-0 metrics are gone again
    existing = tmp_path / "empty"
    existing.mkdir()
    with pytest.raises(MonoconError, match="the loss became nan"):
        train(tiny_digits(), existing)
    assert _tree(tmp_path) == ["empty"]  # an empty --out the user made stays, emptied


def test_a_failure_after_the_first_checkpoint_keeps_a_resumable_run(tmp_path, monkeypatch) -> None:
    calls = {"n": 0}
    real = loop.Trainer._train_epoch

    def fail_in_epoch_2(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(loop.Trainer, "_train_epoch", fail_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_digits(), tmp_path / "run")
    assert (tmp_path / "run" / "last.pt").is_file()  # epoch 1 was checkpointed: the run stays to --resume
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path) -> None:
    # Learning rates 0: the model never changes, so the validation metric never beats epoch 1's.
    cfg = override(tiny_digits("mlp"), "optim", epochs=8, warmup_epochs=0, lr_encoder=0.0, lr_head=0.0,
                   patience=2)
    result = train(cfg, tmp_path / "run")
    assert result.stopped_early and result.finished
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3]  # epoch 1 best, 2 and 3 without improvement
    assert result.best_epoch == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    # Patience 3 on the same run: one evaluation more.
    longer = train(override(cfg, "optim", patience=3), tmp_path / "run3")
    assert [r["epoch"] for r in longer.history] == [0, 1, 2, 3, 4] and longer.stopped_early


def test_no_early_stop_while_the_metric_improves(tmp_path) -> None:
    cfg = override(tiny_digits("none"), "optim", epochs=3, warmup_epochs=0, patience=1, min_delta=-1.0)
    result = train(cfg, tmp_path / "run")  # min_delta -1: every evaluation counts as an improvement
    assert not result.stopped_early and [r["epoch"] for r in result.history] == [0, 1, 2, 3]
    assert result.best_epoch == 3


def test_best_epoch_is_the_first_maximum_of_the_validation_metric(tmp_path) -> None:
    result = train(override(tiny_digits("mlp"), "optim", epochs=4), tmp_path / "run")
    rows = RunDir(result.run_dir).metrics()
    trained = [r for r in rows if r["epoch"] >= 1]  # the initial model (epoch 0) is never a candidate
    best = max(trained, key=lambda r: (r["val_knn5"], -r["epoch"]))
    assert result.best_epoch == best["epoch"]
    ckpt = torch.load(result.run_dir / "best.pt", weights_only=True)
    assert ckpt["epoch"] == best["epoch"] and ckpt["metric"] == best["val_knn5"]


def test_resume_of_a_finished_run_is_refused_and_changes_nothing(tmp_path) -> None:
    train(override(tiny_digits(), "optim", epochs=1), tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(MonoconError, match="has already finished"):
        train(resume=tmp_path / "run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before

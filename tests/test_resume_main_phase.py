"""Resume inside the main phase: AdamW moments and the cosine schedule's position come back from last.pt, so
every later epoch's loss and metrics, and best.pt, equal those of an uninterrupted run."""
from __future__ import annotations

import torch

from monocon_edge.training.config import override
from monocon_edge.training.loop import train
from monocon_edge.training.run_dir import RunDir

from helpers import tiny_digits

TIMING = ("examples_per_s", "epoch_s")


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in RunDir(run_dir).metrics()]


def test_resume_in_the_main_phase_equals_an_uninterrupted_run(tmp_path) -> None:
    cfg = override(tiny_digits("mlp"), "optim", epochs=4, warmup_epochs=1)  # warm-up 1, main 2..4
    whole = train(cfg, tmp_path / "whole")
    part = train(cfg, tmp_path / "part", stop_after_epoch=3)  # stopped after the 2nd main epoch
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert state["phase"] == "main" and state["epoch"] == 3
    steps = len(range(0, 360 - 63, 64))  # full batches of 64 in 360 training digits
    assert state["scheduler"]["last_epoch"] == 2 * steps  # the cosine schedule is 2 epochs into the main phase
    adam = state["optimizer"]["state"]
    assert adam and all(int(s["step"]) == 2 * steps and s["exp_avg_sq"].abs().sum() > 0 for s in adam.values())

    resumed = train(resume=tmp_path / "part")
    assert resumed.finished and resumed.best_epoch == whole.best_epoch
    # Per-epoch losses (and every metric) of the resumed run equal the uninterrupted run's.
    assert _rows(tmp_path / "part") == _rows(tmp_path / "whole")
    assert [r["loss"] for r in _rows(tmp_path / "part")][1:] == [r["loss"] for r in whole.history][1:]
    assert resumed.final == whole.final
    a = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "best.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    last_a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    last_b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert last_a["scheduler"] == last_b["scheduler"]
    for key, sa in last_a["optimizer"]["state"].items():
        assert all(torch.equal(sa[n], last_b["optimizer"]["state"][key][n]) for n in ("exp_avg", "exp_avg_sq"))

"""bench/seed_table.py: report figures pooled over seeds only on one split, MonoCon's gap paired by seed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import bench_script


def _load():
    return bench_script("seed_table")


def _fake_run(path: Path, head: str, seed: int, r1_16: float, report=(3, 5, 7)) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"optim": {"seed": seed}}))
    final = {"d_eff": 20, "report_knn5": 0.2, "report_recall@1": 0.18, "report_recall@1_pca16": r1_16,
             "recall@1_pca16": 0.99}
    (path / "summary.json").write_text(json.dumps({"modality": "vision", "head": head, "loss": "supcon",
                                                   "truncation": "pca", "final": final}))
    np.savez(path / "splits.npz", train=np.arange(10), report=np.asarray(report))
    return path


def test_mean_se_and_paired_differences(tmp_path) -> None:
    st = _load()
    runs = [_fake_run(tmp_path / "m42", "monotonic", 42, 0.16), _fake_run(tmp_path / "m1", "monotonic", 1, 0.20),
            _fake_run(tmp_path / "s42", "mlp", 42, 0.17), _fake_run(tmp_path / "s1", "mlp", 1, 0.18)]
    table = st.seed_table(runs)
    mono = table["models"]["MonoCon"]["R@1 @16"]
    assert mono["mean"] == pytest.approx(0.18) and mono["se"] == pytest.approx(0.02)
    diff = table["paired"]["std-MLP"]["R@1 @16"]
    # per seed: 0.16 - 0.17 = -0.01 and 0.20 - 0.18 = +0.02
    assert diff["mean"] == pytest.approx(0.005) and diff["se"] == pytest.approx(0.015)
    assert sorted(diff["seeds"]) == [1, 42]
    text = st.to_markdown(table)
    assert "18.0 ± 2.0" in text and "0.5 ± 1.5" in text and "99" not in text


def test_runs_on_another_report_split_are_refused(tmp_path) -> None:
    st = _load()
    runs = [_fake_run(tmp_path / "a", "monotonic", 42, 0.16),
            _fake_run(tmp_path / "b", "mlp", 1, 0.17, report=(3, 5, 8))]
    with pytest.raises(SystemExit, match="another report split"):
        st.seed_table(runs)

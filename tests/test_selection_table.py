"""bench/selection_table.py: the options that differ between runs become columns (head init, temperature and
seed included), and no report-split figure reaches the table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers import bench_script


def _load():
    return bench_script("selection_table")


def _fake_run(path: Path, head_init: str, temperature: float, spearman: float, seed: int) -> Path:
    path.mkdir(parents=True)
    config = {"model": {"head": "monotonic", "head_init": head_init, "head_standardize": False},
              "optim": {"loss": "supcon", "distill": 0.0, "temperature": temperature, "batch_size": 128,
                        "lr_head": 2e-3, "lr_warmup": 1e-4, "lr_encoder": 0.0, "epochs": 16, "warmup_epochs": 1,
                        "seed": seed}}
    final = {"d_eff": 40, "spearman": spearman, "spearman_pca16": 0.7, "recall@1": 0.7, "recall@1_pca16": 0.6,
             "report_spearman": 0.999, "report_spearman_pca16": 0.999}
    summary = {"modality": "text", "truncation": "pca", "best_epoch": 4, "final": final}
    (path / "config.json").write_text(json.dumps(config))
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_head_init_and_temperature_become_columns_and_report_figures_stay_out(tmp_path, monkeypatch) -> None:
    a = _fake_run(tmp_path / "a", "default", 0.05, 0.77, 42)
    b = _fake_run(tmp_path / "b", "identity", 0.1, 0.81, 1)
    out = tmp_path / "out" / "selection-x"
    monkeypatch.setattr(sys, "argv", ["selection_table.py", str(a), str(b), "--out", str(out)])
    _load().main()
    table = out.with_suffix(".md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| run"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert "head_init" in cols and "temperature" in cols and "seed" in cols
    # Options that are the same in every run are not columns.
    assert "lr_head" not in cols and "distill" not in cols
    row_b = next(line for line in table if line.startswith("| b "))
    cells = dict(zip(cols, (c.strip() for c in row_b.strip("|").split("|"))))
    assert cells["head_init"] == "identity" and cells["temperature"] == "0.1" and cells["spearman"] == "0.8100"
    assert cells["seed"] == "1"
    assert "0.999" not in out.with_suffix(".md").read_text()
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["head_init"] for r in rows] == ["default", "identity"]
    assert not any(k.startswith("report") for r in rows for k in r)


def test_runs_that_differ_only_by_seed_get_a_mean_row(tmp_path, monkeypatch) -> None:
    a = _fake_run(tmp_path / "a", "default", 0.05, 0.76, 42)
    b = _fake_run(tmp_path / "b", "default", 0.05, 0.78, 1)
    c = _fake_run(tmp_path / "c", "identity", 0.05, 0.90, 2)
    out = tmp_path / "sel-slope0.01"  # a dot in the name: the files are sel-slope0.01.md / .json
    monkeypatch.setattr(sys, "argv", ["selection_table.py", str(a), str(b), str(c), "--out", str(out)])
    _load().main()
    assert sorted(p.name for p in tmp_path.glob("sel-*")) == ["sel-slope0.01.json", "sel-slope0.01.md"]
    text = (tmp_path / "sel-slope0.01.md").read_text()
    means = text.split("Mean ± standard error over the seeds")[1]
    # (0.76 + 0.78) / 2 = 0.77, standard error 0.01; the identity run has no second seed, so no mean row.
    assert "| default | 42, 1 | 40.0 ± 0.0 | 0.7700 ± 0.0100 |" in means
    assert "identity" not in means

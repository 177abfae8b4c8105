"""--select-dims D: early stopping on the selection metric after truncation to D dims (PCA; prefix for Matryoshka),
the width a run is exported at, instead of at full width."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import tiny_digits
from monocon_edge import metrics as M
from monocon_edge.training.config import override
from monocon_edge.training.loop import train
from monocon_edge.training.run_dir import RunDir
from test_hard_negatives import _tiny_task


@pytest.mark.parametrize("loss, key", [("supcon", "val_knn5_pca8"), ("matryoshka", "val_knn5_prefix8")])
def test_best_epoch_is_the_first_maximum_of_the_truncated_metric(tmp_path, loss, key) -> None:
    cfg = override(tiny_digits("mlp"), "optim", epochs=5, loss=loss, select_dims=8)
    result = train(cfg, tmp_path / "run")
    rows = [r for r in RunDir(result.run_dir).metrics() if r["epoch"] >= 1]
    assert all(key in r for r in rows)
    best = max(rows, key=lambda r: (r[key], -r["epoch"]))
    assert result.best_epoch == best["epoch"]
    ckpt = torch.load(result.run_dir / "best.pt", weights_only=True)
    assert ckpt["metric"] == best[key]
    assert json.loads((result.run_dir / "summary.json").read_text())["validation_metric"] == key
    # The truncated and the full-width metric are different numbers: the choice really follows the truncated one.
    assert any(r[key] != r["val_knn5"] for r in rows)


def test_full_width_by_default(tmp_path) -> None:
    result = train(tiny_digits("mlp", epochs=2), tmp_path / "run")
    assert json.loads((result.run_dir / "summary.json").read_text())["validation_metric"] == "val_knn5"
    assert not any("val_knn5_pca" in k for r in RunDir(result.run_dir).metrics() for k in r)


@pytest.mark.parametrize("truncation", ["pca", "prefix"])
def test_text_early_stopping_metric_is_the_selection_tables_16_dim_spearman(tmp_path, truncation) -> None:
    # What early stopping follows is the figure the selection tables report at that width (spearman_pca16 /
    # spearman_prefix16 of the final evaluation), computed by one definition.
    task = _tiny_task(tmp_path)
    rng = np.random.default_rng(0)
    emb = {name: rng.normal(size=(len(texts), 24)).astype(np.float32) for name, texts in task.eval_sets().items()}
    full, pca = task.evaluate(emb, full=True, truncation=truncation)
    got = task.validation_at(emb, pca, 16, truncation)
    assert got == full[f"spearman_{truncation}16"]

    def spearman_cut(cut) -> float:  # by hand, from the metric functions
        return M.spearman(M.cosine_scores(cut(emb["sts_a"], 16), cut(emb["sts_b"], 16)), task.sts.scores)

    pca_cut, prefix_cut = (lambda x, d: M.pca_project(x, pca, d)), M.prefix_truncate
    own, other = (pca_cut, prefix_cut) if truncation == "pca" else (prefix_cut, pca_cut)
    assert got == spearman_cut(own)
    assert got != spearman_cut(other)

"""The options that make the monotonic head work (issue 11): monotone input standardisation, similarity
distillation, and the train / selection / report roles of the data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny_digits
from monocon_edge import metrics as M
from monocon_edge.training.config import override
from monocon_edge.data.splits import make_splits
from monocon_edge.device.errors import MonoconError
from monocon_edge.exporting.fold import fold, reference_embeddings
from monocon_edge.losses import similarity_distillation
from monocon_edge.models.heads import build_head
from monocon_edge.models.monocon import MonoConModel
from monocon_edge.models.encoders import build_vision_encoder


# ----- monotone standardisation -------------------------------------------------------------------------
def test_standardisation_centres_and_scales_the_train_features() -> None:
    torch.manual_seed(0)
    head = build_head("monotonic", 6, standardize=True)
    feats = torch.rand(200, 6) * torch.tensor([1.0, 2, 3, 4, 5, 0.1]) + 7  # non-negative, like ReLU features
    head.standardizer.set_statistics(feats)
    z = head.standardizer(feats).double()
    np.testing.assert_allclose(z.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(0).numpy(), 1.0, atol=1e-5)
    assert (head.standardizer.scale > 0).all()
    assert build_head("monotonic", 6).standardizer is None  # off by default: the paper's head


def test_fold_keeps_parity_with_a_standardised_monotonic_head_at_8_dims() -> None:
    torch.manual_seed(0)
    encoder = build_vision_encoder("smallcnn", 1, 4, "none", None).eval()
    # Identity start: a default-initialised monotonic head is collapsed (every output a positive sum of the
    # inputs), and parity of a collapsed embedding at 8 dims would compare float noise.
    head = build_head("monotonic", encoder.out_dim, init="identity", standardize=True)
    model = MonoConModel(encoder, head, "vision").eval()
    x = torch.rand(256, 1, 8, 8)
    with torch.no_grad():
        head.standardizer.set_statistics(encoder(x))
        emb = torch.nn.functional.normalize(model(x), dim=-1).numpy()
    pca = M.fit_pca(emb)
    assert M.effective_dim(pca.explained_variance_ratio) >= 8  # not a collapsed head: the check means something
    folded, spec = fold(model, pca, 8)
    with torch.no_grad():
        got = folded(x).numpy()
    np.testing.assert_allclose(got, reference_embeddings(model, pca, 8, x), atol=1e-5, rtol=0)
    # The standardisation went into the first layer: the folded first weight differs from W² alone and the
    # folded head alone reproduces the trained head (before any normalisation).
    assert not torch.allclose(folded.tail.head_layers.layers[0].weight, head.effective_weights()[0])
    assert (folded.tail.head_layers.layers[0].weight >= 0).all()
    with torch.no_grad():
        feats = encoder(x)
        np.testing.assert_allclose(folded.tail.head_layers(feats).numpy(), head(feats).numpy(), atol=1e-4, rtol=1e-5)


# ----- similarity distillation --------------------------------------------------------------------------
def test_distillation_is_zero_when_the_head_keeps_the_encoder_geometry() -> None:
    torch.manual_seed(0)
    ref = torch.randn(16, 8)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    for same_geometry in (ref, ref * 3.0, ref @ q, torch.cat([ref, torch.zeros(16, 4)], dim=1)):
        assert similarity_distillation(same_geometry, ref).item() == pytest.approx(0.0, abs=1e-10)
    assert similarity_distillation(torch.randn(16, 8), ref).item() > 0.01


def test_distillation_hand_computed_value() -> None:
    # Two 2-D points: reference cosine 0 (orthogonal), embedding cosine 1/sqrt(2) -> both off-diagonal entries
    # differ by 1/sqrt(2); the mean of their squares is 1/2.
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert similarity_distillation(emb, ref).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError):
        similarity_distillation(emb, ref[:1])


# ----- three roles for data -----------------------------------------------------------------------------
def test_report_part_is_carved_from_the_held_out_part_only() -> None:
    labels = np.repeat(np.arange(10), 40)
    plain = make_splits(labels, len(labels), 0.2, 0.1, 42)
    three = make_splits(labels, len(labels), 0.2, 0.1, 42, report_fraction=0.5)
    np.testing.assert_array_equal(plain.train, three.train)  # same train part: comparable runs
    assert len(plain.report) == 0
    assert len(three.val) == 40 and len(three.report) == 40
    assert not set(three.report) & set(three.val) and not set(three.report) & set(three.train)
    assert sorted(np.concatenate([three.val, three.report]).tolist()) == plain.val.tolist()
    assert np.bincount(labels[three.report]).tolist() == [4] * 10  # stratified


@pytest.mark.parametrize("field,value", [("lr_head", math.nan), ("distill", math.inf), ("distill", -1.0)])
def test_non_finite_or_negative_numbers_are_refused(field: str, value: float) -> None:
    with pytest.raises(MonoconError):
        override(tiny_digits(), "optim", **{field: value}).validate()


def test_training_with_every_option_reports_each_split(tmp_path) -> None:
    from monocon_edge.training.loop import train

    cfg = override(tiny_digits("monotonic"), "data", report_fraction=0.5)
    cfg = override(cfg, "model", head_standardize=True)
    cfg = override(cfg, "optim", distill=0.5)
    result = train(cfg, tmp_path / "run")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    final = summary["final"]
    for key in ("report_recall@1", "report_recall@5", "report_knn5", "recall@1", "val_knn5", "val_recall@1",
                "val_recall@1_pca16", "report_recall@1_pca16"):
        assert 0.0 <= final[key] <= 1.0
    assert any("report" in k for k in summary["splits"])
    # report figures appear only in the final evaluation, never in the rows that early stopping reads
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any(k.startswith("report_") for row in rows for k in row)
    best = torch.load(result.run_dir / "best.pt", map_location="cpu", weights_only=False)["model"]
    assert best["head.standardizer.scale"].min() > 0 and best["head.standardizer.shift"].abs().sum() > 0
    with np.load(result.run_dir / "splits.npz") as z:
        assert len(z["report"]) > 0 and not set(z["report"]) & set(z["train"])

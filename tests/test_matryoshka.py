"""The Matryoshka comparator: the loss is the sum of per-prefix SupCon losses; a tiny run records prefix
truncation."""
from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from monocon_edge.cli import app
from monocon_edge.training.config import with_loss
from monocon_edge.losses import MatryoshkaSupConLoss, SupConLoss, build_loss
from monocon_edge.training.run_dir import RunDir

from helpers import tiny_digits


def test_loss_is_the_sum_of_per_prefix_supcon_losses() -> None:
    # Prefixes (1, 2) of a 3-D batch, plus the full 3 dims.
    z = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [0.5, -1.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss = MatryoshkaSupConLoss(temperature=1.0, dims=(2, 1))
    assert loss.prefixes(3) == [1, 2, 3]
    expected = sum(SupConLoss(1.0)(z[:, :m], labels) for m in (1, 2, 3))
    assert loss(z, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    # The 1-D prefix by hand: normalised coordinates are +1, +1, -1, +1 (labels 0, 0, 1, 1). Anchors 0 and 1
    # see their positive at cos 1 and the others at cos -1 and 1; anchor 2 sees everything at cos -1
    # (loss log 3); anchor 3 sees its positive at cos -1 and the others at cos 1, 1.
    a01 = -(1 - math.log(math.e + math.e + math.exp(-1)))
    a2 = math.log(3)
    a3 = -(-1 - math.log(math.e + math.e + math.exp(-1)))
    assert SupConLoss(1.0)(z[:, :1], labels).item() == pytest.approx((2 * a01 + a2 + a3) / 4, abs=1e-6)


def test_prefixes_keep_only_sizes_below_the_width() -> None:
    loss = MatryoshkaSupConLoss()
    assert loss.prefixes(32) == [16, 32]
    assert loss.prefixes(128) == [16, 32, 64, 128]
    assert loss.prefixes(384) == [16, 32, 64, 128, 384]
    assert loss.prefixes(8) == [8]


def test_the_short_prefix_is_trained_on_its_own_and_no_positive_gives_zero() -> None:
    # The first 16 coordinates vary, the other 24 are one large vector shared by every example: the full
    # normalised embeddings are all nearly the same, so plain SupCon gives the first 16 coordinates almost no
    # gradient. The Matryoshka loss also trains the 16-dim prefix as an embedding of its own, so they get a
    # full-size gradient: exactly that of SupCon on the prefix (the 32- and full-dim terms add almost nothing).
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    head = torch.randn(8, 16)
    tail = 1000.0 * torch.ones(8, 24)

    def grad(loss_fn):
        z = torch.cat([head, tail], dim=1).requires_grad_(True)
        loss_fn(z).backward()
        return z.grad[:, :16]

    matryoshka = grad(lambda z: MatryoshkaSupConLoss(0.1)(z, labels))
    plain = grad(lambda z: SupConLoss(0.1)(z, labels))
    prefix_only = grad(lambda z: SupConLoss(0.1)(z[:, :16], labels))
    assert MatryoshkaSupConLoss(0.1).prefixes(40) == [16, 32, 40]
    assert plain.norm() < 1e-3 * prefix_only.norm()  # plain SupCon barely reaches the prefix
    assert matryoshka.norm() > 0.99 * prefix_only.norm()
    torch.testing.assert_close(matryoshka, prefix_only, rtol=1e-3, atol=1e-3 * prefix_only.abs().max().item())
    assert MatryoshkaSupConLoss(0.1)(torch.randn(4, 40), torch.arange(4)).item() == 0.0


def test_build_loss() -> None:
    assert isinstance(build_loss("matryoshka", 0.1), MatryoshkaSupConLoss)
    assert type(build_loss("supcon", 0.1)) is SupConLoss
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("triplet", 0.1)


def test_with_loss_names_the_run_and_sets_prefix_truncation() -> None:
    cfg = with_loss(tiny_digits("mlp"), "matryoshka")
    assert cfg.optim.loss == "matryoshka" and cfg.truncation == "prefix" and cfg.name.endswith("-matryoshka")
    assert tiny_digits("mlp").truncation == "pca"
    assert with_loss(cfg, None) is cfg


def test_tiny_matryoshka_run_records_prefix_truncation(tiny_runs) -> None:
    run = RunDir(tiny_runs["matryoshka"])
    cfg = run.read_config()
    assert (cfg.optim.loss, cfg.model.head) == ("matryoshka", "mlp")
    summary = run.read_summary()
    assert summary["loss"] == "matryoshka" and summary["truncation"] == "prefix"
    final = summary["final"]
    # d_enc is 32 here: only the 16-dim prefix compresses.
    assert 0.0 <= final["recall@1_prefix16"] <= 1.0
    assert "recall@1_pca16" in final and "recall@1_prefix64" not in final
    assert all(r["loss"] is None or math.isfinite(r["loss"]) for r in run.metrics())


def test_unknown_loss_fails_cleanly(tmp_path) -> None:
    result = CliRunner().invoke(app, ["train", "--loss", "triplet", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "unknown loss" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()

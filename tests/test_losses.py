"""SupCon: hand-computed values, no-positive batches, agreement with a direct loop implementation."""
from __future__ import annotations

import math

import pytest
import torch

from monocon_edge.losses import SupConLoss, pair_labels


def test_hand_computed_value_tau_1() -> None:
    # z0 = z2 = (1, 0) share label 0, z1 = (0, 1) is alone. Anchors 0 and 2 each see one positive (cos 1)
    # and one negative (cos 0): loss = -log(e / (e + 1)). Anchor 1 has no positive and is left out.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    loss = SupConLoss(temperature=1.0)(z, torch.tensor([0, 1, 0]))
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), abs=1e-6)


def test_hand_computed_value_tau_half() -> None:
    # z0 = (1, 0), z1 = (0.6, 0.8), z2 = (0.8, -0.6); labels 0, 0, 1; tau = 0.5.
    # cos(z0, z1) = 0.6, cos(z0, z2) = 0.8, cos(z1, z2) = 0.0.
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, -0.6]])
    loss = SupConLoss(temperature=0.5)(z, torch.tensor([0, 0, 1]))
    anchor0 = -(1.2 - math.log(math.exp(1.2) + math.exp(1.6)))
    anchor1 = -(1.2 - math.log(math.exp(1.2) + math.exp(0.0)))
    assert loss.item() == pytest.approx((anchor0 + anchor1) / 2, abs=1e-6)


def _loop_supcon(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    z = torch.nn.functional.normalize(z, dim=1)
    terms = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / tau for a in others]), 0)
        terms.append(-torch.stack([z[i] @ z[p] / tau - denom for p in positives]).mean())
    return torch.stack(terms).mean()


def test_matches_direct_loop() -> None:
    torch.manual_seed(3)
    z = torch.randn(12, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 3, 3, 4, 1, 5])
    got = SupConLoss(0.2)(z, labels)
    assert got.item() == pytest.approx(_loop_supcon(z.float(), labels, 0.2).item(), rel=1e-5)


def test_no_positive_pair_gives_zero_and_finite_gradients() -> None:
    z = torch.randn(6, 4, requires_grad=True)
    loss = SupConLoss(0.1)(z, torch.arange(6))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all() and (z.grad == 0).all()


def test_stable_at_tiny_temperature() -> None:
    z = torch.randn(8, 3, requires_grad=True)
    loss = SupConLoss(1e-4)(z, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def _loop_supcon_with_refs(z, labels, ref, ref_labels, tau):
    """SupCon where the anchors are z and the candidates are z (minus the anchor itself) and ref, by a loop."""
    z = torch.nn.functional.normalize(z, dim=1)
    ref = torch.nn.functional.normalize(ref, dim=1)
    cands = [(z[a], labels[a], a) for a in range(len(z))] + [(r, lab, None) for r, lab in zip(ref, ref_labels)]
    terms = []
    for i in range(len(z)):
        others = [(c, lab) for c, lab, own in cands if own != i]
        positives = [c for c, lab in others if lab == labels[i]]
        if not positives:
            continue
        denom = torch.logsumexp(torch.stack([z[i] @ c / tau for c, _ in others]), 0)
        terms.append(-torch.stack([z[i] @ p / tau - denom for p in positives]).mean())
    return torch.stack(terms).mean()


def test_reference_embeddings_add_candidates() -> None:
    torch.manual_seed(0)
    z, ref = torch.randn(4, 3), torch.randn(4, 3)
    labels, ref_labels = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3])
    # Without references no anchor has a positive; with them each anchor has exactly one.
    assert SupConLoss(0.5)(z, labels).item() == 0.0
    assert SupConLoss(0.5)(z, labels, ref, ref_labels).item() == pytest.approx(
        _loop_supcon_with_refs(z, labels, ref, ref_labels, 0.5).item(), rel=1e-5)


def test_reference_embeddings_match_a_direct_loop() -> None:
    # Positives both among the anchors and among the references, references with labels no anchor has,
    # an anchor with no positive anywhere (label 7).
    torch.manual_seed(4)
    z, ref = torch.randn(8, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 7, 2])
    ref_labels = torch.tensor([0, 2, 4, 3, 4, 1])
    got = SupConLoss(0.3)(z, labels, ref, ref_labels)
    assert got.item() == pytest.approx(_loop_supcon_with_refs(z.float(), labels, ref.float(), ref_labels, 0.3).item(),
                                       rel=1e-5)
    # The references change the loss: they are candidates, not ignored.
    assert got.item() != pytest.approx(SupConLoss(0.3)(z, labels).item(), rel=1e-3)


def test_pair_labels() -> None:
    assert pair_labels(3).tolist() == [0, 1, 2, 0, 1, 2]


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        SupConLoss(0.1)(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        SupConLoss(0.0)

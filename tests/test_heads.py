"""Heads: the monotonic head is monotone with non-negative effective weights; the MLP ablation is not."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from monocon_edge.models.heads import IdentityHead, MLPHead, SquaredLinear, build_head


def test_shapes_follow_the_paper() -> None:
    head = build_head("monotonic", 16)
    assert [tuple(l.weight.shape) for l in head.layers] == [(32, 16), (16, 32)]
    assert head(torch.randn(5, 16)).shape == (5, 16)
    assert isinstance(build_head("none", 16), IdentityHead)
    deep = build_head("mlp", 8, hidden_mult=3, depth=2)
    assert [tuple(l.weight.shape) for l in deep.layers] == [(24, 8), (24, 24), (8, 24)]


def test_monotonic_weights_are_squared_and_non_negative() -> None:
    torch.manual_seed(0)
    head = build_head("monotonic", 12)
    assert all(isinstance(l, SquaredLinear) for l in head.layers)
    for layer, effective in zip(head.layers, head.effective_weights()):
        assert torch.equal(effective, layer.weight ** 2)
        assert (effective >= 0).all()
        assert (layer.weight < 0).any()  # the parameter itself is free; only its square is applied


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), coord=st.integers(0, 9), bump=st.floats(1e-3, 5.0), standardize=st.booleans(),
       slope=st.sampled_from([0.0, 0.01, 0.3, 0.9]))
def test_raising_any_input_never_lowers_any_output(seed: int, coord: int, bump: float, standardize: bool,
                                                   slope: float) -> None:
    torch.manual_seed(seed)
    head = MLPHead(10, 20, 10, depth=2, negative_slope=slope, monotonic=True, standardize=standardize).double()
    if standardize:  # the monotone input standardisation, with arbitrary shifts and (positive) scales
        head.standardizer.set_statistics(torch.randn(50, 10, dtype=torch.float64) * torch.rand(10) * 5 + 3)
    x = torch.randn(4, 10, dtype=torch.float64) * 3
    raised = x.clone()
    raised[:, coord] += bump
    with torch.no_grad():
        assert (head(raised) - head(x) >= -1e-12).all()


def test_mlp_ablation_is_not_monotone() -> None:
    torch.manual_seed(0)
    head = build_head("mlp", 10)
    x = torch.randn(64, 10)
    found = False
    with torch.no_grad():
        for coord in range(10):
            raised = x.clone()
            raised[:, coord] += 1.0
            found |= bool((head(raised) < head(x) - 1e-6).any())
    assert found


def test_identity_init_starts_as_the_identity_and_stays_monotone() -> None:
    torch.manual_seed(0)
    for kind in ("monotonic", "mlp"):
        head = build_head(kind, 16, init="identity")
        x = torch.rand(32, 16) * 4 - 2  # inside the shifted range (-3, inf)
        with torch.no_grad():
            assert torch.allclose(head(x), x, atol=0.2)
            assert torch.corrcoef(torch.stack([head(x).flatten(), x.flatten()]))[0, 1] > 0.99
    mono = build_head("monotonic", 16, init="identity")
    assert all((w >= 0).all() for w in mono.effective_weights())
    assert all((l.weight != 0).all() for l in mono.layers)  # no squared weight stuck at a zero gradient


def test_fold_keeps_a_non_default_negative_slope() -> None:
    # Pre-activations of both signs (default init, centred inputs), so a slope the fold dropped would show.
    from monocon_edge.exporting.fold import FoldedHead, effective_head

    torch.manual_seed(0)
    head = build_head("monotonic", 12, negative_slope=0.3)
    x = torch.randn(64, 12) * 4
    weights, biases, slope = effective_head(head)
    assert slope == 0.3
    with torch.no_grad():
        assert torch.allclose(FoldedHead(weights, biases, slope)(x), head(x), atol=1e-6)
        assert not torch.allclose(FoldedHead(weights, biases, 0.01)(x), head(x), atol=1e-3)

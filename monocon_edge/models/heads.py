"""Projection heads: the MonoCon monotonic MLP, the unconstrained MLP ablation, and the identity (baseline)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SquaredLinear(nn.Linear):
    """A linear layer whose effective weight is the element-wise square of its parameter (so it is >= 0).

    With non-negative weights and a non-decreasing activation, every output is a non-decreasing function of
    every input: the monotonicity constraint of MonoCon.
    """

    def effective_weight(self) -> torch.Tensor:
        """Return W**2, the non-negative weight actually applied."""
        return self.weight * self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class MLPHead(nn.Module):
    """``depth`` hidden layers of width ``hidden`` with LeakyReLU, then a linear output of ``out_dim``.

    ``monotonic=True`` squares every weight in the forward pass (MonoCon's head); ``False`` is the
    unconstrained standard MLP of the same shape (the ablation).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int = 1,
                 negative_slope: float = 0.01, monotonic: bool = True) -> None:
        super().__init__()
        layer = SquaredLinear if monotonic else nn.Linear
        dims = [in_dim] + [hidden] * depth + [out_dim]
        self.layers = nn.ModuleList(layer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.negative_slope = negative_slope
        self.monotonic = monotonic
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return x

    def effective_weights(self) -> list[torch.Tensor]:
        """Return the weights applied in the forward pass (squared for the monotonic head), layer by layer."""
        return [l.effective_weight() if isinstance(l, SquaredLinear) else l.weight for l in self.layers]


class IdentityHead(nn.Module):
    """The baseline: the encoder output is the embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def build_head(kind: str, d_enc: int, hidden_mult: int = 2, depth: int = 1,
               negative_slope: float = 0.01) -> nn.Module:
    """Return the head named ``kind`` (monotonic | mlp | none) mapping d_enc -> d_enc."""
    if kind == "none":
        return IdentityHead(d_enc)
    if kind in ("monotonic", "mlp"):
        return MLPHead(d_enc, hidden_mult * d_enc, d_enc, depth, negative_slope, monotonic=kind == "monotonic")
    raise ValueError(f"unknown head {kind!r}")

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


def mlp_forward(layers: nn.ModuleList, x: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """Return ``x`` passed through ``layers`` with LeakyReLU between them (none after the last)."""
    for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
            x = F.leaky_relu(x, negative_slope)
    return x


class MonotoneStandardizer(nn.Module):
    """x -> (x - shift) * scale per feature, with scale > 0: a monotone (non-decreasing) map of each input.

    The encoder's features are often all non-negative (ReLU, then pooling): a head with non-negative weights then
    starts with every output dominated by the same sum of the inputs (collapsed). Centring and scaling the inputs
    keeps the head monotone in the encoder output while removing that common offset. The statistics are buffers
    set once (``set_statistics``) and saved with the model; export folds them into the head's first layer.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def set_statistics(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Set shift/scale to the per-feature mean and 1/std of ``features`` (N, dim); std floored at ``eps``."""
        x = features.double()
        self.shift.copy_(x.mean(dim=0).float())
        self.scale.copy_((1.0 / x.std(dim=0).clamp(min=eps)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) * self.scale


class MLPHead(nn.Module):
    """``depth`` hidden layers of width ``hidden`` with LeakyReLU, then a linear output of ``out_dim``.

    ``monotonic=True`` squares every weight in the forward pass (MonoCon's head); ``False`` is the
    unconstrained standard MLP of the same shape (the ablation).
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int = 1,
                 negative_slope: float = 0.01, monotonic: bool = True, standardize: bool = False) -> None:
        super().__init__()
        # Optional monotone input standardisation (see MonotoneStandardizer); None keeps the paper's head.
        self.standardizer = MonotoneStandardizer(in_dim) if standardize else None
        layer = SquaredLinear if monotonic else nn.Linear
        dims = [in_dim] + [hidden] * depth + [out_dim]
        self.layers = nn.ModuleList(layer(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.negative_slope = negative_slope
        self.monotonic = monotonic
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardizer is not None:
            x = self.standardizer(x)
        return mlp_forward(self.layers, x, self.negative_slope)

    @torch.no_grad()
    def init_near_identity(self, shift: float = 3.0, noise: float = 0.01) -> None:
        """Start the head as the identity map on inputs above ``-shift`` (the MonoCon head otherwise starts
        collapsed: with all-positive weights every output is dominated by the same sum of the inputs).

        Each layer's (effective) weight is the identity on its leading square block plus small noise — never
        exactly 0, where a squared weight's gradient 2w would vanish for good; the first layer's bias adds
        ``shift`` so that LeakyReLU passes x + shift unchanged, and the last layer's bias removes it.
        """
        # Off-diagonal effective weights of the same size for both heads: w**2 <= noise**2 when squared.
        spread = noise if self.monotonic else noise ** 2
        for i, layer in enumerate(self.layers):
            layer.weight.uniform_(-spread, spread)
            n = min(layer.weight.shape)
            layer.weight[torch.arange(n), torch.arange(n)] = 1.0
            layer.bias.zero_()
            if i == 0:
                layer.bias.fill_(shift)
        self.layers[-1].bias.fill_(-shift)

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


HEAD_INITS = ("default", "identity")


def build_head(kind: str, d_enc: int, hidden_mult: int = 2, depth: int = 1,
               negative_slope: float = 0.01, init: str = "default", standardize: bool = False) -> nn.Module:
    """Return the head named ``kind`` (monotonic | mlp | none) mapping d_enc -> d_enc.

    ``init``: ``default`` (PyTorch's nn.Linear initialisation, as in the paper's code) or ``identity``
    (see MLPHead.init_near_identity). ``standardize`` adds the monotone input standardisation (MLP heads only).
    """
    if kind == "none":
        return IdentityHead(d_enc)
    if kind in ("monotonic", "mlp"):
        head = MLPHead(d_enc, hidden_mult * d_enc, d_enc, depth, negative_slope, monotonic=kind == "monotonic",
                       standardize=standardize)
        if init == "identity":
            head.init_near_identity()
        elif init != "default":
            raise ValueError(f"unknown head init {init!r}")
        return head
    raise ValueError(f"unknown head {kind!r}")

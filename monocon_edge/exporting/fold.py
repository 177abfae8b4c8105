"""Fold a trained MonoCon model and its run's PCA into one plain, static eval module.

The folded module computes ``normalise(P_d · (normalise(head(encoder(x))) − μ))`` where every head weight is
stored as it is applied (W² for the monotonic head, computed once here) in an ordinary ``nn.Linear``, and the
PCA step subtracts the constant μ and multiplies by the constant P_d (subtracting first, rather than folding
−P_d·μ into a bias, keeps float32 exact when the embedding is concentrated near μ, as a collapsed or strongly
compressed MonoCon embedding is). Nothing is squared at run time, so the exported graph holds no Pow/Mul on
weights: the constants are the effective weights.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..device.errors import MonoconError
from ..metrics import PCAStats
from ..models.encoders import mean_pool
from ..models.heads import IdentityHead, MLPHead, mlp_forward
from ..models.monocon import MonoConModel

# Names of the folded tail's parameters: export and quantization find the head / projection by these prefixes.
HEAD_PREFIX = "head_layers"
PROJECTION_PREFIX = "projection"


@dataclass(frozen=True)
class FoldSpec:
    """What was folded: output dims, head kind and the head's layer widths (for the manifest)."""

    dims: int
    d_enc: int
    head: str
    head_layers: tuple[tuple[int, int], ...]
    negative_slope: float


class FoldedHead(nn.Module):
    """The head with effective weights as plain Linear layers, LeakyReLU between them (empty for the baseline)."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], negative_slope: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for w, b in zip(weights, biases):
            layer = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(b)
            self.layers.append(layer)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.layers, x, self.negative_slope)


class FoldedTail(nn.Module):
    """head → normalise → (x − μ)·P_dᵀ → normalise."""

    def __init__(self, head: FoldedHead, components: np.ndarray, mean: np.ndarray) -> None:
        super().__init__()
        # Attribute names are HEAD_PREFIX / PROJECTION_PREFIX (the graph's initializer names start with them).
        self.head_layers = head
        p = torch.from_numpy(np.ascontiguousarray(components, dtype=np.float32))
        mu = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32))
        self.register_buffer("mean", mu.clone())
        self.projection = nn.Linear(p.shape[1], p.shape[0], bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(p)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.head_layers(features), dim=-1)
        return F.normalize(self.projection(z - self.mean), dim=-1)

    def projection_bias(self) -> torch.Tensor:
        """Return −P_d·μ (computed in float64): the bias of the same projection as one affine layer."""
        return -(self.projection.weight.double() @ self.mean.double()).float()


class FoldedVisionModel(nn.Module):
    """Pixels (N, C, H, W) float in [0, 1] → (N, d) L2-normalised embeddings."""

    def __init__(self, encoder: nn.Module, tail: FoldedTail) -> None:
        super().__init__()
        self.encoder = encoder
        self.tail = tail

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tail(self.encoder(pixels))


class FoldedTextModel(nn.Module):
    """(input_ids, attention_mask) int64 (N, L) → (N, d) L2-normalised embeddings; mean pooling in the graph."""

    def __init__(self, transformer: nn.Module, tail: FoldedTail) -> None:
        super().__init__()
        self.transformer = transformer
        self.tail = tail

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.tail(mean_pool(tokens, attention_mask))


def effective_head(head: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """Return the head's applied weights (W² for monotonic), biases and LeakyReLU slope; empty for the baseline.

    A monotone input standardisation is folded into the first layer (its scale is positive, so a monotonic
    head's folded weights stay non-negative).
    """
    if isinstance(head, IdentityHead):
        return [], [], 0.0
    if not isinstance(head, MLPHead):
        raise MonoconError(f"cannot fold a head of type {type(head).__name__}")
    with torch.no_grad():
        weights = [w.detach().clone().float() for w in head.effective_weights()]
        biases = [layer.bias.detach().clone().float() for layer in head.layers]
        if head.standardizer is not None:
            # W·((x − s)·c) + b = (W·diag(c))·x + (b − W·(s·c)); in float64, then stored as float32.
            w0 = head.effective_weights()[0].detach().double()
            shift, scale = head.standardizer.shift.double(), head.standardizer.scale.double()
            weights[0] = (w0 * scale[None, :]).float()
            biases[0] = (head.layers[0].bias.detach().double() - w0 @ (shift * scale)).float()
    return weights, biases, float(head.negative_slope)


def check_dims(dims: int, pca: PCAStats, d_enc: int) -> int:
    """Return ``dims`` if 1 ≤ dims ≤ min(d_enc, PCA components); raise MonoconError otherwise."""
    limit = min(d_enc, int(pca.components.shape[0]))
    if not isinstance(dims, (int, np.integer)) or isinstance(dims, bool) or not 1 <= dims <= limit:
        extra = "" if limit == d_enc else f" (the run's PCA has only {limit} components)"
        raise MonoconError(f"--dims must be between 1 and {limit} for this run (d_enc = {d_enc}){extra}, got {dims}")
    return int(dims)


def limit_positions(transformer: nn.Module, max_positions: int) -> None:
    """Cut a BERT-like ``transformer``'s position table (and its position / token-type id buffers) to the first
    ``max_positions`` rows, in place; nothing changes where the table is not longer.

    The artifact's tokenizer truncates every input to ``max_positions`` tokens, so the other rows can never be
    read: for MiniLM (512 rows, 128 tokens) this drops 0.59 MB of fp32 from every graph and changes no output.
    Longer inputs given to the graph directly are refused by onnxruntime instead of embedded.
    """
    emb = transformer.embeddings
    table = emb.position_embeddings.weight
    if max_positions >= table.shape[0]:
        return
    emb.position_embeddings = nn.Embedding.from_pretrained(table[:max_positions].detach().clone(), freeze=True)
    for name in ("position_ids", "token_type_ids"):
        ids = getattr(emb, name, None)
        if ids is not None:
            setattr(emb, name, ids[:, :max_positions].clone())


def fold(model: MonoConModel, pca: PCAStats, dims: int,
         max_positions: int | None = None) -> tuple[nn.Module, FoldSpec]:
    """Return (the folded eval module, its FoldSpec) for ``model`` truncated to ``dims`` PCA coordinates.

    The model itself is left untouched: the encoder is deep-copied into the folded module. ``max_positions``
    (text): the longest input in tokens the graph must take (see ``limit_positions``); None keeps the table.
    """
    dims = check_dims(dims, pca, model.d_enc)
    if pca.mean.shape[0] != model.d_enc or pca.components.shape[1] != model.d_enc:
        raise MonoconError(f"pca.npz is {pca.components.shape[1]}-d but the model's embedding is {model.d_enc}-d")
    weights, biases, slope = effective_head(model.head)
    tail = FoldedTail(FoldedHead(weights, biases, slope), pca.components[:dims], pca.mean)
    if model.modality == "vision":
        folded: nn.Module = FoldedVisionModel(copy.deepcopy(model.encoder), tail)
    else:
        folded = FoldedTextModel(copy.deepcopy(model.encoder.transformer), tail)
        if max_positions is not None:
            limit_positions(folded.transformer, max_positions)
    folded.eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    spec = FoldSpec(dims=dims, d_enc=model.d_enc, head=_head_kind(model.head),
                    head_layers=tuple((int(w.shape[1]), int(w.shape[0])) for w in weights), negative_slope=slope)
    return folded, spec


def _head_kind(head: nn.Module) -> str:
    if isinstance(head, IdentityHead):
        return "none"
    return "monotonic" if head.monotonic else "mlp"


@torch.no_grad()
def reference_embeddings(model: MonoConModel, pca: PCAStats, dims: int, *inputs: torch.Tensor) -> np.ndarray:
    """Return the unfolded computation normalise(P_d(normalise(model(x)) − μ)) in float32 (for tests and gates)."""
    model.eval()
    z = F.normalize(model(*inputs), dim=-1).double() - torch.from_numpy(pca.mean).double()
    out = z @ torch.from_numpy(pca.components[:dims]).double().T
    return F.normalize(out, dim=-1).float().numpy()

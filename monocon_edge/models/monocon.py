"""Encoder + head: the one place that knows how they compose into an embedding model."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..training.config import RunConfig
from ..device.errors import MonoconError
from .encoders import build_text_encoder, build_vision_encoder
from .heads import build_head


class MonoConModel(nn.Module):
    """``head(encoder(inputs))``: the head output is the embedding (normalise it for cosine similarity)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, modality: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.modality = modality
        self.d_enc = int(encoder.out_dim)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(*inputs))


class TopLayersModel(nn.Module):
    """``head(top layers(token states))``: the trainable part of a text model whose encoder layers below
    ``start`` are frozen (their token states come from ``SentenceEncoder.token_states``)."""

    def __init__(self, model: MonoConModel, start: int) -> None:
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.encoder.pooled_from(states, attention_mask, self.start))


def build_model(cfg: RunConfig) -> MonoConModel:
    """Return the untrained (or pre-trained-encoder) model that ``cfg`` describes."""
    m = cfg.model
    if cfg.modality == "vision":
        encoder = build_vision_encoder(m.encoder, m.in_channels, m.width, m.weights, m.embed_dim)
    else:
        encoder = build_text_encoder(m.weights)
    head = build_head(m.head, encoder.out_dim, m.head_hidden_mult, m.head_depth, m.negative_slope, m.head_init,
                      m.head_standardize)
    return MonoConModel(encoder, head, cfg.modality)


def load_encoder_state(model: MonoConModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy the ``encoder.*`` tensors of a full model state dict into ``model.encoder``."""
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        model.encoder.load_state_dict(enc, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MonoconError(f"the encoder in {source} does not fit this model: {first}") from None


@torch.no_grad()
def head_outputs(head: nn.Module, features: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Return ``head`` applied to encoder ``features`` (N, d_enc), ``batch`` rows at a time on the head's device,
    as float32 (N, d_enc); the head's mode (train / eval) is the caller's."""
    param = next(head.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    out = [head(torch.from_numpy(features[s:s + batch]).to(device)).float().cpu().numpy()
           for s in range(0, len(features), batch)]
    return np.concatenate(out) if out else features

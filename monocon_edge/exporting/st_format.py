"""``--format sentence-transformers``: the folded text model as a folder ``SentenceTransformer(path)`` loads.

Modules: Transformer → mean Pooling → the folded head as Dense layers (effective weights W², LeakyReLU between)
→ Normalize → the PCA projection as a Dense layer (weight P_d, bias −P_d·μ) → Normalize. Only built-in
sentence-transformers modules, each with its own config, so the folder loads without monocon_edge installed.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device.errors import MonoconError

# Dense saves its activation as a class path and rebuilds it without arguments: LeakyReLU() has this slope.
_DEFAULT_LEAKY_SLOPE = 0.01


def _dense(layer: nn.Linear, activation: nn.Module, bias: torch.Tensor | None = None) -> Any:
    from sentence_transformers.sentence_transformer.modules import Dense

    bias = layer.bias if bias is None else bias
    return Dense(layer.in_features, layer.out_features, bias=True, activation_function=activation,
                 init_weight=layer.weight.detach().clone(), init_bias=bias.detach().clone())


def write_sentence_transformer(model: Any, folded: nn.Module, out: Path, input_spec: dict[str, Any]) -> None:
    """Write the sentence-transformers folder of a folded text model to ``out`` (which must not exist)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    tail = folded.tail
    head_layers = list(tail.head_layers.layers)
    slope = tail.head_layers.negative_slope
    if len(head_layers) > 1 and abs(slope - _DEFAULT_LEAKY_SLOPE) > 1e-12:
        raise MonoconError(f"--format sentence-transformers supports LeakyReLU slope {_DEFAULT_LEAKY_SLOPE} only "
                           f"(this run uses {slope})")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        transformer = Transformer(model.encoder.source_path,
                                  max_seq_length=int(input_spec["tokenizer"]["max_length"]))
        # The run's transformer weights (fine-tuned or not), not the ones in the source folder; from the run's model,
        # whose position table is whole (the folded graph's is cut to max_length: fold.limit_positions).
        transformer.auto_model.load_state_dict(model.encoder.transformer.state_dict())
        modules: list[nn.Module] = [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")]
        for i, layer in enumerate(head_layers):
            last = i == len(head_layers) - 1
            modules.append(_dense(layer, nn.Identity() if last else nn.LeakyReLU(_DEFAULT_LEAKY_SLOPE)))
        # A Dense layer has no "subtract first" form: the PCA step is its affine equivalent P_d·z − P_d·μ.
        modules += [Normalize(), _dense(tail.projection, nn.Identity(), tail.projection_bias()), Normalize()]
        st = SentenceTransformer(modules=modules, device="cpu")
        st.save(str(out))

"""``--format sentence-transformers``: the folded text model as a folder ``SentenceTransformer(path)`` loads.

Modules: Transformer → mean Pooling → the folded head as Dense layers (effective weights W², LeakyReLU between)
→ Normalize → the PCA projection as a Dense layer (weight P_d, bias −P_d·μ) → Normalize. Only built-in
sentence-transformers modules, each with its own config, so the folder loads without monocon_edge installed.

Dense saves its activation as a class path and rebuilds it without arguments, so a LeakyReLU slope other than
PyTorch's default 0.01 (the nli-pairs preset's 0.3) cannot be saved as such. Such a head is written through the
identity LeakyReLU_a(h) = ReLU(h) − a·ReLU(−h): each hidden Dense outputs [h; −h] through ReLU (twice the width)
and the next reads it with the weights [W, −a·W] — the same function, in built-in modules.
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


# Dense saves its activation as a class path and rebuilds it without arguments: LeakyReLU() has this slope.
_DEFAULT_LEAKY_SLOPE = 0.01


def _dense(weight: torch.Tensor, bias: torch.Tensor, activation: nn.Module) -> Any:
    """Return a sentence-transformers Dense computing activation(weight · x + bias)."""
    from sentence_transformers.sentence_transformer.modules import Dense

    return Dense(weight.shape[1], weight.shape[0], bias=True, activation_function=activation,
                 init_weight=weight.detach().clone(), init_bias=bias.detach().clone())


def head_dense_layers(layers: list[nn.Linear], slope: float) -> list[Any]:
    """Return Dense modules computing the folded head (``layers`` with LeakyReLU(``slope``) between them).

    At PyTorch's default slope, one Dense per layer with ``nn.LeakyReLU()``; at any other slope, every hidden
    layer doubled into [h; −h] under ReLU and read by the next as [W, −slope·W] (see the module docstring)."""
    if abs(slope - _DEFAULT_LEAKY_SLOPE) <= 1e-12:
        return [_dense(l.weight, l.bias, nn.Identity() if i == len(layers) - 1 else nn.LeakyReLU())
                for i, l in enumerate(layers)]
    out, split = [], False
    for i, layer in enumerate(layers):
        w, b = layer.weight.detach(), layer.bias.detach()
        if split:  # the input is [ReLU(h); ReLU(-h)]: W·LeakyReLU(h) = [W, -slope·W]·[ReLU(h); ReLU(-h)]
            w = torch.cat([w, -slope * w], dim=1)
        if i == len(layers) - 1:
            out.append(_dense(w, b, nn.Identity()))
        else:
            out.append(_dense(torch.cat([w, -w]), torch.cat([b, -b]), nn.ReLU()))
            split = True
    return out


def write_sentence_transformer(model: Any, folded: nn.Module, out: Path, input_spec: dict[str, Any]) -> None:
    """Write the sentence-transformers folder of a folded text model to ``out`` (which must not exist)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    tail = folded.tail
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        transformer = Transformer(model.encoder.source_path,
                                  max_seq_length=int(input_spec["tokenizer"]["max_length"]))
        # The run's transformer weights (fine-tuned or not), not the ones in the source folder; from the run's model,
        # whose position table is whole (the folded graph's is cut to max_length: fold.limit_positions).
        transformer.auto_model.load_state_dict(model.encoder.transformer.state_dict())
        modules: list[nn.Module] = [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")]
        modules += head_dense_layers(list(tail.head_layers.layers), tail.head_layers.negative_slope)
        # A Dense layer has no "subtract first" form: the PCA step is its affine equivalent P_d·z − P_d·μ.
        modules += [Normalize(), _dense(tail.projection.weight, tail.projection_bias(), nn.Identity()), Normalize()]
        st = SentenceTransformer(modules=modules, device="cpu")
        st.save(str(out))

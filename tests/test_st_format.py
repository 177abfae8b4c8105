"""--format sentence-transformers: the folded text model as built-in sentence-transformers modules, for any
LeakyReLU slope of the head (Dense rebuilds its activation without arguments: see exporting/st_format.py)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from monocon_edge import metrics as M
from monocon_edge.exporting.fold import fold
from monocon_edge.exporting.st_format import head_dense_layers, write_sentence_transformer
from monocon_edge.models.monocon import build_model
from monocon_edge.training.config import override, preset


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.3])
@pytest.mark.parametrize("depth", [1, 2])
def test_dense_layers_compute_the_head_at_any_slope(slope, depth) -> None:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 10)] + [torch.nn.Linear(10, 10) for _ in range(depth - 1)] + [torch.nn.Linear(10, 4)]
    x = torch.randn(32, 6) * 3
    want = x
    for i, layer in enumerate(layers):
        want = layer(want)
        if i < len(layers) - 1:
            want = torch.nn.functional.leaky_relu(want, slope)
    got = x
    for dense in head_dense_layers(layers, slope):
        got = dense({"sentence_embedding": got})["sentence_embedding"]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_folder_of_a_slope_0_3_monotonic_head_reproduces_the_folded_model(tmp_path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    cfg = override(preset("nli-pairs", "monotonic"), "model", negative_slope=0.3)
    model = build_model(cfg).eval()
    texts = ["A man is playing a guitar.", "Two dogs run through the snowy park", "short", "a cat", "rain today"]
    tok = model.encoder.tokenize(texts, 128)
    with torch.no_grad():
        emb = model(tok["input_ids"], tok["attention_mask"]).numpy()
    pca = M.fit_pca(np.concatenate([emb, emb + np.random.default_rng(0).normal(0, 0.05, emb.shape)]))
    folded, _ = fold(model, pca, 4)
    with torch.no_grad():
        want = folded(tok["input_ids"], tok["attention_mask"]).numpy()
    spec = {"tokenizer": {"max_length": 128}}
    write_sentence_transformer(model, folded, tmp_path / "st", spec)
    got = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

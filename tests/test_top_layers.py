"""--train-top-layers: the top MiniLM layers co-adapt with the head on token states of the frozen lower layers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monocon_edge.models.encoders import build_text_encoder
from monocon_edge.runs import embed_run, load_run
from monocon_edge.training.config import NLI_PAIRS
from monocon_edge.training.token_states import TokenStates, compute_token_states
from test_shared_data import small_sts

SENTENCES = ["A man is playing a guitar on a small stage.", "Hi.", "Two dogs run across a field",
             "A woman slices an onion in the kitchen while the radio plays an old song nobody remembers."]


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder().eval()


@pytest.mark.parametrize("start", [0, 3, 5])
def test_top_layers_on_token_states_reproduce_the_encoder(minilm, start: int) -> None:
    tok = minilm.tokenize(SENTENCES, 128)
    with torch.no_grad():
        full = minilm(tok["input_ids"], tok["attention_mask"])
        states = minilm.token_states(tok["input_ids"], tok["attention_mask"], start)
        split = minilm.pooled_from(states, tok["attention_mask"], start)
    assert (split - full).abs().max().item() <= 1e-5


def test_stored_states_without_padding_give_the_same_embeddings(minilm) -> None:
    # Stored per sentence without padding, re-padded per batch in another order and another batch size.
    start = 4
    with torch.no_grad():
        arrays = compute_token_states(SENTENCES, lambda t: minilm.tokenize(t, 128),
                                      lambda ids, m: minilm.token_states(ids, m, start), batch_size=3)
        states = TokenStates.from_arrays(arrays)
        pooled = states.pooled(lambda h, m: minilm.pooled_from(h, m, start), batch_size=2)
        tok = minilm.tokenize(SENTENCES, 128)
        full = minilm(tok["input_ids"], tok["attention_mask"]).numpy()
    lengths = np.diff(arrays["offsets"])
    assert lengths.tolist() == tok["attention_mask"].sum(1).tolist()  # real tokens only
    assert np.abs(pooled - full).max() <= 1e-5


def test_top_layer_parameters_are_the_last_layers(minilm) -> None:
    top = minilm.top_layer_parameters(2)
    last_two = list(minilm.transformer.encoder.layer[-2:].parameters())
    assert len(top) == len(last_two) and all(a is b for a, b in zip(top, last_two))


@pytest.mark.shared_data
def test_cli_trains_only_the_top_layer_and_reports_what_the_saved_model_computes(shared_data: Path,
                                                                                  tmp_path: Path) -> None:
    sts = small_sts(shared_data, tmp_path, rows=60)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "monocon_edge", "train", "--preset", "nli-pairs",
           "--data", str(shared_data / NLI_PAIRS[2]), "--max-train", "200", "--val-data", sts, "--report-data", sts,
           "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "32", "--eval-every", "1",
           "--train-encoder", "--lr-encoder", "1e-3", "--train-top-layers", "1", "--out", str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["optim"]["train_top_layers"] == 1

    loaded = load_run(run)
    start = build_text_encoder().state_dict()
    trained = loaded.model.encoder.state_dict()
    changed = {k for k in start if not torch.equal(start[k], trained[k])}
    assert changed and all(k.startswith("transformer.encoder.layer.5.") for k in changed)

    # The summary's figures came from the token-state path; the saved model's full forward gives the same.
    emb = embed_run(loaded)
    again, _ = loaded.task.evaluate(emb.embeddings, full=False)
    final = loaded.summary["final"]
    assert abs(again["spearman"] - final["spearman"]) <= 1e-4
    assert again["recall@1"] == pytest.approx(final["recall@1"])

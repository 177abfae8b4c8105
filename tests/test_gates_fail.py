"""Each export gate fails on its own, and the failure names that gate: the fp32 parity gate, the int8 codes
gate, the int8 model gate (reached, not masked by the codes gate), and the Recall@1-drop gate at its default
of 1 point; through export and through verify's re-measurement."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from monocon_edge.cli import app
from monocon_edge.device import embedding_codes
from monocon_edge.device.artifact import MANIFEST
from monocon_edge.device.errors import GateError
from monocon_edge.exporting.gates import GateThresholds, Retrieval, measure_and_check

runner = CliRunner()


# ----- the gates on synthetic embeddings whose figures are known ------------------------------------------
def _retrieval(n_pairs: int = 100, per_class: int = 2, dims: int = 8):
    """Return (Retrieval, query, gallery): 2 * n_pairs classes in near pairs (cos ~ 0.999), one gallery vector
    each, ``per_class`` queries per class equal to their class's gallery vector (fp32 Recall@1 = 1)."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n_pairs, dims))
    twin = base + 0.05 * rng.normal(size=(n_pairs, dims))
    gallery = np.empty((2 * n_pairs, dims))
    gallery[0::2], gallery[1::2] = base, twin
    gallery = (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).astype(np.float32)
    g_labels = np.arange(2 * n_pairs)
    q_labels = np.repeat(g_labels, per_class)
    query = gallery[q_labels].copy()
    r = Retrieval([{"x": query}], [{"x": gallery}], q_labels, g_labels, "synthetic")
    return r, query, gallery


def _scales(query, gallery):
    return embedding_codes.calibrate_scales(np.concatenate([query, gallery]))


def _flip(query, gallery, n: int):
    """Return an 'int8 model' that answers the first ``n`` queries (of even classes) with their twin's vector."""
    flipped = query.copy()
    for i in range(n):
        row = 2 * i * 2  # the first query of class 2i (per_class = 2)
        flipped[row] = gallery[2 * i + 1]

    def int8(batch):
        x = batch["x"]
        return flipped if x.shape == query.shape and np.array_equal(x, query) else x
    return int8


def _identity(batch):
    return batch["x"]


def test_recall_drop_gate_at_its_default_of_one_point() -> None:
    r, q, g = _retrieval()  # 400 queries: one flipped query = 0.25 points
    assert GateThresholds().int8_max_recall_drop_points == 1.0
    figures = measure_and_check(_identity, [], r, _scales(q, g), GateThresholds(), int8=_flip(q, g, 3))
    m = figures["int8_model"]
    assert m["recall_drop_points"] == pytest.approx(0.75) and m["mean_cosine"] > 0.999  # 0.75 <= 1: passes
    with pytest.raises(GateError) as err:
        measure_and_check(_identity, [], r, _scales(q, g), GateThresholds(), int8=_flip(q, g, 5))
    assert str(err.value).startswith("int8 model: Recall@1 drops 1.25 points (100.00 -> 98.75 on 400 queries) > 1 ")


def test_int8_model_cosine_gate_is_reached_when_the_codes_pass() -> None:
    r, q, g = _retrieval()
    rng = np.random.default_rng(1)

    def noisy(batch):  # the int8 graph's output, cos ~ 0.95 to fp32
        x = batch["x"] + 0.3 * rng.normal(size=batch["x"].shape).astype(np.float32) / np.sqrt(8)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    figures = measure_and_check(_identity, [], r, _scales(q, g), GateThresholds(int8_max_recall_drop_points=100.0))
    assert figures["int8_codes"]["mean_cosine"] > 0.9999  # the codes gate alone passes
    with pytest.raises(GateError, match=r"^int8 model: mean cosine to fp32 is 0\.9\d+ < 0\.99 \(--int8-min-cosine\)$"):
        measure_and_check(_identity, [], r, _scales(q, g), GateThresholds(int8_max_recall_drop_points=100.0),
                          int8=noisy)


def test_int8_codes_gate_names_the_codes() -> None:
    r, q, g = _retrieval()
    coarse = np.full(q.shape[1], 0.5, np.float32)  # codes of -2..2: far from fp32
    with pytest.raises(GateError, match=r"^int8 embedding codes: mean cosine to fp32 is"):
        measure_and_check(_identity, [], r, coarse, GateThresholds(), int8=_identity)


def test_parity_gate_names_the_parity() -> None:
    r, q, g = _retrieval()

    def reference(batch):
        return batch["x"] + 1e-3

    with pytest.raises(GateError, match=r"^fp32 ONNX differs from PyTorch by 0\.001 \(max abs over 400 inputs\)"):
        measure_and_check(_identity, [{"x": q}], r, _scales(q, g), GateThresholds(), reference=reference)
    nan = measure_and_check  # a NaN reference is its own message, not a parity number
    with pytest.raises(GateError, match="PyTorch folded model produced NaN/inf"):
        nan(_identity, [{"x": q}], r, _scales(q, g), GateThresholds(), reference=lambda b: b["x"] * np.nan)


# ----- through the CLI on the tiny digits artifact ---------------------------------------------------------
def _between_codes_and_model(artifact) -> float:
    """Return a cosine threshold the recorded int8 codes meet and the recorded int8 graph does not."""
    gates = json.loads((artifact / MANIFEST).read_text())["gates"]
    codes, model = gates["int8_codes"]["mean_cosine"], gates["int8_model"]["mean_cosine"]
    assert model < codes, gates  # int8 weights and activations lose more than int8 output codes
    return (codes + model) / 2


def _fails_with(args: list[str], message: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    line = " ".join(result.output.split())
    assert line.startswith("error: " + message), line
    return line


def test_export_fails_at_the_int8_model_gate(tiny_runs, digits_artifact, tmp_path) -> None:
    threshold = _between_codes_and_model(digits_artifact)
    _fails_with(["export", str(tiny_runs["none"]), "--dims", "16", "--int8", "--int8-min-cosine", f"{threshold:.8f}",
                 "--int8-max-recall-drop", "100", "--out", str(tmp_path / "never")],
                "no int8 candidate passes the gates: static: mean cosine to fp32 is")  # the int8 model gate
    assert list(tmp_path.iterdir()) == []


def test_verify_remeasures_and_fails_each_gate(digits_artifact, tmp_path) -> None:
    threshold = f"{_between_codes_and_model(digits_artifact):.8f}"
    before = sorted(p.name for p in digits_artifact.iterdir())
    # Against the source run (parity, codes, model) ...
    _fails_with(["verify", str(digits_artifact), "--int8-min-cosine", threshold], "int8 model: mean cosine to fp32")
    _fails_with(["verify", str(digits_artifact), "--parity-atol", "1e-12"], "fp32 ONNX differs from PyTorch")
    _fails_with(["verify", str(digits_artifact), "--int8-min-cosine", "1.0"], "int8 embedding codes: mean cosine")
    # ... and on given data (codes, model).
    from sklearn.datasets import load_digits

    d = load_digits()
    data = tmp_path / "digits.npz"
    np.savez(data, images=np.round(d.images * (255 / 16)).astype(np.uint8)[..., None], labels=d.target)
    _fails_with(["verify", str(digits_artifact), "--data", str(data), "--int8-min-cosine", threshold,
                 "--int8-max-recall-drop", "100"], "int8 model: mean cosine to fp32")
    assert sorted(p.name for p in digits_artifact.iterdir()) == before

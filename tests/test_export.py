"""Export: folding, the graph's constants, parity on real data, the gates, the artifact and the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from monocon_edge.device.artifact import FP32_FILE, INT8_FILE, MANIFEST, OUTPUT_NAME, sha256_file
from monocon_edge.cli import app
from monocon_edge.data.vision import to_float_batch
from monocon_edge.runs import load_run
from monocon_edge.exporting.build import ExportOptions, export_run
from monocon_edge.exporting.fold import fold, reference_embeddings
from monocon_edge.exporting.onnx_export import EXPORT_BATCH

runner = CliRunner()


def _fails_cleanly(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert expected in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _images(run_dir: Path, n: int = 300) -> torch.Tensor:
    loaded = load_run(run_dir)
    return to_float_batch(loaded.task.data.images[:n])


@pytest.mark.parametrize("head", ["monotonic", "mlp", "none"])
def test_folded_module_equals_unfolded_model(tiny_runs, head) -> None:
    loaded = load_run(tiny_runs[head])
    # Past d_eff the collapsed tiny monotonic run's coordinates are float noise that normalisation amplifies.
    dims = loaded.d_eff if head == "monotonic" else 16
    folded, spec = fold(loaded.model, loaded.pca, dims)
    x = _images(tiny_runs[head])
    with torch.no_grad():
        got = folded(x).numpy()
    want = reference_embeddings(loaded.model, loaded.pca, dims, x)
    assert got.shape == (x.shape[0], dims) and spec.head == head
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    if head != "none":  # the folded head alone (before any normalisation) equals the trained head
        with torch.no_grad():
            feats = loaded.model.encoder(x)
            np.testing.assert_allclose(folded.tail.head_layers(feats).numpy(), loaded.model.head(feats).numpy(),
                                       atol=1e-5, rtol=1e-5)


def test_graph_stores_squared_weights_as_constants(tiny_runs, tmp_path) -> None:
    result = export_run(tiny_runs["monotonic"], ExportOptions(out=tmp_path / "a"))
    graph = onnx.load(str(result.path / FP32_FILE)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    head_inits = {name for name in inits if name.startswith("tail.head_layers")}
    assert "Pow" not in {n.op_type for n in graph.node}
    assert not [n for n in graph.node if n.op_type == "Mul" and head_inits.intersection(n.input)]
    checkpoint = torch.load(Path(tiny_runs["monotonic"]) / "best.pt", weights_only=True)["model"]
    for i in range(2):
        w = checkpoint[f"head.layers.{i}.weight"].numpy()
        np.testing.assert_allclose(inits[f"tail.head_layers.layers.{i}.weight"], w * w, rtol=1e-6, atol=0)
        assert (inits[f"tail.head_layers.layers.{i}.weight"] >= 0).all()
    manifest = result.manifest
    assert manifest["output"]["dims"] == manifest["output"]["d_eff"] == load_run(tiny_runs["monotonic"]).d_eff


def test_export_parity_on_real_digits(tiny_runs, digits_artifact) -> None:
    manifest = json.loads((digits_artifact / MANIFEST).read_text())
    parity = manifest["gates"]["fp32_parity"]
    assert parity["samples"] >= 256 and parity["batch_size"] != EXPORT_BATCH
    assert parity["max_abs_diff"] <= 1e-5 and parity["finite_onnx"] and parity["finite_reference"]
    assert manifest["gates"]["int8_model"]["mean_cosine"] >= 0.99
    models = {f for f in manifest["files"] if not f.startswith("monocon_runtime/")}
    assert models == {FP32_FILE, INT8_FILE, "monocon_device.py", "requirements.txt"}
    # CNNs: static QDQ, measured (size, batch-1 latency against fp32) and recorded; without a head (the baseline)
    # static-head would be the same graph, so it is not built, and the record says why.
    selection = manifest["models"]["int8"]["selection"]
    assert selection["winner"] == "static" and [c["name"] for c in selection["candidates"]] == ["static"]
    assert "no folded head" in selection["not_applicable"]["static-head"]
    assert selection["candidates"][0]["passed"] and selection["candidates"][0]["p50_ms"] > 0
    assert selection["fp32"]["bytes"] == (digits_artifact / FP32_FILE).stat().st_size
    assert manifest["models"]["int8"]["quantization"]["format"] == "QDQ"
    assert all(sha256_file(digits_artifact / f) == h for f, h in manifest["files"].items())
    # Independently of the gate: 300 real images at batch 7 through onnxruntime vs the folded PyTorch module.
    loaded = load_run(tiny_runs["none"])
    folded, _ = fold(loaded.model, loaded.pca, 16)
    x = _images(tiny_runs["none"])
    session = ort.InferenceSession(str(digits_artifact / FP32_FILE), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run([OUTPUT_NAME], {"pixels": x[s:s + 7].numpy()})[0] for s in range(0, 300, 7)])
    with torch.no_grad():
        want = folded(x).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(digits_artifact / INT8_FILE)).metadata_props}
    assert meta["monocon_edge.dims"] == "16" and meta["monocon_edge.precision"] == "int8"
    assert json.loads(meta["monocon_edge.input"])["shape"] == [1, 8, 8]


def test_mlp_run_exports_through_the_cli(tiny_runs, tmp_path) -> None:
    out = tmp_path / "mlp"
    result = runner.invoke(app, ["export", str(tiny_runs["mlp"]), "--dims", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fp32 ONNX vs PyTorch" in result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["head"] == "mlp" and manifest["output"]["dims"] == 8
    assert manifest["head_folded"]["layers"] == [[32, 64], [64, 32]]


def test_int8_gate_fails_the_export_when_impossible(tiny_runs, tmp_path) -> None:
    out = tmp_path / "never"
    # A cosine of 1.0 is out of reach of any int8: the codes gate (checked first) is the one that fails.
    # The int8 model gate failing on its own: tests/test_gates_fail.py.
    _fails_cleanly(["export", str(tiny_runs["none"]), "--dims", "16", "--int8", "--int8-min-cosine", "1.0",
                    "--out", str(out)], "error: int8 embedding codes: mean cosine to fp32 is")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nor any temporary directory


def test_parity_gate_fails_the_export_when_impossible(tiny_runs, tmp_path) -> None:
    _fails_cleanly(["export", str(tiny_runs["none"]), "--dims", "16", "--parity-atol", "1e-30",
                    "--out", str(tmp_path / "never")], "differs from PyTorch")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dims, expected", [("0", "between 1 and 32"), ("-1", "between 1 and 32"),
                                            ("33", "between 1 and 32"), ("many", "integer or 'deff'")])
def test_bad_dims_are_refused(tiny_runs, tmp_path, dims, expected) -> None:
    _fails_cleanly(["export", str(tiny_runs["none"]), "--dims", dims, "--out", str(tmp_path / "a")], expected)
    assert not (tmp_path / "a").exists()


def test_existing_out_is_refused_and_untouched(tiny_runs, tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _fails_cleanly(["export", str(tiny_runs["none"]), "--out", str(out)], "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_bad_run_dir_and_format(tiny_runs, tmp_path) -> None:
    _fails_cleanly(["export", str(tmp_path / "nope")], "run directory not found")
    _fails_cleanly(["export", str(tiny_runs["none"]), "--format", "sentence-transformers",
                    "--out", str(tmp_path / "a")], "text runs only")


def test_verify_rechecks_and_refuses_a_tampered_artifact(digits_artifact, tmp_path) -> None:
    result = runner.invoke(app, ["verify", str(digits_artifact)])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "(source run)" in result.output
    copy = tmp_path / "copy"
    shutil.copytree(digits_artifact, copy)
    data = bytearray((copy / INT8_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / INT8_FILE).write_bytes(bytes(data))
    _fails_cleanly(["verify", str(copy)], "model.int8.onnx does not match its sha256")


def test_verify_on_given_data(digits_artifact, tmp_path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    data = tmp_path / "digits.npz"
    np.savez(data, images=np.round(d.images * (255 / 16)).astype(np.uint8)[..., None], labels=d.target)
    result = runner.invoke(app, ["verify", str(digits_artifact), "--data", str(data),
                                 "--int8-max-recall-drop", "100"])
    assert result.exit_code == 0, result.output
    assert "179 queries" in result.output  # 10 % of the 1797 digits
    wrong = tmp_path / "rgb.npz"
    np.savez(wrong, images=np.zeros((8, 8, 8, 3), np.uint8), labels=np.arange(8) % 2)
    _fails_cleanly(["verify", str(digits_artifact), "--data", str(wrong)], "uint8 images must be (N, 8, 8, 1)")


def test_matryoshka_runs_export_prefix_truncation(tiny_runs, tmp_path) -> None:
    from monocon_edge.device import runtime
    from monocon_edge.exporting.gates import GateThresholds

    run_dir = tiny_runs["matryoshka"]
    out = tmp_path / "mrl-d8"
    # 36 tiny queries: one flipped query moves Recall@1 by 2.8 points, so no recall gate here.
    opts = ExportOptions(dims=8, out=out, thresholds=GateThresholds(parity_atol=1e-4,
                                                                    int8_max_recall_drop_points=100.0))
    manifest = export_run(run_dir, opts).manifest
    assert manifest["output"]["truncation"] == "prefix"
    loaded = load_run(run_dir)
    images = loaded.task.data.images[:50]
    with torch.no_grad():
        full = loaded.model(to_float_batch(images)).numpy()
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    got = runtime.load(out).embed(images)
    assert np.abs(got - expected).max() < 1e-4

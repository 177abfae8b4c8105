"""Export on the real data sets in ../shared/data: a 32x32 RGB image run, and MiniLM text with int8 + ST folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from monocon_edge.device import runtime
from monocon_edge.device.artifact import MANIFEST
from monocon_edge.training.config import NLI_PAIRS, TINY_IMAGENET, override, preset
from monocon_edge.runs import load_run
from monocon_edge.exporting.build import ExportOptions, export_run
from monocon_edge.exporting.fold import fold
from monocon_edge.exporting.gates import GateThresholds
from monocon_edge.training.loop import train
from test_shared_data import small_sts

pytestmark = pytest.mark.shared_data
# Tiny runs have a few dozen queries: one flipped query moves Recall@1 by several points.
LOOSE_DROP = GateThresholds(int8_max_recall_drop_points=100.0)


def test_tiny_imagenet_export_parity_and_int8(shared_data: Path, tmp_path: Path) -> None:
    cfg = override(preset("tiny-imagenet-100", "none"), "data", path=str(shared_data / TINY_IMAGENET), max_train=400,
                   augment="none")
    cfg = override(override(cfg, "model", width=4), "optim", epochs=1, batch_size=64)
    run = train(cfg, tmp_path / "run").run_dir
    result = export_run(run, ExportOptions(dims=16, int8=True, out=tmp_path / "art", thresholds=LOOSE_DROP))
    gates = result.manifest["gates"]
    assert gates["fp32_parity"]["samples"] >= 256 and gates["fp32_parity"]["max_abs_diff"] <= 1e-5
    assert gates["int8_model"]["mean_cosine"] >= 0.99 and gates["int8_codes"]["mean_cosine"] >= 0.99
    assert result.manifest["input"]["shape"] == [3, 32, 32]
    assert result.manifest["models"]["int8"]["quantization"]["format"] == "QDQ"


def test_text_export_runtime_and_sentence_transformers(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # quantization tools must not drop files into the working directory
    cfg = override(preset("nli-pairs", "none"), "data", path=str(shared_data / NLI_PAIRS[2]), max_train=90,  # >= 128 unique train sentences: dimension_metrics.PCA_DIMS asks the PCA for 128 dims
                   val_path=small_sts(shared_data, tmp_path, rows=20))
    run = train(cfg, tmp_path / "run").run_dir
    out = tmp_path / "art"
    # One forced scheme keeps this test short; the selection itself is tested on a tiny BERT (test_int8_select).
    # The fp32 graph ships with its weight MatMuls as Gemm(Wᵀ, x) (forced: whether it pays is the machine's call),
    # so everything below (runtime, device script) runs that layout.
    result = export_run(run, ExportOptions(dims=64, int8=True, out=out, formats=("onnx", "sentence-transformers"),
                                           thresholds=LOOSE_DROP, int8_scheme="nbits8", optimize=False,
                                           fp32_layout="transposed", timing_rounds=20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "run", "stsb_small.tsv"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["gates"]["fp32_parity"]["max_abs_diff"] <= 1e-5
    assert manifest["gates"]["int8_model"]["mean_cosine"] >= 0.99
    quantization = manifest["models"]["int8"]["quantization"]
    assert quantization["method"] == "weight-only" and quantization["accuracy_level"] == 4
    assert "transformer.embeddings.word_embeddings.weight" in quantization["gather_tables"]
    assert manifest["models"]["int8"]["selection"]["winner"] == "nbits8"
    assert {"min_cosine", "spearman_drop_points"} <= set(manifest["gates"]["int8_model"])
    assert "tokenizer.json" in manifest["files"] and "sentence-transformers/modules.json" in manifest["files"]
    assert result.manifest["input"]["tokenizer"]["max_length"] == 128
    layout = manifest["models"]["fp32"]["weight_layout"]
    assert layout["kept"] and layout["stats"]["matmuls"] == 36 and layout["max_abs_diff_to_plain"] <= 2.5e-6
    # its 24 A-operand weights (stacked Q/K/V, output, two feed-forward per layer) beside the graph, listed and sealed
    assert layout["external_data"]["tensors"] == 24 and "model.onnx.data" in manifest["files"]
    import onnx

    shipped = onnx.load(str(out / "model.onnx"))
    weights = {i.name for i in shipped.graph.initializer}
    assert not [n for n in shipped.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    # the int8 candidates quantized the graph as exported (its 36 MatMuls), not the rewritten one
    assert sum(n.op_type == "MatMulNBits" for n in onnx.load(str(out / "model.int8.onnx")).graph.node) == 36
    assert not any(p.name.startswith("plain.") for p in out.iterdir())

    # The runtime (tokenizers + onnxruntime) gives what the run's own PyTorch model gives on HF tokenization.
    # The last text is longer than max_length: truncated to 128 tokens, it reads the last position-table row the
    # graph keeps (export cuts MiniLM's 512-row table to max_length; the reference below keeps all of it).
    texts = ["A man is playing a guitar.", "Two dogs run through the snowy park", "short", "", "words " * 300]
    loaded = load_run(run)
    folded, _ = fold(loaded.model, loaded.pca, 64)
    tok = loaded.model.encoder.tokenize(texts, 128)
    with torch.no_grad():
        want = folded(tok["input_ids"], tok["attention_mask"]).numpy()
    model = runtime.load(out)
    np.testing.assert_allclose(model.embed(texts, batch_size=3), want, atol=1e-5, rtol=0)
    assert (model.tokenize(texts)["input_ids"] == tok["input_ids"].numpy()).all()
    assert tok["attention_mask"].sum(dim=1).max() == 128
    tables = {t.name: tuple(t.dims) for t in onnx.load(str(out / "model.onnx")).graph.initializer
              if "position_embeddings" in t.name}
    assert list(tables.values()) == [(128, 384)], tables

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out / "sentence-transformers"), device="cpu")
    np.testing.assert_allclose(st.encode(texts, convert_to_numpy=True), want, atol=1e-5, rtol=0)

    # The device script on the text artifact in a process where torch cannot be imported: same embeddings;
    # a file that is not UTF-8 is one line on stderr.
    import subprocess
    import sys
    import textwrap

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, _NoTorch())
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(root)])}
    (tmp_path / "texts.txt").write_text("\n".join(texts[:3]) + "\n", encoding="utf-8")
    script = [sys.executable, str(root / "export" / "monocon_device.py")]
    done = subprocess.run(script + ["embed", str(out), "--texts", "texts.txt", "--out", "emb.npy", "--precision",
                                    "fp32"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), want[:3], atol=1e-5, rtol=0)
    (tmp_path / "latin1.txt").write_bytes("un caf\xe9\n".encode("latin-1"))
    bad = subprocess.run(script + ["embed", str(out), "--texts", "latin1.txt", "--out", "bad.npy"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: UnicodeDecodeError")
    assert not (tmp_path / "bad.npy").exists()

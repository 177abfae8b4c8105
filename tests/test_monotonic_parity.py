"""Parity of a monotonic run that did NOT collapse (identity head init: d_eff ~ 20 on tiny digits, where the
default init collapses to d_eff 1 and parity compares signs of +-1): the folded module, the ONNX graph and
the torch-free runtime all equal the unfolded PyTorch model at 16 dims."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from monocon_edge.data.vision import to_float_batch
from monocon_edge.device.artifact import FP32_FILE, OUTPUT_NAME
from monocon_edge.exporting.build import ExportOptions, export_run
from monocon_edge.exporting.fold import fold, reference_embeddings
from monocon_edge.runs import load_run
from monocon_edge.exporting.gates import GateThresholds
from monocon_edge.training.config import override
from monocon_edge.training.loop import train

from helpers import tiny_digits

ROOT = Path(__file__).resolve().parents[1]
DIMS = 16
BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, _NoTorch())
""")


@pytest.fixture(scope="module")
def spread_run(tmp_path_factory):
    """Return (run directory, artifact directory) of a tiny monotonic digits run with identity head init."""
    root = tmp_path_factory.mktemp("monotonic-identity")
    cfg = override(tiny_digits("monotonic", epochs=3, warmup_epochs=0, batch_size=32), "model", head_init="identity")
    run_dir = train(cfg, root / "run").run_dir
    # 36 tiny queries: one flipped query is 2.8 Recall@1 points, so no recall gate here (the gates have their
    # own tests); the parity gate stays at its default 1e-5.
    art = export_run(run_dir, ExportOptions(dims=DIMS, out=root / "art",
                                            thresholds=GateThresholds(int8_max_recall_drop_points=100.0))).path
    return run_dir, art


def _images(run_dir, n=300):
    return load_run(run_dir).task.data.images[:n]


def test_the_run_did_not_collapse(spread_run) -> None:
    loaded = load_run(spread_run[0])
    assert loaded.model.head.__class__.__name__ == "MonotonicHead" or loaded.cfg.model.head == "monotonic"
    assert loaded.d_eff >= DIMS
    with torch.no_grad():
        want = reference_embeddings(loaded.model, loaded.pca, DIMS, to_float_batch(_images(spread_run[0])))
    # 16 real directions, none of them a constant sign: the comparison below is not of +-1 values.
    s = np.linalg.svd(want - want.mean(axis=0), compute_uv=False)
    assert s[DIMS - 1] / s[0] > 1e-3, s
    assert (np.abs(np.abs(want) - 1.0) > 0.05).mean() > 0.9


def test_fold_onnx_and_runtime_equal_the_unfolded_model(spread_run, tmp_path) -> None:
    run_dir, art = spread_run
    loaded = load_run(run_dir)
    images = _images(run_dir)
    x = to_float_batch(images)
    want = reference_embeddings(loaded.model, loaded.pca, DIMS, x)  # unfolded: W² head, normalise, PCA
    folded, spec = fold(loaded.model, loaded.pca, DIMS)
    assert spec.head == "monotonic"
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), want, atol=1e-5, rtol=0)
    session = ort.InferenceSession(str(art / FP32_FILE), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run([OUTPUT_NAME], {"pixels": x[s:s + 7].numpy()})[0] for s in range(0, 300, 7)])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The torch-free runtime, in a child process where importing torch fails.
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_TORCH)
    child = textwrap.dedent(f"""
        import sys, numpy as np
        from monocon_edge.device import runtime
        np.save("emb.npy", runtime.load({str(art)!r}, "fp32").embed(np.load("images.npy")))
        assert "torch" not in sys.modules
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), want, atol=1e-5, rtol=0)

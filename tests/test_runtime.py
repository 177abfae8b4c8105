"""The torch-free device runtime: loads without torch, verifies artifacts, validates inputs, indexes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from monocon_edge.device import embedding_codes as codes, runtime
from monocon_edge.device.artifact import FP32_FILE, MANIFEST
from monocon_edge.device.errors import ArtifactError, MonoconError, RuntimeInputError
from monocon_edge.runs import load_run
from monocon_edge.exporting.fold import fold

ROOT = Path(__file__).resolve().parents[1]
# Installed before anything else in the child: any attempt to import the training stack fails.
TRAINING_STACK = ("torch", "torchvision", "sentence_transformers", "transformers", "sklearn")
BLOCK_TORCH = textwrap.dedent("""
    import os, sys
    BLOCKED = tuple(os.environ.get("MONOCON_TEST_BLOCK", "torch").split(","))
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, _NoTorch())
""")


def _digit_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)[..., None]


def _run_without_torch(tmp_path: Path, args: list[str], blocked: tuple[str, ...] = TRAINING_STACK
                       ) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "MONOCON_TEST_BLOCK": ",".join(blocked)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


def test_train_export_then_embed_and_search_without_torch(tiny_runs, digits_artifact, tmp_path) -> None:
    images = _digit_images()[:200]
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import sys, numpy as np
        try:
            import torch
            sys.exit("torch was importable")
        except ImportError:
            pass
        from monocon_edge.device import runtime
        model = runtime.load({str(digits_artifact)!r})
        emb = model.embed(np.load("images.npy"))
        np.save("emb.npy", emb)
        index = runtime.Index.for_model(model, codes="int8")
        index.add(emb[20:], ids=[str(i) for i in range(20, 200)])
        index.save("index.npz")
        ids, scores = runtime.Index.load("index.npz").search(emb[:20], top_k=3)
        np.save("top.npy", np.asarray(ids, dtype=int))
        assert "torch" not in sys.modules, "torch was imported"
        print("modules:", sorted(m for m in sys.modules if m.startswith("monocon_edge")))
    """))
    done = _run_without_torch(tmp_path, [str(script)])
    assert done.returncode == 0, done.stderr
    assert "monocon_edge.device.runtime" in done.stdout
    # The embeddings computed without torch equal the folded PyTorch model's on the same images.
    loaded = load_run(tiny_runs["none"])
    folded, _ = fold(loaded.model, loaded.pca, 16)
    with torch.no_grad():
        want = folded(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "emb.npy"), want, atol=1e-5, rtol=0)
    top = np.load(tmp_path / "top.npy")
    assert top.shape == (20, 3) and (top >= 20).all()


def test_device_script_without_torch(digits_artifact, tmp_path) -> None:
    np.save(tmp_path / "gallery.npy", _digit_images()[:100])
    np.save(tmp_path / "queries.npy", _digit_images()[100:103])
    script = str(ROOT / "export" / "monocon_device.py")
    art = str(digits_artifact)
    assert _run_without_torch(tmp_path, [script, "check", art]).returncode == 0
    built = _run_without_torch(tmp_path, [script, "index", art, "--images", "gallery.npy", "--out", "g.npz"])
    assert built.returncode == 0 and "index of 100 int8 vectors" in built.stdout, built.stderr
    asked = _run_without_torch(tmp_path, [script, "query", art, "--index", "g.npz", "--images", "queries.npy",
                                          "--top-k", "2"])
    assert asked.returncode == 0, asked.stderr
    assert len(asked.stdout.strip().splitlines()) == 3 and "gallery.npy[" in asked.stdout
    np.save(tmp_path / "rgb.npy", np.zeros((2, 8, 8, 3), np.uint8))
    bad = _run_without_torch(tmp_path, [script, "embed", art, "--images", "rgb.npy", "--out", "e.npy"])
    assert bad.returncode == 1 and bad.stderr.startswith("error: uint8 images must be") and "Traceback" not in bad.stderr


DEVICE = ROOT / "monocon_edge" / "device"
DEVICE_DEPENDENCIES = {"numpy", "onnxruntime", "tokenizers", "PIL"}


def test_device_package_imports_only_itself_and_its_runtime_dependencies() -> None:
    """Static check: device/ imports the standard library, numpy/onnxruntime/tokenizers/Pillow and itself only."""
    import ast

    outside = []
    for path in sorted(DEVICE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level != 1:
                    outside.append(f"{path.name}:{node.lineno} imports from outside device/ ({'.' * node.level})")
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in DEVICE_DEPENDENCIES:
                    outside.append(f"{path.name}:{node.lineno} imports {name}")
    assert not outside, outside


def test_device_package_imports_with_the_training_stack_uninstallable(tmp_path) -> None:
    """Every device module imports (installed, and as a copied folder) while torch & co. cannot be imported."""
    modules = sorted(p.stem for p in DEVICE.glob("*.py") if p.stem != "__init__")
    shutil.copytree(DEVICE, tmp_path / "monocon_edge_device", ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import importlib, sys
        for package in ("monocon_edge.device", "monocon_edge_device"):
            for name in {modules!r}:
                importlib.import_module(f"{{package}}.{{name}}")
        for blocked in {TRAINING_STACK!r}:
            assert blocked not in sys.modules, blocked
        print(sorted(m for m in sys.modules if m.startswith("monocon_edge")))
    """))
    done = _run_without_torch(tmp_path, [str(script)])
    assert done.returncode == 0, done.stderr
    loaded = set(eval(done.stdout))
    assert loaded <= {"monocon_edge", "monocon_edge.device", "monocon_edge_device"} | \
        {f"monocon_edge.device.{m}" for m in modules} | {f"monocon_edge_device.{m}" for m in modules}


def test_artifact_folder_copied_alone_runs_as_export_readme_says(digits_artifact, tmp_path) -> None:
    """export/README.md: the artifact folder alone (its monocon_runtime/ + monocon_device.py) runs with neither
    torch nor monocon_edge importable (tests/test_device_venv.py does the same in a fresh venv)."""
    ship = tmp_path / "ship" / "my-model"
    shutil.copytree(digits_artifact, ship)
    np.save(tmp_path / "gallery.npy", _digit_images()[:20])
    blocked = (*TRAINING_STACK, "monocon_edge")
    checked = _run_without_torch(tmp_path, [str(ship / "monocon_device.py"), "check"], blocked)
    assert checked.returncode == 0 and "manifest sealed" in checked.stdout, checked.stderr
    built = _run_without_torch(tmp_path, [str(ship / "monocon_device.py"), "index", str(ship), "--images",
                                          "gallery.npy", "--out", "g.npz"], blocked)
    assert built.returncode == 0 and "index of 20 int8 vectors" in built.stdout, built.stderr


def test_tampered_or_foreign_artifacts_are_refused(digits_artifact, tmp_path) -> None:
    copy = tmp_path / "a"
    shutil.copytree(digits_artifact, copy)
    data = bytearray((copy / FP32_FILE).read_bytes())
    data[100] ^= 0xFF
    (copy / FP32_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.onnx does not match its sha256"):
        runtime.load(copy)
    shutil.copyfile(digits_artifact / FP32_FILE, copy / FP32_FILE)
    runtime.load(copy)  # restored: loads again
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99"):
        runtime.load(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="not a monocon-edge artifact"):
        runtime.load(copy)
    with pytest.raises(ArtifactError, match="not found"):
        runtime.load(tmp_path / "missing")


@pytest.mark.parametrize("images, expected", [
    (np.zeros((8, 8, 1), np.uint8), "rank 4"),
    (np.zeros((0, 8, 8, 1), np.uint8), "empty batch"),
    (np.zeros((2, 9, 8, 1), np.uint8), "(N, 8, 8, 1)"),
    (np.zeros((2, 1, 8, 8), np.float64), "dtype float64"),
    (np.zeros((2, 8, 8, 1), np.int32), "dtype int32"),
    (np.zeros((2, 1, 8, 9), np.float32), "(N, 1, 8, 8)"),
    (np.full((2, 1, 8, 8), np.nan, np.float32), "NaN or inf"),
    (np.full((2, 1, 8, 8), np.inf, np.float32), "NaN or inf"),
    (np.full((2, 1, 8, 8), 255.0, np.float32), "must lie in [0.0, 1.0]"),
    ([[0.0]], "numpy array"),
])
def test_bad_images_raise_a_clear_runtime_error(digits_artifact, images, expected) -> None:
    model = runtime.load(digits_artifact, "int8")
    with pytest.raises(RuntimeInputError) as err:
        model.embed(images)
    assert expected in str(err.value)


def test_uint8_and_float_inputs_agree(digits_artifact) -> None:
    model = runtime.load(digits_artifact)
    images = _digit_images()[:10]
    pixels = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    a, b = model.embed(images), model.embed(pixels, batch_size=3)
    assert a.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("texts, expected", [("one sentence", "single string"), ([], "empty batch"),
                                             (["ok", 3], "all be strings"), (None, "list of strings")])
def test_bad_texts_raise_a_clear_runtime_error(texts, expected) -> None:
    with pytest.raises(RuntimeInputError, match=expected):
        runtime.check_texts(texts)


def test_runtime_errors_are_monocon_errors() -> None:
    # The CLI and the device script turn MonoconError into one line and exit 1: runtime errors must be one.
    assert issubclass(RuntimeInputError, MonoconError) and issubclass(ArtifactError, MonoconError)


def test_index_float_and_int8_codes(digits_artifact, tmp_path) -> None:
    model = runtime.load(digits_artifact)
    emb = model.embed(_digit_images()[:300])
    scales = model.code_scales
    # One vector is coded exactly as it is inside a batch (per-dimension scales, no batch statistics).
    np.testing.assert_array_equal(codes.encode(emb[:1], scales), codes.encode(emb, scales)[:1])
    error = np.abs(codes.decode(codes.encode(emb, scales), scales) - emb)
    inside = np.abs(emb) <= codes.CODE_MAX * scales  # beyond the calibrated range a code clips, by design
    assert inside.mean() > 0.9 and (error[inside] <= (scales / 2 + 1e-7)[np.nonzero(inside)[1]]).all()
    for kind in ("float32", "int8"):
        index = runtime.Index.for_model(model, codes=kind)
        index.add(emb, ids=[f"img{i}" for i in range(300)])
        ids, scores = index.search(emb[:5], top_k=4)
        assert [row[0] for row in ids] == [f"img{i}" for i in range(5)]
        assert scores.shape == (5, 4) and (np.diff(scores, axis=1) <= 1e-6).all()
        index.save(tmp_path / f"{kind}.npz")
        again = runtime.Index.load(tmp_path / f"{kind}.npz")
        assert again.ids == index.ids and again.kind == kind and again.fingerprint == model.fingerprint
        assert again.search(emb[:5], top_k=4)[0] == ids
    with pytest.raises(RuntimeInputError, match=r"\(N, 16\)"):
        index.add(emb[:, :8])
    with pytest.raises(RuntimeInputError, match="empty"):
        runtime.Index(16).search(emb[:1])
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(RuntimeInputError, match="cannot read index"):
        runtime.Index.load(tmp_path / "junk.npz")

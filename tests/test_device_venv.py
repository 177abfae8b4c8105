"""The artifact folder is all a device needs, tested for real: a fresh venv with only the folder's
requirements.txt installed (from the configured package index; no torch, no monocon-edge), the folder copied
elsewhere, then ``python monocon_device.py check / index / query / embed`` on real images (Tiny ImageNet, as PNG
files) and real sentences (SNLI / STS-B), with embeddings equal to the package runtime's within 1e-6."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monocon_edge.device import runtime
from monocon_edge.device.artifact import MANIFEST
from monocon_edge.exporting.build import ExportOptions, export_run
from monocon_edge.exporting.device_bundle import DEVICE_SCRIPT, REQUIREMENTS, RUNTIME_DIR
from monocon_edge.exporting.gates import GateThresholds
from monocon_edge.training.config import NLI_PAIRS, STSB_DEV, TINY_IMAGENET, override, preset
from monocon_edge.training.loop import train

pytestmark = pytest.mark.shared_data
LOOSE_DROP = GateThresholds(int8_max_recall_drop_points=100.0)
TOL = 1e-6


@pytest.fixture(scope="session")
def vision_artifact(shared_data: Path, tmp_path_factory) -> Path:
    """A 16-d fp32 + int8 artifact of a tiny Tiny ImageNet (32x32 RGB) run."""
    root = tmp_path_factory.mktemp("venv-vision")
    cfg = override(preset("tiny-imagenet-100", "none"), "data", path=str(shared_data / TINY_IMAGENET), max_train=400,
                   augment="none")
    cfg = override(override(cfg, "model", width=4), "optim", epochs=1, batch_size=64)
    run = train(cfg, root / "run").run_dir
    return export_run(run, ExportOptions(dims=16, int8=True, out=root / "art", thresholds=LOOSE_DROP)).path


@pytest.fixture(scope="session")
def text_artifact(shared_data: Path, tmp_path_factory) -> Path:
    """A 16-d fp32 artifact of a tiny MiniLM run on real SNLI pairs (STS-B dev rows for validation)."""
    root = tmp_path_factory.mktemp("venv-text")
    sts = root / "stsb_small.tsv"
    sts.write_text("\n".join((shared_data / STSB_DEV).read_text(encoding="utf-8").splitlines()[:21]) + "\n",
                   encoding="utf-8")
    cfg = override(preset("nli-pairs", "none"), "data", path=str(shared_data / NLI_PAIRS[2]), max_train=90,
                   val_path=str(sts))
    run = train(cfg, root / "run").run_dir
    cwd = os.getcwd()
    os.chdir(root)  # quantization / export tools must not drop files into the working directory
    try:
        return export_run(run, ExportOptions(dims=16, out=root / "art", thresholds=LOOSE_DROP)).path
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def device_python(vision_artifact: Path, text_artifact: Path, tmp_path_factory) -> Path:
    """Return the python of a fresh venv holding only what the two artifacts' requirements.txt name."""
    venv = tmp_path_factory.mktemp("device-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
         str(vision_artifact / REQUIREMENTS), "-r", str(text_artifact / REQUIREMENTS)],
        capture_output=True, text=True, timeout=900, env=_device_env())
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; "
                            "print([m for m in ('torch', 'monocon_edge', 'torchvision', 'sentence_transformers') "
                            "if u.find_spec(m)])"], capture_output=True, text=True, env=_device_env(), timeout=120,
                           cwd=venv)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr
    return python


def _device_env() -> dict[str, str]:
    """The environment of a device: no PYTHONPATH to this repository, no user site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _device(python: Path, folder: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([str(python), str(folder / DEVICE_SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd, env=_device_env(), timeout=300)
    return done


def _ship(artifact: Path, tmp_path: Path) -> Path:
    """Copy the artifact folder, alone, somewhere else (as one would to a device)."""
    dest = tmp_path / "device" / "my-model"
    shutil.copytree(artifact, dest)
    return dest


def test_the_folder_lists_runtime_script_and_requirements(vision_artifact: Path, text_artifact: Path) -> None:
    for art, extra, absent in ((vision_artifact, "Pillow", "tokenizers"), (text_artifact, "tokenizers", "Pillow")):
        files = runtime.manifest_of(art)["files"]
        assert {DEVICE_SCRIPT, REQUIREMENTS, f"{RUNTIME_DIR}/runtime.py", f"{RUNTIME_DIR}/cli.py",
                f"{RUNTIME_DIR}/__init__.py"} <= set(files)
        reqs = [line for line in (art / REQUIREMENTS).read_text().splitlines() if line and not line.startswith("#")]
        names = {r.split(">")[0].split("=")[0] for r in reqs}
        assert {"numpy", "onnxruntime", extra} <= names and absent not in names and "torch" not in names


def test_vision_artifact_on_a_torch_free_venv(device_python: Path, vision_artifact: Path, shared_data: Path,
                                              tmp_path: Path) -> None:
    from PIL import Image

    folder = _ship(vision_artifact, tmp_path)
    work = tmp_path / "work"
    (work / "gallery").mkdir(parents=True)
    (work / "queries").mkdir()
    with np.load(shared_data / TINY_IMAGENET) as z:  # the last images: not among the run's 400 training ones
        images = z["images"][-24:]
    for i, img in enumerate(images):
        Image.fromarray(img).save(work / "gallery" / f"img{i:02d}.png")
    for i in (3, 17):
        Image.fromarray(images[i]).save(work / "queries" / f"q{i:02d}.png")

    checked = _device(device_python, folder, ["check"], cwd=folder)  # from the artifact folder, no argument
    assert checked.returncode == 0 and "manifest sealed" in checked.stdout, checked.stderr
    assert not list(folder.rglob("__pycache__"))  # the folder stays as exported

    for precision in ("fp32", "int8"):
        emb = _device(device_python, folder, ["embed", str(folder), "--images", "gallery", "--precision", precision,
                                              "--out", f"emb-{precision}.npy"], cwd=work)
        assert emb.returncode == 0, emb.stderr
        want = runtime.load(vision_artifact, precision).embed(images)
        np.testing.assert_allclose(np.load(work / f"emb-{precision}.npy"), want, atol=TOL, rtol=0)

    built = _device(device_python, folder, ["index", str(folder), "--images", "gallery", "--out", "gallery.npz",
                                            "--precision", "fp32", "--codes", "float32"], cwd=work)
    assert built.returncode == 0 and "index of 24 float32 vectors" in built.stdout, built.stderr
    asked = _device(device_python, folder, ["query", str(folder), "--index", "gallery.npz", "--images", "queries",
                                            "--precision", "fp32", "--top-k", "3"], cwd=work)
    assert asked.returncode == 0, asked.stderr
    lines = asked.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["q03.png", "q17.png"]
    assert lines[0].split(": ")[1].startswith("img03.png (1.000)") and lines[1].split(": ")[1].startswith("img17.png")

    # Tampering is refused on the device too, in one line.
    manifest = (folder / MANIFEST).read_text()
    (folder / MANIFEST).write_text(manifest.replace('"dims": 16', '"dims": 8', 1))
    refused = _device(device_python, folder, ["check"], cwd=folder)
    assert refused.returncode == 1 and "'output.dims'" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_text_artifact_on_a_torch_free_venv(device_python: Path, text_artifact: Path, shared_data: Path,
                                            tmp_path: Path) -> None:
    folder = _ship(text_artifact, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    rows = (shared_data / STSB_DEV).read_text(encoding="utf-8").splitlines()[200:230]
    corpus = [row.split("\t")[-1].strip() for row in rows]
    corpus = [s for s in dict.fromkeys(corpus) if s]
    (work / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    (work / "queries.txt").write_text(f"{corpus[4]}\n{corpus[9]}\n", encoding="utf-8")

    checked = _device(device_python, folder, ["check"], cwd=folder)
    assert checked.returncode == 0 and "(text, fp32, 16 dims)" in checked.stdout, checked.stderr
    emb = _device(device_python, folder, ["embed", str(folder), "--texts", "corpus.txt", "--out", "emb.npy"], cwd=work)
    assert emb.returncode == 0, emb.stderr
    want = runtime.load(text_artifact).embed(corpus)
    np.testing.assert_allclose(np.load(work / "emb.npy"), want, atol=TOL, rtol=0)

    built = _device(device_python, folder, ["index", str(folder), "--texts", "corpus.txt", "--out", "corpus.npz",
                                            "--codes", "float32"], cwd=work)
    assert built.returncode == 0 and f"index of {len(corpus)} float32 vectors" in built.stdout, built.stderr
    asked = _device(device_python, folder, ["query", str(folder), "--index", "corpus.npz", "--texts", "queries.txt",
                                            "--top-k", "2"], cwd=work)
    assert asked.returncode == 0, asked.stderr
    lines = asked.stdout.strip().splitlines()
    assert lines[0].startswith("line 1: line 5 (1.000)") and lines[1].startswith("line 2: line 10 (1.000)")

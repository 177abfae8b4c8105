"""The sealed manifest: an edited field, an added or removed one, an edited seal or an unlisted model file makes
runtime.load, the device CLI's check and monocon-edge verify refuse the artifact, naming what differs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from typer.testing import CliRunner

from monocon_edge.cli import app
from monocon_edge.device import runtime
from monocon_edge.device.artifact import MANIFEST
from monocon_edge.device.cli import main as device_main
from monocon_edge.device.errors import ArtifactError
from monocon_edge.device.integrity import check_manifest, seal

runner = CliRunner()


def _scale(m: dict) -> None:
    m["embedding_codes"]["scales"][0] *= 2


def _dims(m: dict) -> None:
    m["output"]["dims"] = 8


def _shape(m: dict) -> None:
    m["input"]["shape"] = [1, 16, 16]


def _normalisation(m: dict) -> None:
    m["input"]["preprocessing"]["normalisation_in_graph"]["mean"] = [0.0]


def _model_entry(m: dict) -> None:
    m["models"]["int8"]["file"] = "model.onnx"


def _drop_model(m: dict) -> None:
    del m["models"]["int8"]


def _file_list(m: dict) -> None:
    del m["files"]["requirements.txt"]


def _l2(m: dict) -> None:
    m["output"]["l2_normalised"] = False


def _added(m: dict) -> None:
    m["output"]["scale"] = 2.0


def _removed(m: dict) -> None:
    del m["head_folded"]


# (edit, the field the refusal must name)
EDITS: list[tuple[Callable[[dict], None], str]] = [
    (_scale, "'embedding_codes.scales'"), (_dims, "'output.dims'"), (_shape, "'input.shape'"),
    (_normalisation, "'input.preprocessing'"), (_model_entry, "'models.int8'"), (_drop_model, "'models.int8'"),
    (_file_list, "'files.requirements.txt'"), (_l2, "'output.l2_normalised'"), (_added, "'output.scale'"),
    (_removed, "'head_folded'"),
]


def _edited_copy(artifact: Path, dest: Path, edit: Callable[[dict], None]) -> Path:
    shutil.copytree(artifact, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    edit(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return dest


def _refused_everywhere(folder: Path, expected: str, capsys: Any) -> None:
    with pytest.raises(ArtifactError) as err:
        runtime.load(folder)
    assert expected in str(err.value)
    capsys.readouterr()
    assert device_main(["check", str(folder)]) == 1
    captured = capsys.readouterr()
    assert expected in captured.err and len(captured.err.strip().splitlines()) == 1 and not captured.out
    result = runner.invoke(app, ["verify", str(folder)])
    assert result.exit_code == 1 and expected in result.output.replace("\n", "") and "Traceback" not in result.output


def test_an_untouched_artifact_is_sealed_and_passes(digits_artifact, capsys) -> None:
    manifest = json.loads((digits_artifact / MANIFEST).read_text())
    assert manifest["integrity"]["fields"]["embedding_codes.scales"]
    check_manifest(manifest)
    assert device_main(["check", str(digits_artifact)]) == 0
    assert "manifest sealed" in capsys.readouterr().out


@pytest.mark.parametrize("edit, field", EDITS, ids=[f for _, f in EDITS])
def test_an_edited_manifest_field_is_refused_naming_the_field(digits_artifact, tmp_path, capsys, edit, field) -> None:
    folder = _edited_copy(digits_artifact, tmp_path / "a", edit)
    _refused_everywhere(folder, field, capsys)


def test_an_edited_seal_is_refused(digits_artifact, tmp_path, capsys) -> None:
    def forge(m: dict) -> None:  # edit a field and its digest, but not the digest over the digests
        m["output"]["dims"] = 8
        m["integrity"]["fields"]["output.dims"] = "0" * 64

    _refused_everywhere(_edited_copy(digits_artifact, tmp_path / "a", forge), "integrity block itself was edited",
                        capsys)
    _refused_everywhere(_edited_copy(digits_artifact, tmp_path / "b", lambda m: m.pop("integrity")),
                        "no integrity block", capsys)


def test_a_resealed_edit_passes_the_seal_it_is_no_signature(digits_artifact) -> None:
    # Documented limit: whoever edits a field can recompute the digests (integrity, not authenticity).
    manifest = json.loads((digits_artifact / MANIFEST).read_text())
    manifest["output"]["dims"] = 8
    manifest["integrity"] = seal({k: v for k, v in manifest.items() if k != "integrity"})
    check_manifest(manifest)


@pytest.mark.parametrize("name", ["extra.onnx", "model.int4.onnx", "monocon_runtime/model.onnx", "model.onnx.data"])
def test_an_unlisted_model_file_is_refused(digits_artifact, tmp_path, capsys, name) -> None:
    folder = tmp_path / "a"
    shutil.copytree(digits_artifact, folder)
    (folder / name).write_bytes((folder / "model.onnx").read_bytes())
    _refused_everywhere(folder, f"{name} is a model file the manifest does not list", capsys)


def test_unlisted_caches_and_outputs_are_tolerated(digits_artifact, tmp_path) -> None:
    folder = tmp_path / "a"
    shutil.copytree(digits_artifact, folder)
    (folder / "monocon_runtime" / "__pycache__").mkdir()
    (folder / "monocon_runtime" / "__pycache__" / "runtime.cpython-311.pyc").write_bytes(b"\0")
    (folder / "gallery.npz").write_bytes(b"an index the user built here")
    venv_models = folder / ".venv" / "lib" / "site-packages" / "onnxruntime" / "data"  # a venv made inside it
    venv_models.mkdir(parents=True)
    (venv_models / "test.onnx").write_bytes(b"\0")
    runtime.load(folder)

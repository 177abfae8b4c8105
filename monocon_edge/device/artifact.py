"""The artifact directory format: names, manifest reading, checksum verification. Torch-free.

Layout::

    ARTIFACT/manifest.json      format + version, modality, input spec, output dims, quantization, gates, sha256s
    ARTIFACT/model.onnx         fp32 graph: model input -> (N, dims) L2-normalised embeddings
    ARTIFACT/model.int8.onnx    int8 graph (only when exported with --int8)
    ARTIFACT/model.int4.onnx    4-bit weight graph (only when exported with --int4)
    ARTIFACT/tokenizer.json ... tokenizer files (text artifacts)

``manifest["files"]`` maps every other file in the directory to its sha256; loading refuses a mismatch, a model
file the manifest does not list, and a manifest field edited after export (``integrity``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .integrity import check_manifest, unlisted_models

FORMAT_NAME = "monocon-edge-artifact"
# 2: sealed manifest (``integrity``), and the device runtime + script + requirements.txt inside the folder.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INT4_FILE = "model.int4.onnx"
OUTPUT_NAME = "embedding"
VISION_INPUTS = ("pixels",)
TEXT_INPUTS = ("input_ids", "attention_mask")
EXTERNAL_DATA_SUFFIX = ".data"


def external_data_path(graph: str | os.PathLike) -> Path:
    """Return the path of the external data file that belongs to the ONNX graph at ``graph`` (its name +
    EXTERNAL_DATA_SUFFIX, beside it: where the fp32 text graph keeps its re-laid-out weights)."""
    graph = Path(graph)
    return graph.with_name(graph.name + EXTERNAL_DATA_SUFFIX)


def graph_bytes(path: str | os.PathLike) -> int:
    """Return the bytes of the ONNX graph at ``path``: the file plus its external data file, when there is one."""
    data = external_data_path(path)
    return Path(path).stat().st_size + (data.stat().st_size if data.is_file() else 0)


def sha256_file(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(folder: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file under ``folder`` except the manifest, sorted by path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return out


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest of the artifact in ``folder`` after checking its format name and version."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"artifact directory not found: {folder}")
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a monocon-edge artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArtifactError(f"{path} is not a {FORMAT_NAME} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder} has artifact format version {version}; this runtime reads version {FORMAT_VERSION}"
        )
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise ArtifactError(f"{path} lists no files")
    check_manifest(manifest, str(path))
    return manifest


def verify_checksums(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Raise ArtifactError unless every file the manifest lists exists with the listed sha256, and no model file
    is there that it does not list."""
    folder = Path(folder)
    extra = unlisted_models(folder, manifest["files"])
    if extra:
        raise ArtifactError(f"{folder}: {extra[0]} is a model file the manifest does not list (added after export)")
    for rel, expected in manifest["files"].items():
        path = (folder / rel).resolve()
        if folder.resolve() not in path.parents:
            raise ArtifactError(f"manifest lists a file outside the artifact: {rel}")
        if not path.is_file():
            raise ArtifactError(f"{folder}: {rel} is missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{folder}: {rel} does not match its sha256 in the manifest (modified or corrupt)")


def open_artifact(folder: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest of ``folder`` once its format version and every checksum are verified."""
    manifest = read_manifest(folder)
    verify_checksums(folder, manifest)
    return manifest

"""A tamper-evident manifest: every manifest field and every file is fingerprinted at export. Torch-free.

``seal(manifest)`` returns the manifest's ``integrity`` block: a sha256 of each field (top-level keys, and the
keys one level below for dict fields, e.g. ``output.dims``, ``embedding_codes.scales``, ``input.shape``) and a
sha256 over those digests. ``check_manifest`` recomputes them and names the first field that differs;
``unlisted_models`` finds ONNX files in the folder that the manifest does not list (the file list itself is a
sealed field, so a file added to it is caught too).

This protects against accidents and casual edits (a hand-edited dims or code scale, a model file dropped in,
a file swapped): it is **not** a signature. Anyone who edits a field can recompute the digests; it proves
nothing about who made the artifact. Sign the folder (e.g. with minisign or sigstore) where that matters.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError

KEY = "integrity"
SCHEME = "sha256 of each manifest field (canonical JSON: sorted keys, no spaces), and of the field digests"
MODEL_SUFFIXES = (".onnx", ".ort", ".onnx.data")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode()


def _sha(value: Any) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


def _fields(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Yield (dotted name, value) of every sealed field: top-level keys, and one level below for dicts."""
    for key, value in manifest.items():
        if key == KEY:
            continue
        yield key, value  # the whole field: catches added or removed sub-keys too
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                yield f"{key}.{sub}", sub_value


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the ``integrity`` block for ``manifest`` (every field but ``integrity`` itself)."""
    fields = {name: _sha(value) for name, value in _fields(manifest)}
    return {"scheme": SCHEME, "fields": fields, "sha256": _sha(fields)}


def check_manifest(manifest: dict[str, Any], where: str = "manifest.json") -> None:
    """Raise ArtifactError naming the first field that differs from what was sealed at export."""
    block = manifest.get(KEY)
    if not isinstance(block, dict) or not isinstance(block.get("fields"), dict):
        raise ArtifactError(f"{where} has no integrity block: not written by monocon-edge export (or edited)")
    sealed = block["fields"]
    if block.get("sha256") != _sha(sealed):
        raise ArtifactError(f"{where}: the integrity block itself was edited (its field digests do not match)")
    now = dict(_fields(manifest))
    # Whole fields added or removed first, then sub-fields (so that the message names "output.dims", not "output").
    names = sorted(set(sealed) | set(now), key=lambda n: (0 if "." not in n and (n in now) != (n in sealed)
                                                          else 1 if "." in n else 2, n))
    for name in names:
        if name not in now:
            raise ArtifactError(f"{where}: field {name!r} was removed after export")
        if name not in sealed:
            raise ArtifactError(f"{where}: field {name!r} was added after export")
        if _sha(now[name]) != sealed[name]:
            raise ArtifactError(f"{where}: field {name!r} differs from the exported one (edited after export)")


def unlisted_models(folder: str | os.PathLike, listed: dict[str, str]) -> list[str]:
    """Return the model files (``.onnx``, ``.ort``, ``.onnx.data``) the manifest does not list, in the artifact's
    own folders: its top level and every folder holding a listed file (not, say, a venv made inside it)."""
    folder = Path(folder)
    own = {folder} | {(folder / rel).parent for rel in listed}
    found = []
    for sub in sorted(own):
        if not sub.is_dir():
            continue
        for p in sorted(sub.iterdir()):
            if p.is_file() and p.name.lower().endswith(MODEL_SUFFIXES):
                rel = p.relative_to(folder).as_posix()
                if rel not in listed:
                    found.append(rel)
    return found

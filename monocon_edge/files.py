"""Atomic file writes (``atomic_path``, from ``device.atomic``: a reader never sees a half-written file, and a
failed write leaves the old one intact), staging folders and the JSON-lines reader. Checksums are the artifact
format's: ``device.artifact.sha256_file``."""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .device.atomic import atomic_path, write_error
from .device.errors import MonoconError


def staging_dir(target: str | os.PathLike, parent: str | os.PathLike | None = None) -> Path:
    """Return a new hidden staging folder for ``target`` (``.NAME.PID.XXXX.tmp`` in ``parent``, default its parent).

    Staging folders of the same target left by processes that no longer run (kill -9, a power cut: no clean-up
    ran) are removed first, so they do not pile up; those of running processes are left alone.
    """
    target = Path(target)
    parent = Path(parent) if parent is not None else target.parent
    for old in parent.glob(f".{glob.escape(target.name)}.*.*.tmp"):
        pid = old.name[len(target.name) + 2:].split(".", 1)[0]
        if old.is_dir() and pid.isdigit() and not _process_runs(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise write_error(target, exc) from None


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Return the rows of a JSON-lines file (empty list when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def existing_file(path: str | os.PathLike, what: str = "data file") -> Path:
    """Return ``path`` as a Path; raise MonoconError("<what> not found: <path>") unless it is a file."""
    p = Path(path)
    if not p.is_file():
        raise MonoconError(f"{what} not found: {path}")
    return p

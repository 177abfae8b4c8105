"""Atomic writes for the device runtime (torch-free, shipped with every artifact): a reader never sees a
half-written file, and a failed write leaves no temporary file behind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import MonoconError


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then rename it onto ``path``; return None.

    Raises MonoconError when the folder does not exist or the file cannot be written (a full disk, no
    permission); the temporary file is removed on any failure.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise MonoconError(f"the folder for {path} does not exist")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MonoconError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

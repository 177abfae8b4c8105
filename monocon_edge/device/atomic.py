"""Atomic writes (a reader never sees a half-written file, a failed write leaves the old one intact and no temporary
file behind): the one mechanism of the whole project, kept in the torch-free device package so that it ships with
every artifact; ``monocon_edge.files`` re-exports ``atomic_path``."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import MonoconError


def write_error(path: str | os.PathLike, exc: OSError) -> MonoconError:
    """Return the one-line error for ``path`` that could not be written because of ``exc``."""
    return MonoconError(f"cannot write {path}: {exc.strerror or type(exc).__name__}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed.

    Raises MonoconError (``write_error``) when no temporary file can be made there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates owner-only files; give the result the permissions an ordinary file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then rename it onto ``path``; return None.

    Raises MonoconError when the folder does not exist or the file cannot be written (a full disk, no
    permission); the temporary file is removed on any failure.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise MonoconError(f"the folder for {path} does not exist")
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            write(fh)
    except OSError as exc:
        raise write_error(path, exc) from None

"""Staging folders (export and analyze write into one, then rename it): a dead process's leftovers are swept."""
from __future__ import annotations

import os
import subprocess

import pytest

from monocon_edge.files import staging_dir


def test_staging_dir_sweeps_dead_processes_leftovers_only(tmp_path) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()  # a pid whose process has ended without cleaning up: what kill -9 leaves behind
    dead = tmp_path / f".art.{ended.pid}.abcd1234.tmp"
    live = tmp_path / f".art.{os.getpid()}.efgh5678.tmp"
    other_target = tmp_path / f".artwork.{ended.pid}.ijkl9012.tmp"
    for folder in (dead, live, other_target):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
    atomic_write_leftover = tmp_path / f".art.{ended.pid}.mnop3456.tmp"  # a file: never swept
    atomic_write_leftover.write_text("x")

    new = staging_dir(tmp_path / "art")

    assert new.is_dir() and new.parent == tmp_path and new.name.startswith(f".art.{os.getpid()}.")
    assert not dead.exists()
    assert live.exists() and other_target.exists() and atomic_write_leftover.exists()


def test_an_atomic_write_where_no_file_can_be_made_is_a_clear_error() -> None:
    from monocon_edge.device.errors import MonoconError
    from monocon_edge.files import write_text_atomic

    # /proc exists but takes no new file: mkstemp fails before anything is written.
    with pytest.raises(MonoconError, match=r"^cannot write /proc/monocon-x\.txt: "):
        write_text_atomic("/proc/monocon-x.txt", "x")

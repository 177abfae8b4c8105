"""Where bench keeps the artifacts it exports from runs: its own cache folder, never inside a run directory.

``$MONOCON_BENCH_CACHE_DIR``, else ``~/.cache/monocon-edge/bench`` (``bench --cache-dir`` overrides both); one
folder per run and checkpoint, ``<run name>-<best.pt sha256[:12]>/d{N}[-int8]``, reused while valid.
"""
from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Return bench's export cache ($MONOCON_BENCH_CACHE_DIR, else ~/.cache/monocon-edge/bench)."""
    env = os.environ.get("MONOCON_BENCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "monocon-edge" / "bench"


def run_cache(root: Path | None, run_path: Path, checkpoint_sha256: str) -> Path:
    """Return (and create) the cache folder of one run's exports under ``root`` (None: the default cache)."""
    folder = (root or default_cache_dir()) / f"{Path(run_path).resolve().name}-{checkpoint_sha256[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

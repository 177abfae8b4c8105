"""A disk cache for encoder features of a frozen encoder, keyed by the encoder's weights and the inputs.

Text runs with a frozen MiniLM re-encode the same ~20k sentences in every run (baseline, MonoCon, std-MLP,
analysis, export): minutes on a CPU. The key hashes every weight tensor, so a changed encoder never hits.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..files import atomic_path


def cache_dir() -> Path | None:
    """Return the cache folder ($MONOCON_CACHE_DIR, else ~/.cache/monocon-edge/features); None if disabled."""
    env = os.environ.get("MONOCON_CACHE_DIR")
    if env == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "monocon-edge" / "features"


def fingerprint(module: torch.nn.Module) -> str:
    """Return a sha256 over the names, shapes, dtypes and bytes of ``module``'s state dict."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def key_for(*parts: str | list[str]) -> str:
    """Return a sha256 over string parts (lists are joined with a separator that cannot occur in text)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(("\x00".join(part) if isinstance(part, list) else part).encode("utf-8"))
        digest.update(b"\x01")
    return digest.hexdigest()


def load_or_compute(key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays stored under ``key``, or compute, store (atomically) and return them."""
    folder = cache_dir()
    if folder is None:
        return compute()
    path = folder / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed
    arrays = compute()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except OSError:
        pass  # an unwritable cache only costs time
    return arrays

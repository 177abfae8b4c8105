"""The run directory: config, metrics log, checkpoints, splits and PCA statistics of one training run.

Layout::

    RUN/config.json       resolved RunConfig
    RUN/metrics.jsonl     one row per evaluation (epoch, phase, loss, metrics)
    RUN/metrics.csv       the same rows as CSV (rewritten after each evaluation)
    RUN/last.pt           full training state (model, optimizer, scheduler, epoch, early stopping, RNG)
    RUN/best.pt           model weights at the best validation metric
    RUN/splits.npz        train/val/gallery/query indices
    RUN/pca.npz           PCA (mean, components, explained variance) of the normalised train embeddings
    RUN/summary.json      final metrics of the best model, d_eff, input spec, pointers to the files above
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from ..device.errors import MonoconError
from ..files import atomic_path, read_jsonl, write_json_atomic, write_text_atomic
from ..metrics import PCAStats

CHECKPOINT_FORMAT = 1
# What torch's zip writer says when a write comes up short (a full disk, a quota, a file-size limit).
_SHORT_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


class RunDir:
    """Paths and typed readers/writers for one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    last_path = property(lambda self: self.path / "last.pt")
    best_path = property(lambda self: self.path / "best.pt")
    pca_path = property(lambda self: self.path / "pca.npz")
    splits_path = property(lambda self: self.path / "splits.npz")
    summary_path = property(lambda self: self.path / "summary.json")

    @staticmethod
    def open_existing(path: str | Path) -> "RunDir":
        """Return the RunDir at ``path``; raise MonoconError if it is not a monocon-edge run directory."""
        run = RunDir(path)
        if not run.path.is_dir():
            raise MonoconError(f"run directory not found: {path}")
        if not run.config_path.is_file():
            raise MonoconError(f"{path} is not a monocon-edge run directory (no config.json)")
        return run

    def read_config(self) -> RunConfig:
        """Return the run's RunConfig."""
        try:
            raw = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise MonoconError(f"cannot read {self.config_path}: {type(exc).__name__}") from None
        return RunConfig.from_dict(raw)

    def write_config(self, cfg: RunConfig) -> None:
        """Write config.json atomically."""
        write_json_atomic(self.config_path, cfg.to_dict())

    def metrics(self) -> list[dict[str, Any]]:
        """Return the logged evaluation rows."""
        return read_jsonl(self.metrics_path)

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl and metrics.csv atomically with ``rows``."""
        write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path / "metrics.csv", buf.getvalue())

    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        """Write a checkpoint atomically (temp file + os.replace); raise MonoconError when the write fails.

        torch's zip writer reports a short write (a full disk, a quota) as ``RuntimeError: ... unexpected pos``;
        the partial temp file is removed and the message says where and how much room was left.
        """
        try:
            with atomic_path(path) as tmp:
                torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
        except (RuntimeError, OSError) as exc:
            if isinstance(exc, RuntimeError) and not any(m in str(exc) for m in _SHORT_WRITE):
                raise
            lines = str(exc).strip().splitlines()
            reason = lines[-1].strip(" .") if lines else type(exc).__name__
            kept = (f"; the last good checkpoint is kept: make room, then monocon-edge train --resume {self.path}"
                    if self.last_path.is_file() else "")
            raise MonoconError(f"cannot write checkpoint {path} ({reason}; {_free_space(path.parent)} free there: "
                               f"a full disk or a file-size limit?){kept}") from None

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Return a checkpoint's contents (loaded with weights_only=True); raise MonoconError if corrupt."""
        if not path.is_file():
            raise MonoconError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, Exception) as exc:
            raise MonoconError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
            raise MonoconError(f"{path} is not a monocon-edge checkpoint of format {CHECKPOINT_FORMAT}")
        return state

    def save_splits(self, arrays: dict[str, np.ndarray]) -> None:
        """Write splits.npz atomically."""
        _savez_atomic(self.splits_path, arrays)

    def save_pca(self, pca: PCAStats, d_eff: int) -> None:
        """Write pca.npz atomically (mean, components, explained_variance_ratio, d_eff)."""
        _savez_atomic(self.pca_path, {**pca.to_arrays(), "d_eff": np.asarray(d_eff)})

    def load_pca(self) -> tuple[PCAStats, int]:
        """Return the run's PCA statistics and d_eff."""
        if not self.pca_path.is_file():
            raise MonoconError(f"{self.path} has no pca.npz: the run did not finish")
        try:
            with np.load(self.pca_path, allow_pickle=False) as z:
                pca = PCAStats(z["mean"], z["components"], z["explained_variance_ratio"])
                return pca, int(z["d_eff"])
        except Exception as exc:
            raise MonoconError(f"cannot read {self.pca_path}: {type(exc).__name__}") from None

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically."""
        write_json_atomic(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        """Return summary.json; raise MonoconError if the run has not finished."""
        if not self.summary_path.is_file():
            raise MonoconError(f"{self.path} has no summary.json: the run did not finish")
        return json.loads(self.summary_path.read_text(encoding="utf-8"))


def _savez_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _free_space(folder: Path) -> str:
    """Return the free space of ``folder``'s file system in words ("unknown" where it cannot be read)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    return f"{free / 2**20:.0f} MiB"

"""Reopen a finished run: its config, summary and metric log, and its best model's embeddings recomputed."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .training.config import RunConfig
from .device.errors import MonoconError
from .training.run_dir import RunDir


@dataclass
class FinishedRun:
    """A run directory that has finished: config, summary and the metrics logged at each evaluation."""

    run: RunDir
    cfg: RunConfig
    summary: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def name(self) -> str:
        """Return the run directory's name."""
        return self.run.path.name


@dataclass
class RunEmbeddings:
    """A finished run's best model applied to its evaluation sets.

    ``features`` are the encoder outputs and ``embeddings`` the (un-normalised) head outputs, both keyed by
    evaluation set as the task's ``encode`` names them ({train, val} for vision; {train, val_a, val_b,
    sts_a, sts_b} for text).
    """

    task: Any  # VisionTask | TextTask
    features: dict[str, np.ndarray]
    embeddings: dict[str, np.ndarray]


def open_finished_run(path: str | Path) -> FinishedRun:
    """Return the FinishedRun at ``path``; raise MonoconError if it is not a run, or has not finished."""
    run = RunDir.open_existing(path)
    cfg = run.read_config()
    summary = run.read_summary()
    if not run.best_path.is_file():
        raise MonoconError(f"{path} has no best.pt: the run did not finish")
    return FinishedRun(run, cfg, summary, run.metrics())


def embed_run(finished: FinishedRun, device: str = "cpu", batch: int = 4096) -> RunEmbeddings:
    """Return the encoder features and head outputs of ``finished``'s best model on its evaluation sets."""
    import torch

    from .models.monocon import build_model
    from .training.loop import build_task, resolve_device

    cfg = finished.cfg
    if cfg.modality == "vision":
        # best.pt replaces every weight: never download or read the initial ones again.
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights="none"))
    model = build_model(cfg)
    state = finished.run.load_checkpoint(finished.run.best_path)["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MonoconError(f"best.pt of {finished.run.path} does not fit its config.json: {first}") from None
    dev = resolve_device(device)
    model.to(dev).eval()
    task = build_task(cfg, model)

    @torch.no_grad()
    def encode(*inputs: torch.Tensor) -> np.ndarray:
        return model.encoder(*(t.to(dev) for t in inputs)).float().cpu().numpy()

    @torch.no_grad()
    def head(x: np.ndarray) -> np.ndarray:
        parts = [model.head(torch.from_numpy(x[s:s + batch]).to(dev)).float().cpu().numpy()
                 for s in range(0, len(x), batch)]
        return np.concatenate(parts) if parts else x

    if cfg.modality == "text":
        from .training.feature_cache import fingerprint

        features = task.encode(encode, encoder_fingerprint=fingerprint(model.encoder))
    else:
        features = task.encode(encode)
    return RunEmbeddings(task, features, {k: head(v) for k, v in features.items()})

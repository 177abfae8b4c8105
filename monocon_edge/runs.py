"""A finished run, reopened: the one way to open one (export, verify, bench and analysis use it).

``open_finished_run`` reads what the run directory says (config, summary, metric log) and needs no torch;
``load_run`` also rebuilds the best model from ``best.pt`` with its PCA, d_eff and task (data + splits);
``embed_run`` applies that model to the task's evaluation sets. None of them imports the training loop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .device.artifact import sha256_file
from .device.errors import MonoconError
from .metrics import PCAStats
from .training.config import RunConfig
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
class LoadedRun(FinishedRun):
    """A finished run with its best model rebuilt (eval mode, on ``device``), PCA, d_eff and task."""

    model: Any  # models.monocon.MonoConModel
    pca: PCAStats
    d_eff: int
    task: Any  # training.vision_task.VisionTask | training.text_task.TextTask
    checkpoint_sha256: str
    # "pca" (project on the train PCA) or "prefix" (Matryoshka runs: keep the first d coordinates).
    truncation: str = "pca"
    device: str = "cpu"


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


def load_run(path: str | Path | FinishedRun, device: str = "cpu") -> LoadedRun:
    """Return the finished run at ``path`` with its best weights loaded on ``device``; raise MonoconError if it is
    incomplete, if best.pt does not fit its config, or if its data no longer gives the splits it trained with."""
    from .models.monocon import build_model
    from .training.distributed import resolve_device
    from .training.tasks import build_task

    finished = path if isinstance(path, FinishedRun) else open_finished_run(path)
    run, cfg = finished.run, finished.cfg
    pca, d_eff = run.load_pca()
    if not run.splits_path.is_file():
        raise MonoconError(f"{run.path} has no splits.npz: the run did not finish")
    best = run.load_checkpoint(run.best_path)
    # The encoder's initial weights are replaced by the checkpoint: never fetch ImageNet weights for that.
    if cfg.modality == "vision" and cfg.model.weights != "none":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights="none"))
    model = build_model(cfg)
    try:
        model.load_state_dict(best["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MonoconError(f"best.pt of {run.path} does not fit its config.json: {first}") from None
    model.to(resolve_device(device)).eval()
    task = build_task(cfg, model)
    _check_splits(run, task)
    truncation = finished.summary.get("truncation", cfg.truncation)
    if truncation == "prefix":
        # Prefix truncation is the same fold with P_d = the first d rows of the identity and mu = 0.
        d = int(model.d_enc)
        pca = PCAStats(np.zeros(d, np.float32), np.eye(d, dtype=np.float32), pca.explained_variance_ratio)
    return LoadedRun(run, cfg, finished.summary, finished.history, model, pca, d_eff, task,
                     sha256_file(run.best_path), truncation, device)


def _check_splits(run: RunDir, task: Any) -> None:
    """Refuse a run whose data changed since training (the gallery/query indices would point elsewhere)."""
    with np.load(run.splits_path, allow_pickle=False) as z:
        saved = {k: z[k] for k in z.files}
    for name, idx in task.splits.to_arrays().items():
        if name in saved and not np.array_equal(saved[name], idx):
            raise MonoconError(f"the data of {run.path} no longer gives the {name} split it trained with")


def embed_run(loaded: LoadedRun, batch: int = 4096) -> RunEmbeddings:
    """Return the encoder features and head outputs of ``loaded``'s best model on its evaluation sets."""
    import torch

    from .models.monocon import head_outputs
    from .training.tasks import encode_eval_sets

    model = loaded.model
    dev = next(model.parameters()).device

    @torch.no_grad()
    def encode(*inputs: torch.Tensor) -> np.ndarray:
        return model.encoder(*(t.to(dev) for t in inputs)).float().cpu().numpy()

    features = encode_eval_sets(loaded.task, encode, model.encoder)
    return RunEmbeddings(loaded.task, features, {k: head_outputs(model.head, v, batch) for k, v in features.items()})

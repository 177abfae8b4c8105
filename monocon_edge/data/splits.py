"""Seeded, stratified splits: train, selection (validation) and report parts, and the paper's 90/10
gallery/query split of train.

Three roles: ``train`` is what the model learns from; ``val`` (selection) decides every choice (early stopping,
learning rates, recipes); ``report`` (empty unless asked for) is only ever scored for the figures a run
reports, so that nothing reported was used for a choice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..device.errors import MonoconError


@dataclass(frozen=True)
class Splits:
    """Index arrays into the full data set. ``gallery`` and ``query`` partition ``train``; ``val`` is the
    selection part and ``report`` the held-out report part (empty when the run has none)."""

    train: np.ndarray
    val: np.ndarray
    gallery: np.ndarray
    query: np.ndarray
    report: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Return the index arrays by name (for np.savez)."""
        return {"train": self.train, "val": self.val, "gallery": self.gallery, "query": self.query,
                "report": self.report}


def _split(indices: np.ndarray, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (rest, held) with ``fraction`` of ``indices`` held out, stratified by ``labels`` when possible."""
    from sklearn.model_selection import train_test_split

    n_held = max(1, int(round(len(indices) * fraction)))
    if len(indices) - n_held < 1:
        raise MonoconError(f"too few examples ({len(indices)}) to split off {fraction:.0%}")
    stratify = None
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= 2 and n_held >= len(counts) and len(indices) - n_held >= len(counts):
            stratify = labels
    rest, held = train_test_split(indices, test_size=n_held, random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(rest), np.sort(held)


def make_splits(labels: np.ndarray | None, n: int, val_fraction: float, query_fraction: float, seed: int,
                report_fraction: float = 0.0) -> Splits:
    """Return train/val/gallery/query(/report) index splits of ``n`` examples, stratified by ``labels`` if given.

    ``val_fraction`` of the examples is held out; with ``report_fraction`` > 0 that share of the held-out part
    becomes the report part and the rest the selection part (``val``), so the train part is the same with or
    without a report part.
    """
    if n < 4:
        raise MonoconError(f"need at least 4 examples to split into train/val/gallery/query, got {n}")
    all_idx = np.arange(n)
    train, val = _split(all_idx, labels, val_fraction, seed)
    gallery, query = _split(train, None if labels is None else labels[train], query_fraction, seed + 1)
    report = np.zeros(0, dtype=np.int64)
    if report_fraction > 0:
        if len(val) < 2:
            raise MonoconError(f"too few held-out examples ({len(val)}) to split into selection and report parts")
        val, report = _split(val, None if labels is None else labels[val], report_fraction, seed + 2)
    return Splits(train=train, val=val, gallery=gallery, query=query, report=report)


def seeded_subset(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Return ``min(size, n)`` sorted indices drawn without replacement from ``range(n)`` by ``seed`` (all of them
    when ``size`` is None)."""
    if size is None or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Return sorted indices of a seeded subset of ``size`` examples with the label proportions kept."""
    if size >= len(labels):
        return np.arange(len(labels))
    _, held = _split(np.arange(len(labels)), labels, size / len(labels), seed)
    return held

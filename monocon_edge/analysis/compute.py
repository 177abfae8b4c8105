"""Pure computations behind `monocon-edge analyze`: truncation, feature-correlation clustering, d_eff
histories, held-out points for t-SNE. Arrays in, arrays and dataclasses out; no files, no printing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import metrics as M
from ..data.splits import seeded_subset

TRUNCATION_DIMS = M.TRUNCATION_DIMS
RECALL_KS = tuple(range(1, 11))
DEFF_KEYS = ("d_eff_encoder", "d_eff_head_raw", "d_eff")
# The metrics reported per truncation, by modality (keys of the task's ``evaluate`` output).
RETRIEVAL_METRICS = {"vision": ("knn5", "recall@1", "recall@5"), "text": ("spearman", "recall@1", "recall@5")}


def truncate(emb: dict[str, np.ndarray], method: str, dims: int, pca: M.PCAStats | None = None
             ) -> dict[str, np.ndarray]:
    """Return every array of ``emb`` compressed to ``dims`` coordinates and re-normalised.

    ``method`` is ``pca`` (projection on ``pca``, fitted on the normalised train embeddings) or ``prefix``
    (the first ``dims`` coordinates: Matryoshka).
    """
    if method == "pca":
        if pca is None:
            raise ValueError("PCA truncation needs the train PCA")
        return {k: M.pca_project(v, pca, dims) for k, v in emb.items()}
    if method == "prefix":
        return {k: M.prefix_truncate(v, dims) for k, v in emb.items()}
    raise ValueError(f"unknown truncation {method!r}: choose pca or prefix")


def truncation_dims(d_enc: int, dims: tuple[int, ...] = TRUNCATION_DIMS) -> list[int]:
    """Return the truncation sizes that actually compress a ``d_enc``-dim embedding (those < d_enc)."""
    return [d for d in dims if d < d_enc]


@dataclass(frozen=True)
class CorrelationClustering:
    """Agglomerative clustering of embedding features by their correlation over a sample of inputs."""

    corr: np.ndarray  # (D, D) Pearson correlation of the features; constant features correlate 0 with others
    linkage: np.ndarray  # scipy linkage matrix of the distance 1 - corr (average linkage)
    order: np.ndarray  # (D,) dendrogram leaf order: a permutation of range(D)

    def ordered(self) -> np.ndarray:
        """Return the correlation matrix with rows and columns in dendrogram order."""
        return self.corr[np.ix_(self.order, self.order)]


def feature_correlation(x: np.ndarray) -> np.ndarray:
    """Return the (D, D) Pearson correlation of the columns of ``x`` (N, D); NaN-free, unit diagonal."""
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(axis=0)
    std = np.sqrt((centered ** 2).mean(axis=0))
    live = std > 1e-12
    z = np.zeros_like(centered)
    z[:, live] = centered[:, live] / std[live]
    corr = (z.T @ z) / max(x.shape[0], 1)
    np.fill_diagonal(corr, 1.0)  # a dead feature still correlates 1 with itself
    return np.clip(corr, -1.0, 1.0)


def cluster_features(x: np.ndarray) -> CorrelationClustering:
    """Return the correlation clustering of the features (columns) of ``x`` (N, D), D >= 2."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] < 2:
        raise ValueError("clustering needs at least 2 inputs and 2 features")
    corr = feature_correlation(x)
    dist = np.clip(1.0 - corr, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(dist, checks=False), method="average")
    return CorrelationClustering(corr, z, leaves_list(z))


def deff_history(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Return {"epoch": [...], key: [...] for each of DEFF_KEYS} from the rows of metrics.jsonl.

    Evaluations that did not log a key give None at that position (older runs).
    """
    out: dict[str, list] = {"epoch": [int(r["epoch"]) for r in rows]}
    for key in DEFF_KEYS:
        out[key] = [r.get(key) for r in rows]
    return out


@dataclass(frozen=True)
class HeldOut:
    """Held-out embeddings for a 2-D map: ``labels`` are classes (vision) or pair ids (text, ``paired``)."""

    x: np.ndarray
    labels: np.ndarray
    paired: bool


def held_out_points(modality: str, emb: dict[str, np.ndarray], labels: np.ndarray | None = None,
                    max_points: int = 2000, seed: int = 0) -> HeldOut:
    """Return a fixed sample of the held-out embeddings (vision: val with ``labels``; text: both sides of
    the held-out pairs, labelled by pair)."""
    if modality == "vision":
        keep = seeded_subset(len(emb["val"]), max_points, seed)
        return HeldOut(M.l2_normalize(emb["val"][keep]), np.asarray(labels)[keep], False)
    keep = seeded_subset(len(emb["val_a"]), max_points // 2, seed)
    x = np.concatenate([emb["val_a"][keep], emb["val_b"][keep]])
    return HeldOut(M.l2_normalize(x), np.concatenate([keep, keep]), True)


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Return a 2-D t-SNE (cosine metric, PCA init, fixed seed) of the rows of ``x`` (N >= 3)."""
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if n < 3:
        raise ValueError("t-SNE needs at least 3 points")
    perplexity = float(min(30.0, (n - 1) / 3))
    # Exact gradients for small sets: faster there than Barnes-Hut, whose OpenMP threads also crawl on a
    # busy machine.
    method = "exact" if n <= 1000 else "barnes_hut"
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed, max_iter=500,
                method=method).fit_transform(np.asarray(x, dtype=np.float32))

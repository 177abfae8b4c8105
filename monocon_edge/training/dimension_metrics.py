"""Dimension figures both tasks share: the train PCA with d_eff and reconstruction RMSE, d_eff of the encoder
and raw head outputs, and the report figures at full width and truncated to ``PCA_DIMS``."""
from __future__ import annotations

import numpy as np

from .. import metrics as M

PCA_DIMS = M.TRUNCATION_DIMS


def fit_pca_figures(train: np.ndarray, held: np.ndarray) -> tuple[M.PCAStats, dict[str, float]]:
    """Return the PCA of normalised ``train`` and {d_eff, recon_rmse of ``held`` at d_eff}."""
    pca = M.fit_pca(train)
    d_eff = M.effective_dim(pca.explained_variance_ratio)
    return pca, {"d_eff": d_eff, "recon_rmse": M.pca_reconstruction_rmse(held, pca, max(d_eff, 1))}


def _d_eff(x: np.ndarray, normalize: bool = True) -> int:
    """Return d_eff of ``x`` (normalised first unless ``normalize`` is False)."""
    if normalize:
        return M.effective_dim(M.fit_pca(x).explained_variance_ratio)
    x = x.astype(np.float64)
    variances, _ = M.principal_axes(x - x.mean(axis=0))
    return M.effective_dim(variances)


def truncate(x: np.ndarray, pca: M.PCAStats, dims: int, truncation: str) -> np.ndarray:
    """Return ``x`` cut to ``dims``: its first PCA coordinates, or its first coordinates for ``truncation="prefix"``
    (Matryoshka runs); re-normalised either way."""
    return M.prefix_truncate(x, dims) if truncation == "prefix" else M.pca_project(x, pca, dims)


def report_figures(task, emb: dict[str, np.ndarray], pca: M.PCAStats, truncation: str) -> dict[str, float]:
    """Return ``task.report_metrics`` at full width and after truncation to 128/64/16 dims (PCA, and prefix for
    Matryoshka runs), the truncated ones suffixed ``_pca{d}`` / ``_prefix{d}`` (Recall@5 only at full width)."""
    out = task.report_metrics(emb)
    if not out:
        return out
    width = emb["train"].shape[1]
    for d in (d for d in PCA_DIMS if d < width):
        for cut in ("pca", "prefix") if truncation == "prefix" else ("pca",):
            if cut == "pca" and d > pca.components.shape[0]:
                continue
            small = {k: truncate(v, pca, d, cut) for k, v in emb.items()}
            out.update({f"{k}_{cut}{d}": v for k, v in task.report_metrics(small).items() if "@5" not in k})
    return out


def effective_dims_of(features: np.ndarray, head_raw: np.ndarray) -> dict[str, int]:
    """Return d_eff of the normalised encoder output and of the raw (un-normalised) head output."""
    return {"d_eff_encoder": _d_eff(features), "d_eff_head_raw": _d_eff(head_raw, normalize=False)}

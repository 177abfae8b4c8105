"""Which retrieval queries the fp32 graph itself decides: the int8 Recall@1 gates compare only those.

A query's fp32 *margin* is the cosine of its best same-label gallery item minus that of its best other-label
one. Where |margin| ≤ ``RESOLUTION`` the fp32 answer is below the precision of the export itself (the fp32 graph
may differ from PyTorch by ``--parity-atol`` = 1e-5 per coordinate), so whether int8 keeps it says nothing about
int8. Collapsed runs have many such queries: on the embedded default (MonoCon, d_eff 4, each class nearly one
point) 5 % of the queries had margins under 2e-6, and int8 codes "lost" 3 of 162 of them — 1.85 Recall@1 points
of rounding noise that failed the 1-point gate of ``monocon-edge export --dims 16 --int8``.
"""
from __future__ import annotations

import numpy as np

RESOLUTION = 1e-5
_CHUNK = 512


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fp32_margins(query: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray,
                 gallery_labels: np.ndarray) -> np.ndarray:
    """Return each query's best same-label cosine minus its best other-label cosine (±inf when a side is empty)."""
    q, g = _unit(query), _unit(gallery)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    out = np.empty(len(q))
    for s in range(0, len(q), _CHUNK):
        sims = q[s:s + _CHUNK] @ g.T
        same = gl[None, :] == ql[s:s + _CHUNK, None]
        out[s:s + _CHUNK] = np.where(same, sims, -np.inf).max(1) - np.where(same, -np.inf, sims).max(1)
    return out


def decided_queries(query: np.ndarray, gallery: np.ndarray, query_labels: np.ndarray, gallery_labels: np.ndarray,
                    resolution: float = RESOLUTION) -> np.ndarray:
    """Return a boolean mask of the queries whose fp32 margin exceeds ``resolution`` in absolute value."""
    return np.abs(fp32_margins(query, gallery, query_labels, gallery_labels)) > resolution

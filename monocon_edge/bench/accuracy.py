"""Quality and index cost of one artifact graph on an EvalSet, with float32 or int8 embedding codes. Torch-free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..device import embedding_codes
from .. import metrics as M
from .evaldata import EvalSet
from .timing import measure_latency

CODE_KINDS = ("float32", "int8")


@dataclass
class Embedded:
    """Artifact embeddings of an EvalSet: queries, gallery and (text) both STS sides."""

    query: np.ndarray
    gallery: np.ndarray
    sts_first: np.ndarray | None = None
    sts_second: np.ndarray | None = None


@dataclass(frozen=True)
class Quality:
    """Retrieval and task metrics of one (graph, codes) pair; ``knn5_accuracy`` vision, ``sts_spearman`` text."""

    recall_at_1: float
    recall_at_5: float
    knn5_accuracy: float | None
    sts_spearman: float | None


@dataclass(frozen=True)
class IndexCost:
    """Size of the gallery index and the latency of one query against it."""

    bytes_per_vector: int
    total_bytes: int
    vectors: int
    search_ms_p50: float
    search_ms_p95: float


def embed_eval_set(model: Any, data: EvalSet, batch: int) -> Embedded:
    """Return the embeddings of ``data`` produced by ``model`` (a runtime.Embedder: the ONNX artifact)."""
    out = Embedded(model.embed(data.query, batch), model.embed(data.gallery, batch))
    if data.sts is not None:
        out.sts_first, out.sts_second = model.embed(data.sts.first, batch), model.embed(data.sts.second, batch)
    return out


def _coded(x: np.ndarray | None, codes: str, scales: np.ndarray) -> np.ndarray | None:
    """Return ``x`` as the index would see it: unchanged (float32) or int8-encoded then decoded."""
    if x is None or codes == "float32":
        return x
    return embedding_codes.decode(embedding_codes.encode(x, scales), scales)


def quality(emb: Embedded, data: EvalSet, codes: str, scales: np.ndarray) -> Quality:
    """Return the Quality of ``emb`` stored as ``codes`` (float32 | int8 with per-dimension ``scales``)."""
    q, g = _coded(emb.query, codes, scales), _coded(emb.gallery, codes, scales)
    rec = M.recall_at_k(q, data.query_labels, g, data.gallery_labels, ks=(1, 5))
    knn = spearman = None
    if data.modality == "vision":
        knn = M.knn_accuracy(q, data.query_labels, g, data.gallery_labels, k=5)
    elif data.sts is not None:
        a, b = _coded(emb.sts_first, codes, scales), _coded(emb.sts_second, codes, scales)
        spearman = M.spearman(M.cosine_scores(a, b), data.sts.scores)
    return Quality(rec[1], rec[5], knn, spearman)


def index_cost(gallery: np.ndarray, query: np.ndarray, codes: str, scales: np.ndarray, warmup: int,
               iterations: int) -> IndexCost:
    """Return the IndexCost of a runtime.Index holding ``gallery`` as ``codes``; one query per timed search."""
    from ..device.runtime import Index

    index = Index(gallery.shape[1], codes, scales if codes == "int8" else None)
    index.add(gallery)
    one = query[:1]
    lat = measure_latency(lambda: index.search(one, top_k=5), warmup, iterations)
    return IndexCost(index.nbytes // len(index), index.nbytes, len(index), lat.p50_ms, lat.p95_ms)

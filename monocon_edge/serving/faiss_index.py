"""A FAISS index of artifact embeddings for servers: the numpy ``runtime.Index`` API on flat, HNSW or IVF storage.

The device runtime keeps its numpy index (torch- and faiss-free); this module is what a server uses for large
galleries. Same constructor arguments, ``add`` / ``search`` / ``save`` / ``load``, the same ids and scores, the
same ``RuntimeInputError`` messages as ``runtime.Index`` (it subclasses it for the input checks), plus a choice of
FAISS structure:

- ``index="flat"``: exact search (``IndexFlatIP`` / ``IndexScalarQuantizer``). Returns what ``runtime.Index``
  returns: the same top-k ids and cosine scores (to float rounding).
- ``index="hnsw"``: ``IndexHNSWFlat`` / ``IndexHNSWSQ`` (params ``M``, ``ef_construction``, ``ef_search``).
- ``index="ivf"``: ``IndexIVFFlat`` / ``IndexIVFScalarQuantizer`` with ``by_residual=False`` (params ``nlist``,
  ``nprobe``, ``train_size``); the coarse quantizer is trained by spherical k-means on the first ``add``.

**int8 codes are the artifact's codes.** A vector is coded with ``codes.encode(x, manifest scales)`` — exactly as a
device codes it — and FAISS stores that code: its 8-bit scalar quantizer (``QT_8bit``, 256 levels over
``[vmin, vmin + vdiff]``, code = floor(255·(x − vmin)/vdiff), decoded at the level's centre) is given the fixed
per-dimension range ``vmin = −127.5·scale``, ``vdiff = 255·scale`` instead of training one, and is fed the decoded
vector ``code·scale``. Then FAISS's level is ``code + 127`` (each input sits half a level from both edges, so float
rounding cannot move it) and FAISS decodes it back to ``code·scale``: one byte per dimension, no copy of the codes
elsewhere. ``stored_codes()`` reads the codes back out of FAISS (tests compare them with the device's).

Scores are those of ``runtime.Index``: the cosine between the coded query and the decoded gallery vector, both
L2-normalised. FAISS ranks by the inner product with the *unnormalised* decoded vector (its norm is 1 ± the
quantization error), so int8 searches fetch extra candidates with their decoded vectors and rescore them. For
``flat`` (``exact=1``, the default) the scan is repeated with 4x the candidates while a vector outside them could
still beat the k-th rescored one (bounded by the smallest and largest decoded norm in the index), so the result
is exact — usually one scan on small galleries, two or three on millions of vectors (dense neighbourhoods). With
``exact=0``, and for ``hnsw``/``ivf``, the ``max(2k, k + 16)`` best candidates in FAISS's order are rescored once
(the top-k can then differ from the numpy index's in near-ties; approximate indexes are approximate anyway).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..device import embedding_codes
from ..device.artifact import FP32_FILE, read_manifest
from ..device.errors import MonoconError, RuntimeInputError
from ..device.runtime import Index

FAISS_INDEX_FORMAT = 1
INDEX_TYPES = ("flat", "hnsw", "ivf")
DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "flat": {"exact": 1},  # int8 only: 1 = the numpy index's exact cosine top-k (may rescan), 0 = one scan
    "hnsw": {"M": 16, "ef_construction": 40, "ef_search": 64},
    # nlist 0: chosen at the first add as ~sqrt(N) (a power of two, at least 1); train_size 0: 64·nlist
    "ivf": {"nlist": 0, "nprobe": 16, "train_size": 0},
}
RESCORE_MIN_EXTRA = 16


def import_faiss():
    """Return the faiss module; raise MonoconError with the install line when it is missing."""
    try:
        import faiss
    except ImportError:
        raise MonoconError("the FAISS index needs faiss-cpu: pip install 'monocon-edge[server]'") from None
    return faiss


def set_threads(threads: int) -> None:
    """Set FAISS's OpenMP thread count (searches and builds of this process)."""
    import_faiss().omp_set_num_threads(int(threads))


def check_params(index: str, params: dict[str, Any] | None) -> dict[str, int]:
    """Return the full parameter dict of ``index`` (defaults filled in); raise RuntimeInputError for a bad one."""
    if index not in INDEX_TYPES:
        raise RuntimeInputError(f"index must be one of {', '.join(INDEX_TYPES)}, got {index!r}")
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULT_PARAMS[index]))
    if unknown:
        known = ", ".join(DEFAULT_PARAMS[index]) or "none"
        raise RuntimeInputError(f"unknown {index} parameter(s) {', '.join(unknown)} (known: {known})")
    out = dict(DEFAULT_PARAMS[index], **given)
    for key, value in out.items():
        minimum = 0 if key in ("nlist", "train_size", "exact") else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise RuntimeInputError(f"{index} parameter {key} must be an integer >= {minimum}, got {value!r}")
        out[key] = int(value)
    return out


def auto_nlist(n: int) -> int:
    """Return the IVF list count used when none is given: the power of two nearest sqrt(n), at least 1."""
    return max(1, 2 ** int(round(np.log2(max(np.sqrt(max(n, 1)), 1.0)))))


def sq_ranges(scales: np.ndarray) -> np.ndarray:
    """Return FAISS QT_8bit's trained vector (vmin then vdiff per dim) that reproduces the artifact's codes."""
    s = np.asarray(scales, dtype=np.float32)
    return np.concatenate([-127.5 * s, 255.0 * s]).astype(np.float32)


class FaissIndex(Index):
    """A cosine index of float32 embeddings or the artifact's int8 codes, stored in FAISS, with string ids.

    ``dims``, ``kind`` (float32 | int8), ``scales`` and ``fingerprint`` as for ``runtime.Index``; ``index`` is
    flat | hnsw | ivf and ``params`` its parameters (see ``DEFAULT_PARAMS``; ``self.params`` records what was used).
    """

    def __init__(self, dims: int, kind: str = "float32", scales: np.ndarray | None = None, fingerprint: str = "",
                 index: str = "flat", params: dict[str, Any] | None = None) -> None:
        if not isinstance(dims, (int, np.integer)) or isinstance(dims, bool) or dims < 1:
            raise RuntimeInputError(f"dims must be a positive integer, got {dims!r}")
        super().__init__(int(dims), kind, scales, fingerprint)
        if self.scales is not None and not (np.isfinite(self.scales).all() and (self.scales > 0).all()):
            raise RuntimeInputError("int8 scales must be finite and > 0")
        self.index_type = index
        self.params = check_params(index, params)
        self._data = None  # the vectors live in FAISS
        self._ids: list[str] | None = None  # None: ids are the running numbers "0".."n-1"
        self._n = 0
        self._norm_range = (np.inf, 0.0)  # smallest / largest norm of a decoded int8 vector in the index
        self._faiss = None if index == "ivf" else self._new_faiss()

    # ----- construction ---------------------------------------------------------------------------------------
    @staticmethod
    def for_model(model: Any, codes: str = "float32", index: str = "flat",
                  params: dict[str, Any] | None = None) -> "FaissIndex":
        """Return an empty index for ``model``'s (a runtime.Embedder) embeddings; int8 uses the manifest's scales."""
        return FaissIndex(model.dims, codes, model.code_scales if codes == "int8" else None, model.fingerprint,
                          index, params)

    @staticmethod
    def for_artifact(folder: str | os.PathLike, codes: str = "float32", index: str = "flat",
                     params: dict[str, Any] | None = None) -> "FaissIndex":
        """Return an empty index for the embeddings of the artifact in ``folder`` (reads only its manifest)."""
        manifest = read_manifest(folder)
        dims = int(manifest["output"]["dims"])
        scales = np.asarray(manifest["embedding_codes"]["scales"], dtype=np.float32) if codes == "int8" else None
        return FaissIndex(dims, codes, scales, manifest["files"][FP32_FILE], index, params)

    @staticmethod
    def build(folder: str | os.PathLike, embeddings: np.ndarray, ids: Sequence[str] | None = None,
              codes: str = "float32", index: str = "flat", params: dict[str, Any] | None = None) -> "FaissIndex":
        """Return an index for the artifact in ``folder`` holding ``embeddings`` (that artifact's, (N, dims))."""
        out = FaissIndex.for_artifact(folder, codes, index, params)
        out.add(embeddings, ids)
        return out

    def _new_faiss(self, nlist: int = 0):
        faiss = import_faiss()
        d, ip, p = self.dims, faiss.METRIC_INNER_PRODUCT, self.params
        qt = faiss.ScalarQuantizer.QT_8bit
        if self.index_type == "flat":
            out = faiss.IndexFlatIP(d) if self.kind == "float32" else faiss.IndexScalarQuantizer(d, qt, ip)
        elif self.index_type == "hnsw":
            out = (faiss.IndexHNSWFlat(d, p["M"], ip) if self.kind == "float32"
                   else faiss.IndexHNSWSQ(d, qt, p["M"], ip))
            out.hnsw.efConstruction = p["ef_construction"]
            out.hnsw.efSearch = p["ef_search"]
        else:
            quantizer = faiss.IndexFlatIP(d)
            out = (faiss.IndexIVFFlat(quantizer, d, nlist, ip) if self.kind == "float32"
                   else faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qt, ip, False))
            out.own_fields = True
            quantizer.this.disown()
            out.nprobe = min(p["nprobe"], nlist)
        if self.kind == "int8":
            self._sq_of(out, faiss).trained.resize(0)
            faiss.copy_array_to_vector(sq_ranges(self.scales), self._sq_of(out, faiss).trained)
            if self.index_type == "hnsw":
                faiss.downcast_index(out.storage).is_trained = True
            if self.index_type != "ivf":
                out.is_trained = True
        return out

    @staticmethod
    def _sq_of(index: Any, faiss: Any):
        if isinstance(index, faiss.IndexHNSW):
            return faiss.downcast_index(index.storage).sq
        return index.sq

    def _train_ivf(self, vectors: np.ndarray) -> None:
        """Create the IVF index and train its coarse quantizer (spherical k-means) on ``vectors``."""
        faiss = import_faiss()
        nlist = self.params["nlist"] or auto_nlist(len(vectors))
        if len(vectors) < nlist:
            raise RuntimeInputError(f"an ivf index with nlist={nlist} needs at least {nlist} vectors in its first "
                                    f"add to train on, got {len(vectors)}")
        size = self.params["train_size"] or 64 * nlist
        sample = vectors
        if len(vectors) > size:
            sample = vectors[np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))]
        km = faiss.Kmeans(self.dims, nlist, niter=20, seed=1234, spherical=True,
                          max_points_per_centroid=max(size // nlist, 1), verbose=False)
        km.train(np.ascontiguousarray(sample, dtype=np.float32))
        index = self._new_faiss(nlist)
        index.quantizer.add(km.centroids)
        index.is_trained = True  # the SQ ranges are fixed by the artifact: only the quantizer is trained
        self.params["nlist"] = nlist
        self.params["train_size"] = len(sample)
        self._faiss = index

    # ----- storage --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> list[str]:  # type: ignore[override]
        """Return the ids of the stored vectors in order (running numbers when none were given)."""
        return list(self._ids) if self._ids is not None else [str(i) for i in range(self._n)]

    @ids.setter
    def ids(self, value: list[str]) -> None:
        self._ids = list(value) if value else None

    def _id(self, j: int) -> str:
        return self._ids[j] if self._ids is not None else str(j)

    @property
    def nbytes(self) -> int:
        """Return the bytes the stored vectors take (float32 or one byte per dim; ids and structure not counted)."""
        return self._n * self.dims * (4 if self.kind == "float32" else 1)

    @property
    def structure_bytes(self) -> int:
        """Return the bytes FAISS holds in memory for the index: vectors + graph links / list ids / centroids."""
        if self._faiss is None:
            return 0
        faiss = import_faiss()
        total = self.nbytes
        if self.index_type == "hnsw":
            h = self._faiss.hnsw
            total += h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        elif self.index_type == "ivf":
            total += self._n * 8 + self._faiss.nlist * self.dims * 4  # list ids (int64) + centroids
        return int(total)

    def _to_faiss(self, x: np.ndarray) -> np.ndarray:
        """Return what FAISS is given for (N, dims) float32 ``x``: the unit vector, or the decoded int8 code."""
        if self.kind == "int8":
            return embedding_codes.decode(embedding_codes.encode(x, self.scales), self.scales)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def add(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> None:
        """Add (N, dims) embeddings with their ids (default: running numbers as strings)."""
        x = self._check(embeddings, "embeddings")
        if ids is not None:
            ids = [str(i) for i in ids]
            if len(ids) != x.shape[0]:
                raise RuntimeInputError(f"{x.shape[0]} embeddings but {len(ids)} ids")
        chunk = 1 << 18
        if self._faiss is None:
            self._train_ivf(self._to_faiss(x))
        for s in range(0, x.shape[0], chunk):
            v = np.ascontiguousarray(self._to_faiss(x[s:s + chunk]))
            if self.kind == "int8":
                norms = np.linalg.norm(v, axis=1)
                self._norm_range = (min(self._norm_range[0], float(norms.min())),
                                    max(self._norm_range[1], float(norms.max())))
            self._faiss.add(v)
        if ids is not None and self._ids is None:
            self._ids = [str(i) for i in range(self._n)]
        if self._ids is not None:
            self._ids += ids if ids is not None else [str(self._n + i) for i in range(x.shape[0])]
        self._n += x.shape[0]

    def stored_codes(self) -> np.ndarray:
        """Return the (N, dims) int8 codes FAISS holds, in add order (int8 indexes only)."""
        if self.kind != "int8":
            raise RuntimeInputError("stored_codes: this index holds float32 vectors, not int8 codes")
        faiss = import_faiss()
        if self._faiss is None or not self._n:
            return np.zeros((0, self.dims), np.int8)
        if self.index_type == "ivf":
            raw = np.zeros((self._n, self.dims), np.uint8)
            inv = self._faiss.invlists
            for lst in range(self._faiss.nlist):
                size = inv.list_size(lst)
                if size:
                    ids = faiss.rev_swig_ptr(inv.get_ids(lst), size).copy()
                    raw[ids] = faiss.rev_swig_ptr(inv.get_codes(lst), size * self.dims).reshape(size, self.dims)
        else:
            flat = faiss.downcast_index(self._faiss.storage) if self.index_type == "hnsw" else self._faiss
            raw = faiss.vector_to_array(flat.codes).reshape(self._n, self.dims)
        return (raw.astype(np.int16) - 127).astype(np.int8)

    # ----- search ---------------------------------------------------------------------------------------------
    def set_search_params(self, **params: int) -> None:
        """Change search-time parameters (flat: exact; hnsw: ef_search; ivf: nprobe) of a built or loaded index."""
        allowed = {"hnsw": ("ef_search",), "ivf": ("nprobe",), "flat": ("exact",)}[self.index_type]
        bad = sorted(set(params) - set(allowed))
        if bad:
            raise RuntimeInputError(f"{self.index_type} has no search parameter {', '.join(bad)}"
                                    f" (it has: {', '.join(allowed) or 'none'})")
        merged = check_params(self.index_type, dict(self.params, **params))
        self.params = merged
        if self._faiss is not None:
            if self.index_type == "hnsw":
                self._faiss.hnsw.efSearch = merged["ef_search"]
            elif self.index_type == "ivf":
                self._faiss.nprobe = min(merged["nprobe"], self._faiss.nlist)

    def search(self, queries: np.ndarray, top_k: int = 5) -> tuple[list[list[str]], np.ndarray]:
        """Return (ids (Q, k), cosine scores (Q, k) float32), best first; queries are coded like the index."""
        top, scores = self.search_positions(queries, top_k)
        return [[self._id(j) for j in row] for row in top], scores

    def search_positions(self, queries: np.ndarray, top_k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Return (positions (Q, k) int64 in add order, cosine scores (Q, k) float32): ``search`` without ids.

        Approximate indexes may find fewer than k vectors for a query: those slots hold position -1, score -inf.
        """
        if not len(self):
            raise RuntimeInputError("the index is empty: add embeddings first")
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
            raise RuntimeInputError(f"top_k must be a positive integer, got {top_k!r}")
        q = self._to_faiss(self._check(queries, "queries"))
        if self.kind == "int8":
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = min(int(top_k), len(self))
        if self.kind == "float32":
            scores, top = self._faiss.search(q, k)
            return top.astype(np.int64), np.where(top >= 0, scores, -np.inf).astype(np.float32)
        return self._search_rescored(q, k)

    def _search_rescored(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        fetch = min(n, max(2 * k, k + RESCORE_MIN_EXTRA))
        out_pos = np.full((len(q), k), -1, dtype=np.int64)
        out_sc = np.full((len(q), k), -np.inf, dtype=np.float32)
        todo = np.arange(len(q))
        lo, hi = self._norm_range
        while len(todo):
            ip, pos, vec = self._faiss.search_and_reconstruct(q[todo], fetch)
            norms = np.maximum(np.linalg.norm(vec, axis=2), 1e-12)
            cos = np.where(pos >= 0, np.einsum("qd,qkd->qk", q[todo], vec) / norms, -np.inf)
            order = np.argsort(-cos, axis=1, kind="stable")[:, :k]
            out_pos[todo] = np.take_along_axis(pos, order, axis=1)
            out_sc[todo] = np.take_along_axis(cos, order, axis=1)
            if self.index_type != "flat" or not self.params["exact"] or fetch >= n:
                break
            # Exact search: a vector outside the fetched list has ip <= the last fetched ip, so its cosine is at
            # most last / (smallest decoded norm) (or / largest norm when last < 0). Scan again with 4x the
            # candidates for the queries where that bound could still beat the k-th rescored cosine.
            last = ip[:, -1]
            bound = np.where(last >= 0, last / lo, last / hi)
            todo = todo[out_sc[todo, -1] <= bound]
            fetch = min(n, fetch * 4)
        return out_pos, out_sc

    # ----- files ----------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (one .npz: the FAISS index bytes + ids and metadata) atomically."""
        faiss = import_faiss()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        meta = {"format": FAISS_INDEX_FORMAT, "kind": self.kind, "dims": self.dims, "index": self.index_type,
                "params": self.params, "count": self._n, "fingerprint": self.fingerprint,
                "norm_range": [float(v) for v in self._norm_range] if self.kind == "int8" and self._n else None}
        blob = faiss.serialize_index(self._faiss) if self._faiss is not None else np.zeros(0, np.uint8)
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.asarray(json.dumps(meta)), faiss=blob,
                     scales=self.scales if self.scales is not None else np.zeros(0, np.float32),
                     ids=np.asarray(self._ids if self._ids is not None else [], dtype=np.str_))
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike) -> "FaissIndex":
        """Return the FAISS index saved at ``path``; raise RuntimeInputError if it is not one."""
        faiss = import_faiss()
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FAISS_INDEX_FORMAT:
                    raise RuntimeInputError(f"{path}: FAISS index format {meta.get('format')}, "
                                            f"expected {FAISS_INDEX_FORMAT}")
                scales = z["scales"] if meta["kind"] == "int8" else None
                out = FaissIndex(int(meta["dims"]), meta["kind"], scales, meta["fingerprint"], meta["index"],
                                 meta["params"])
                blob, ids = z["faiss"], [str(i) for i in z["ids"]]
        except RuntimeInputError:
            raise
        except Exception as exc:
            raise RuntimeInputError(f"cannot read FAISS index {path}: {type(exc).__name__}") from None
        count = int(meta["count"])
        if blob.size:
            try:
                out._faiss = faiss.deserialize_index(blob)
            except Exception as exc:
                raise RuntimeInputError(f"{path}: the FAISS index bytes do not load: {type(exc).__name__}") from None
        if (out._faiss.ntotal if out._faiss is not None else 0) != count or (ids and len(ids) != count) \
                or (out._faiss is not None and out._faiss.d != out.dims):
            raise RuntimeInputError(f"{path}: the FAISS index, its ids and its metadata disagree")
        out._n, out._ids = count, (ids or None)
        if meta.get("norm_range"):
            out._norm_range = tuple(meta["norm_range"])
        return out

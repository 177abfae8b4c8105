"""The device runtime: load an artifact, embed images or sentences, build and search an index.

Needs only numpy and onnxruntime (plus ``tokenizers`` for text artifacts): it must never import torch, nor
anything outside ``monocon_edge/device``. ``load`` verifies the artifact's format version and every file's sha256 first.

    from monocon_edge.device import runtime
    model = runtime.load("artifacts/digits-d8")            # fp32; precision="int8" for model.int8.onnx
    index = runtime.Index.for_model(model, codes="int8")    # int8 codes with the manifest's scales
    index.add(model.embed(gallery_images), ids=names)
    ids, scores = index.search(model.embed(query_images), top_k=5)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import embedding_codes
from .artifact import FP32_FILE, OUTPUT_NAME, open_artifact, read_manifest
from .atomic import write_atomic
from .errors import ArtifactError, RuntimeInputError

DEFAULT_BATCH = 64
INDEX_FORMAT = 1


class Embedder:
    """One loaded artifact graph: ``embed`` turns images or sentences into (N, dims) L2-normalised float32."""

    def __init__(self, folder: Path, manifest: dict[str, Any], precision: str, threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        self.folder = folder
        self.manifest = manifest
        self.precision = precision
        self.modality: str = manifest["modality"]
        self.dims: int = int(manifest["output"]["dims"])
        entry = manifest["models"].get(precision)
        if entry is None:
            have = ", ".join(sorted(manifest["models"]))
            raise ArtifactError(f"{folder} has no {precision} model (it has: {have})")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(folder / entry["file"]), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:
            raise ArtifactError(f"onnxruntime cannot load {entry['file']}: {type(exc).__name__}") from None
        self.input_spec: dict[str, Any] = manifest["input"]
        self.tokenizer = _load_tokenizer(folder, self.input_spec) if self.modality == "text" else None

    @property
    def code_scales(self) -> np.ndarray:
        """Return the manifest's per-dimension int8 code scales (dims,)."""
        return np.asarray(self.manifest["embedding_codes"]["scales"], dtype=np.float32)

    @property
    def fingerprint(self) -> str:
        """Return the sha256 of the fp32 graph: an index records it to refuse vectors from another model."""
        return self.manifest["files"][FP32_FILE]

    def embed(self, inputs: Any, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Return (N, dims) float32 embeddings of images (vision) or a list of sentences (text)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise RuntimeInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if self.modality == "vision":
            return self._embed_images(inputs, batch_size)
        return self._embed_texts(inputs, batch_size)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Return the graph output for one batch of already-prepared model inputs (no validation)."""
        return self.session.run([OUTPUT_NAME], feeds)[0]

    # ----- vision ---------------------------------------------------------------------------------------------
    def _embed_images(self, images: Any, batch_size: int) -> np.ndarray:
        pixels = check_images(images, self.input_spec)
        out = [self.run({"pixels": pixels[s:s + batch_size]}) for s in range(0, pixels.shape[0], batch_size)]
        return _finite_output(np.concatenate(out))

    # ----- text -----------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Return padded int64 ``input_ids`` and ``attention_mask`` for ``texts`` (the artifact's tokenizer)."""
        return tokenize(self.tokenizer, texts)

    def _embed_texts(self, texts: Any, batch_size: int) -> np.ndarray:
        texts = check_texts(texts)
        # Length-sorted batches keep padding small; mean pooling ignores padding, so the order is restored after.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = self.run(self.tokenize([texts[i] for i in idx]))
        return _finite_output(out)


def _finite_output(x: np.ndarray) -> np.ndarray:
    if not np.isfinite(x).all():
        raise RuntimeInputError("the model produced non-finite embeddings for these inputs")
    return x.astype(np.float32, copy=False)


def check_images(images: Any, spec: dict[str, Any]) -> np.ndarray:
    """Return model-ready float32 (N, C, H, W) pixels from uint8 (N, H, W, C) images or float32 (N, C, H, W) in [0, 1].

    Raises RuntimeInputError for anything else: not an array, wrong rank, shape, dtype, NaN/inf, out of range, empty.
    """
    c, h, w = (int(v) for v in spec["shape"])
    if not isinstance(images, np.ndarray):
        raise RuntimeInputError(f"images must be a numpy array, got {type(images).__name__}")
    if images.ndim != 4:
        raise RuntimeInputError(
            f"images must be a batch of rank 4 (N, H, W, C) uint8 or (N, C, H, W) float32, got rank {images.ndim} "
            f"{tuple(images.shape)} (a single image needs a leading batch axis)"
        )
    if images.shape[0] == 0:
        raise RuntimeInputError("empty batch: no images to embed")
    if images.dtype == np.uint8:
        if tuple(images.shape[1:]) != (h, w, c):
            raise RuntimeInputError(f"uint8 images must be (N, {h}, {w}, {c}), got {tuple(images.shape)}")
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
    if images.dtype != np.float32:
        raise RuntimeInputError(f"images must be uint8 (N, H, W, C) or float32 (N, C, H, W), got dtype {images.dtype}")
    if tuple(images.shape[1:]) != (c, h, w):
        raise RuntimeInputError(f"float32 images must be (N, {c}, {h}, {w}), got {tuple(images.shape)}")
    if not np.isfinite(images).all():
        raise RuntimeInputError("images contain NaN or inf")
    lo, hi = spec.get("range", [0.0, 1.0])
    if images.min() < lo or images.max() > hi:
        raise RuntimeInputError(f"float32 pixels must lie in [{lo}, {hi}] (got {images.min():.3g}..{images.max():.3g});"
                                " pass uint8 images to have them scaled")
    return np.ascontiguousarray(images)


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a list of str; raise RuntimeInputError for a bare string, non-strings or an empty list."""
    if isinstance(texts, (str, bytes)):
        raise RuntimeInputError("texts must be a list of strings, got a single string (wrap it in a list)")
    if isinstance(texts, np.ndarray):
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)):
        raise RuntimeInputError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise RuntimeInputError("empty batch: no sentences to embed")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise RuntimeInputError(f"texts must all be strings, got {bad[0]}")
    return list(texts)


def build_tokenizer(path: str | os.PathLike, max_length: int, pad_id: int, pad_token: str):
    """Return a ``tokenizers.Tokenizer`` from a tokenizer.json, truncating to ``max_length``, padding per batch."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ArtifactError("text artifacts need the tokenizers package: pip install tokenizers") from None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ArtifactError(f"cannot load the tokenizer {path}: {type(exc).__name__}") from None
    tokenizer.enable_truncation(max_length=int(max_length))
    # Pad to the longest sentence of each batch (the file may say "pad to 128": that only costs time).
    tokenizer.enable_padding(pad_id=int(pad_id), pad_token=str(pad_token))
    return tokenizer


def tokenize(tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Return padded int64 ``input_ids`` and ``attention_mask`` arrays (N, L) for ``texts``."""
    encodings = tokenizer.encode_batch(list(texts))
    return {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64)}


def _load_tokenizer(folder: Path, spec: dict[str, Any]):
    tok = spec["tokenizer"]
    return build_tokenizer(folder / tok["file"], tok["max_length"], tok["pad_id"], tok["pad_token"])


def load(folder: str | os.PathLike, precision: str = "fp32", threads: int | None = None,
         providers: Sequence[str] | None = None) -> Embedder:
    """Return an Embedder for ``precision`` (fp32 | int8 | int4 | best: int8 where present) of the artifact in
    ``folder``.

    ``providers``: onnxruntime execution providers in order of preference (default: CPU only).

    Raises ArtifactError when the folder is not an artifact, has another format version, or any file's sha256
    differs from the manifest's.
    """
    folder = Path(folder)
    manifest = open_artifact(folder)
    if precision == "best":
        precision = "int8" if "int8" in manifest["models"] else "fp32"
    if precision not in ("fp32", "int8", "int4"):
        raise RuntimeInputError(f"precision must be fp32, int8, int4 or best, got {precision!r}")
    if threads is not None and threads < 1:
        raise RuntimeInputError(f"threads must be >= 1 (leave it out for onnxruntime's default), got {threads}")
    return Embedder(folder, manifest, precision, threads, providers)


def manifest_of(folder: str | os.PathLike) -> dict[str, Any]:
    """Return an artifact's manifest (format checked, checksums not)."""
    return read_manifest(folder)


class Index:
    """A flat cosine index of float32 embeddings or int8 codes, with string ids; ``search`` returns top-k."""

    def __init__(self, dims: int, kind: str = "float32", scales: np.ndarray | None = None,
                 fingerprint: str = "") -> None:
        if kind not in ("float32", "int8"):
            raise RuntimeInputError(f"index kind must be float32 or int8, got {kind!r}")
        if kind == "int8":
            if scales is None or np.asarray(scales).shape != (dims,):
                raise RuntimeInputError(f"an int8 index needs {dims} per-dimension scales")
            scales = np.asarray(scales, dtype=np.float32)
        self.dims, self.kind, self.scales, self.fingerprint = int(dims), kind, scales, fingerprint
        self._data = np.zeros((0, self.dims), dtype=np.int8 if kind == "int8" else np.float32)
        self.ids: list[str] = []

    @staticmethod
    def for_model(model: Embedder, codes: str = "float32") -> "Index":
        """Return an empty index for ``model``'s embeddings (``codes="int8"`` uses the manifest's scales)."""
        return Index(model.dims, codes, model.code_scales if codes == "int8" else None, model.fingerprint)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Return the bytes the stored vectors take (codes or float32; ids and scales not counted)."""
        return int(self._data.nbytes)

    def _check(self, x: Any, what: str) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != self.dims:
            shape = tuple(x.shape) if isinstance(x, np.ndarray) else type(x).__name__
            raise RuntimeInputError(f"{what} must be a (N, {self.dims}) array, got {shape}")
        if x.shape[0] == 0:
            raise RuntimeInputError(f"empty batch: no {what}")
        if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
            raise RuntimeInputError(f"{what} must be finite floats")
        return x.astype(np.float32, copy=False)

    def _stored(self, x: np.ndarray) -> np.ndarray:
        return embedding_codes.encode(x, self.scales) if self.kind == "int8" else x

    def _vectors(self, stored: np.ndarray) -> np.ndarray:
        v = embedding_codes.decode(stored, self.scales) if self.kind == "int8" else stored
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    def add(self, embeddings: np.ndarray, ids: Sequence[str] | None = None) -> None:
        """Add (N, dims) embeddings with their ids (default: running numbers as strings)."""
        x = self._check(embeddings, "embeddings")
        if ids is None:
            ids = [str(len(self.ids) + i) for i in range(x.shape[0])]
        ids = [str(i) for i in ids]
        if len(ids) != x.shape[0]:
            raise RuntimeInputError(f"{x.shape[0]} embeddings but {len(ids)} ids")
        self._data = np.concatenate([self._data, self._stored(x)])
        self.ids += ids

    def search(self, queries: np.ndarray, top_k: int = 5) -> tuple[list[list[str]], np.ndarray]:
        """Return (ids (Q, k), cosine scores (Q, k) float32), best first; queries are coded like the index."""
        if not len(self):
            raise RuntimeInputError("the index is empty: add embeddings first")
        if not isinstance(top_k, int) or top_k < 1:
            raise RuntimeInputError(f"top_k must be a positive integer, got {top_k!r}")
        q = self._vectors(self._stored(self._check(queries, "queries")))
        g = self._vectors(self._data)
        k = min(top_k, len(self))
        sims = q @ g.T
        part = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        return [[self.ids[j] for j in row] for row in top], np.take_along_axis(sims, top, axis=1).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (.npz) atomically."""
        write_atomic(path, lambda fh: np.savez(
            fh, format=np.asarray(INDEX_FORMAT), kind=np.asarray(self.kind), dims=np.asarray(self.dims),
            scales=self.scales if self.scales is not None else np.zeros(0, np.float32), data=self._data,
            ids=np.asarray(self.ids, dtype=np.str_), fingerprint=np.asarray(self.fingerprint)))

    @staticmethod
    def load(path: str | os.PathLike) -> "Index":
        """Return the index saved at ``path``; raise RuntimeInputError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != INDEX_FORMAT:
                    raise RuntimeInputError(f"{path}: index format {int(z['format'])}, expected {INDEX_FORMAT}")
                kind, dims = str(z["kind"]), int(z["dims"])
                index = Index(dims, kind, z["scales"] if kind == "int8" else None, str(z["fingerprint"]))
                data, ids = z["data"], [str(i) for i in z["ids"]]
        except RuntimeInputError:
            raise
        except Exception as exc:
            raise RuntimeInputError(f"cannot read index {path}: {type(exc).__name__}") from None
        if data.shape != (len(ids), dims):
            raise RuntimeInputError(f"{path}: the index data and ids disagree")
        index._data, index.ids = data, ids
        return index

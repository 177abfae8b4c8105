"""The export gates: fp32 ONNX vs the folded PyTorch module, finiteness, int8 graph and int8 codes vs fp32.

Figures are plain dicts (they go into the manifest as they are); ``check_*`` raise GateError on a miss.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from ..device import embedding_codes
from ..device.errors import GateError
from ..metrics import l2_normalize, recall_at_k

Batch = dict[str, np.ndarray]
EmbedFn = Callable[[Batch], np.ndarray]


@dataclass(frozen=True)
class GateThresholds:
    """Limits an export must meet; ``max_recall_drop_points`` is in percentage points of Recall@1.

    ``int8_min_cosine`` bounds the *mean* cosine of int8 to fp32 embeddings; ``int8_cosine_floor``, when
    set, also bounds the *minimum* (the worst single input), so one badly quantized embedding fails the gate.
    """

    parity_atol: float = 1e-5
    int8_min_cosine: float = 0.99
    int8_max_recall_drop_points: float = 1.0
    int8_cosine_floor: float | None = None  # None: no floor (issue 12's gates); the minimum is still reported

    def to_dict(self) -> dict[str, float | None]:
        """Return the thresholds as a JSON-able dict."""
        return asdict(self)


@dataclass
class Retrieval:
    """A query/gallery split of real inputs with labels (text: held-out pairs, label = pair number)."""

    query: list[Batch]
    gallery: list[Batch]
    query_labels: np.ndarray
    gallery_labels: np.ndarray
    protocol: str

    def embed(self, fn: EmbedFn) -> tuple[np.ndarray, np.ndarray]:
        """Return (query, gallery) embeddings under ``fn``."""
        return embed_batches(fn, self.query), embed_batches(fn, self.gallery)


def embed_batches(fn: EmbedFn, batches: Sequence[Batch]) -> np.ndarray:
    """Return the concatenated outputs of ``fn`` over ``batches`` as float32."""
    return np.concatenate([np.asarray(fn(b), dtype=np.float32) for b in batches])


def batch_rows(batches: Sequence[Batch]) -> int:
    """Return the number of examples in ``batches``."""
    return int(sum(next(iter(b.values())).shape[0] for b in batches))


def parity_figures(reference: np.ndarray, onnx_out: np.ndarray, batch_size: int) -> dict:
    """Return {samples, batch_size, max_abs_diff, finite_reference, finite_onnx} of fp32 ONNX vs PyTorch."""
    finite_ref, finite_onnx = bool(np.isfinite(reference).all()), bool(np.isfinite(onnx_out).all())
    diff = float(np.abs(reference.astype(np.float64) - onnx_out).max()) if finite_ref and finite_onnx else float("nan")
    return {"samples": int(reference.shape[0]), "batch_size": int(batch_size), "max_abs_diff": diff,
            "finite_reference": finite_ref, "finite_onnx": finite_onnx}


def check_parity(fig: dict, thr: GateThresholds) -> None:
    """Raise GateError unless both outputs are finite and their max abs difference is ≤ the tolerance."""
    if not fig["finite_reference"]:
        raise GateError("the PyTorch folded model produced NaN/inf on real inputs")
    if not fig["finite_onnx"]:
        raise GateError("the fp32 ONNX graph produced NaN/inf on real inputs")
    if not fig["max_abs_diff"] <= thr.parity_atol:
        raise GateError(f"fp32 ONNX differs from PyTorch by {fig['max_abs_diff']:.3g} (max abs over "
                        f"{fig['samples']} inputs) > {thr.parity_atol:g} (--parity-atol)")


def recall1(query: np.ndarray, gallery: np.ndarray, r: Retrieval) -> float:
    """Return Recall@1 of ``query`` against ``gallery`` embeddings with the split's labels."""
    return recall_at_k(query, r.query_labels, gallery, r.gallery_labels, ks=(1,))[1]


def compare_figures(ref: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], r: Retrieval) -> dict:
    """Return {mean_cosine, min_cosine, recall@1_fp32, recall@1, recall_drop_points, finite} of ``test`` vs ``ref``."""
    from .decided import RESOLUTION, decided_queries

    a, b = np.concatenate(ref), np.concatenate(test)
    finite = bool(np.isfinite(b).all())
    cos = np.sum(l2_normalize(a) * l2_normalize(b), axis=1) if finite else np.array([np.nan])
    # Recall@1 over the queries that fp32 decides by more than its own precision (decided.py).
    # When fp32 decides none of them (a degenerate model), all queries count, as before.
    keep = decided_queries(*ref, r.query_labels, r.gallery_labels)
    keep = keep if keep.any() else np.ones_like(keep)
    sub = Retrieval([], [], r.query_labels[keep], r.gallery_labels, r.protocol)
    r_ref = recall1(ref[0][keep], ref[1], sub)
    r_test = recall1(test[0][keep], test[1], sub) if finite else float("nan")
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()), "recall@1_fp32": r_ref,
            "recall@1": r_test, "recall_drop_points": 100.0 * (r_ref - r_test), "finite": finite,
            "queries": int(keep.sum()), "undecided_queries": int(len(keep) - keep.sum()),
            "undecided_margin": RESOLUTION,
            "gallery": int(ref[1].shape[0]), "protocol": r.protocol}


def code_figures(fp32: tuple[np.ndarray, np.ndarray], scales: np.ndarray, r: Retrieval) -> dict:
    """Return compare_figures of int8 codes (encoded, decoded with ``scales``) vs the fp32 embeddings."""
    coded = tuple(embedding_codes.decode(embedding_codes.encode(x, scales), scales) for x in fp32)
    return compare_figures(fp32, coded, r)


def int8_failures(fig: dict, thr: GateThresholds, what: str = "") -> list[str]:
    """Return why ``fig`` (int8 graph / int8 codes vs fp32) misses the mean-cosine, minimum-cosine (when a floor
    is set) or Recall@1 gate; [] when it passes."""
    prefix = f"{what}: " if what else ""
    if not fig["finite"]:
        return [f"{what or 'the graph'} produced NaN/inf on real inputs"]
    out = []
    if not fig["mean_cosine"] >= thr.int8_min_cosine:
        out.append(f"{prefix}mean cosine to fp32 is {fig['mean_cosine']:.4f} < {thr.int8_min_cosine:g} "
                   "(--int8-min-cosine)")
    floor = thr.int8_cosine_floor
    if floor is not None and not fig["min_cosine"] >= floor:
        out.append(f"{prefix}minimum cosine to fp32 is {fig['min_cosine']:.4f} < {floor:g} (--int8-cosine-floor)")
    if not fig["recall_drop_points"] <= thr.int8_max_recall_drop_points:
        out.append(f"{prefix}Recall@1 drops {fig['recall_drop_points']:.2f} points "
                   f"({100 * fig['recall@1_fp32']:.2f} -> {100 * fig['recall@1']:.2f} on {fig['queries']} "
                   f"queries) > {thr.int8_max_recall_drop_points:g} (--int8-max-recall-drop)")
    return out


def check_int8(fig: dict, thr: GateThresholds, what: str) -> None:
    """Raise GateError unless ``what`` (int8 graph / int8 codes) keeps cosine and Recall@1 within the limits."""
    failures = int8_failures(fig, thr, what)
    if failures:
        raise GateError(failures[0])


@dataclass
class Similarity:
    """Scored sentence pairs (text: STS-B dev): the Spearman of cosine against the gold scores is reported."""

    first: list[Batch]
    second: list[Batch]
    scores: np.ndarray
    source: str

    def spearman(self, fn: EmbedFn) -> float:
        """Return the Spearman correlation of cosine(fn(first), fn(second)) with the gold scores."""
        from ..metrics import cosine_scores, spearman

        return float(spearman(cosine_scores(embed_batches(fn, self.first), embed_batches(fn, self.second)),
                              self.scores))


def spearman_figures(fp32: float, test: float, sim: Similarity) -> dict:
    """Return {spearman_fp32, spearman, spearman_drop_points (x100), spearman_pairs, spearman_source}."""
    return {"spearman_fp32": fp32, "spearman": test, "spearman_drop_points": 100.0 * (fp32 - test),
            "spearman_pairs": int(len(sim.scores)), "spearman_source": sim.source}


def measure_and_check(fp32: EmbedFn, parity_batches: Sequence[Batch], retrieval: Retrieval, scales: np.ndarray,
                      thr: GateThresholds, reference: EmbedFn | None = None, int8: EmbedFn | None = None,
                      fp32_retrieval: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Return the gate figures {fp32_parity?, int8_codes, int8_model?}; raise GateError at the first miss.

    ``reference`` (the PyTorch folded module) enables the parity gate; ``int8`` the int8-graph gate. The
    int8 codes gate always runs, with ``scales``. ``fp32_retrieval``: the fp32 graph's (query, gallery)
    embeddings when the caller already has them.
    """
    figures: dict = {}
    if reference is not None:
        size = int(next(iter(parity_batches[0].values())).shape[0])
        parity = parity_figures(embed_batches(reference, parity_batches), embed_batches(fp32, parity_batches), size)
        figures["fp32_parity"] = parity
        check_parity(parity, thr)
    fp32_ret = fp32_retrieval if fp32_retrieval is not None else retrieval.embed(fp32)
    figures["int8_codes"] = code_figures(fp32_ret, scales, retrieval)
    check_int8(figures["int8_codes"], thr, "int8 embedding codes")
    if int8 is not None:
        figures["int8_model"] = compare_figures(fp32_ret, retrieval.embed(int8), retrieval)
        check_int8(figures["int8_model"], thr, "int8 model")
    return figures

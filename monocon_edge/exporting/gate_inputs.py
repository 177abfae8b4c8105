"""Real inputs from a loaded run (``runs.load_run``) for the export gates and the int8 calibrations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..data.splits import seeded_subset
from .gates import Batch, Retrieval, Similarity

# Batch size of the gates and calibration: deliberately not onnx_export.EXPORT_BATCH.
GATE_BATCH = 64
# Real inputs, one per call, that int8 candidates are timed on (batch 1).
TIMING_INPUTS = 16


def _chunks(n: int, size: int = GATE_BATCH) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


@dataclass
class GateInputs:
    """Real inputs for the gates and calibrations, already batched as model feeds."""

    parity: list[Batch]
    retrieval: Retrieval
    calibration: list[Batch]  # static int8 activation ranges / MatMul sensitivity (train data)
    code_calibration: list[Batch]  # int8 embedding-code scales (train data)
    parity_source: str
    timing: list[Batch] = field(default_factory=list)  # batch-1 feeds for timing int8 candidates
    similarity: Similarity | None = None  # text: scored pairs for the Spearman figure


def vision_batches(images: np.ndarray, idx: np.ndarray) -> list[Batch]:
    """Return GATE_BATCH-sized feeds of float32 (N, C, H, W) pixels in [0, 1] for ``images[idx]`` (uint8 NHWC)."""
    sel = images[idx]
    pixels = np.ascontiguousarray(sel.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)
    return [{"pixels": pixels[s]} for s in _chunks(len(pixels))]


def vision_gate_inputs(task: Any, seed: int, parity_samples: int, calibration_samples: int,
                       code_samples: int) -> GateInputs:
    """Return gate inputs from a VisionTask: parity on data-set images, Recall@1 on its query/gallery split."""
    images, labels, s = task.data.images, task.data.labels, task.splits
    parity = seeded_subset(len(images), parity_samples, seed)
    if len(s.report):  # a run with three data roles: the gates read the selection part, never the report part
        retrieval = Retrieval(vision_batches(images, s.val), vision_batches(images, s.train), labels[s.val],
                              labels[s.train], "selection split -> train split as gallery, Recall@1")
    else:
        retrieval = Retrieval(vision_batches(images, s.query), vision_batches(images, s.gallery),
                              labels[s.query], labels[s.gallery], "query -> gallery of the run's train split, Recall@1")
    calib = s.train[seeded_subset(len(s.train), calibration_samples, seed + 1)]
    codes = s.train[seeded_subset(len(s.train), code_samples, seed + 2)]
    timing = [vision_batches(images, parity[i:i + 1])[0] for i in range(min(TIMING_INPUTS, len(parity)))]
    return GateInputs(vision_batches(images, parity), retrieval, vision_batches(images, calib),
                      vision_batches(images, codes), f"{len(parity)} images of {task.data.source}", timing)


def text_batches(texts: Sequence[str], tokenize: Callable[[Sequence[str]], Batch]) -> list[Batch]:
    """Return GATE_BATCH-sized token feeds of ``texts`` (order kept)."""
    return [tokenize(list(texts[s])) for s in _chunks(len(texts))]


def text_gate_inputs(task: Any, seed: int, tokenize: Callable[[Sequence[str]], Batch], parity_samples: int,
                     code_samples: int, calibration_samples: int = 0) -> GateInputs:
    """Return gate inputs from a TextTask: parity on real sentences, pair Recall@1 on its held-out pairs,
    Spearman on its STS pairs, calibration (MatMul sensitivity) on train sentences."""
    pool = list(dict.fromkeys([s for p in task.val_pairs for s in p] + task.sts.first + task.sts.second
                              + task.sentences))
    parity = [pool[i] for i in seeded_subset(len(pool), parity_samples, seed)]
    anchors, partners = [a for a, _ in task.val_pairs], [b for _, b in task.val_pairs]
    labels = np.arange(len(anchors))  # pair i's label is i: metrics.pair_recall_at_k, training's recall@1
    retrieval = Retrieval(text_batches(anchors, tokenize), text_batches(partners, tokenize), labels, labels,
                          "held-out selection pairs: anchor -> its partner among all partners, Recall@1")
    codes = [task.sentences[i] for i in seeded_subset(len(task.sentences), code_samples, seed + 2)]
    calib = [task.sentences[i] for i in seeded_subset(len(task.sentences), calibration_samples, seed + 1)]
    timing = [tokenize([t]) for t in parity[:TIMING_INPUTS]]
    similarity = None
    if len(task.sts.scores):
        similarity = Similarity(text_batches(task.sts.first, tokenize), text_batches(task.sts.second, tokenize),
                                np.asarray(task.sts.scores, dtype=np.float64),
                                f"{len(task.sts.scores)} STS pairs of the run's validation file")
    return GateInputs(text_batches(parity, tokenize), retrieval, text_batches(calib, tokenize) if calib else [],
                      text_batches(codes, tokenize), f"{len(parity)} sentences (held-out pairs, STS, train)",
                      timing, similarity)

"""``monocon-edge verify``: re-check an artifact's checksums, run its graphs, and re-measure its gates.

The gates are re-measured against the source run when it is still there (same best.pt), and/or on data the
user gives (an .npz of images + labels, or a pair TSV for text). Thresholds default to those recorded at export.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..device.artifact import open_artifact
from ..device.errors import GateError, MonoconError
from .gates import GateThresholds, Retrieval, measure_and_check

SMOKE_BATCH = 3
MAX_PAIRS = 2000


@dataclass
class VerifyReport:
    """What was checked: checksums, a smoke run per graph, and gate figures per source (run and/or data)."""

    path: Path
    manifest: dict[str, Any]
    smoke: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _smoke(model: Any) -> dict[str, Any]:
    """Return {batch, dims, max_norm_error} of one run on synthetic input; raise GateError if the output is wrong."""
    if model.modality == "vision":
        c, h, w = model.input_spec["shape"]
        inputs: Any = np.random.default_rng(0).integers(0, 256, (SMOKE_BATCH, h, w, c), dtype=np.uint8)
    else:
        inputs = ["a short sentence", "another, somewhat longer sentence to embed", ""][:SMOKE_BATCH]
    out = model.embed(inputs)
    if out.shape != (SMOKE_BATCH, model.dims):
        raise GateError(f"{model.precision} graph returned shape {out.shape}, the manifest says (N, {model.dims})")
    norm_error = float(np.abs(np.linalg.norm(out, axis=1) - 1).max())
    if norm_error > 1e-3:
        raise GateError(f"{model.precision} graph returned embeddings that are not L2-normalised ({norm_error:.3g})")
    return {"batch": SMOKE_BATCH, "dims": model.dims, "max_norm_error": norm_error}


def verify_artifact(path: str | Path, data: str | None = None, run: str | Path | None = None,
                    thresholds: GateThresholds | None = None) -> VerifyReport:
    """Return the VerifyReport of the artifact at ``path``; raise ArtifactError / GateError on any failure."""
    from ..device import runtime

    path = Path(path)
    manifest = open_artifact(path)
    report = VerifyReport(path, manifest)
    models = {p: runtime.load(path, p) for p in manifest["models"]}
    for precision, model in models.items():
        report.smoke[precision] = _smoke(model)
    thr = thresholds or GateThresholds(**manifest["gates"]["thresholds"])
    scales = models["fp32"].code_scales
    int8 = models["int8"].run if "int8" in models else None

    source = _source_run(manifest, run, report)
    if source is not None:
        report.gates["source run"] = _run_gates(source, manifest, models["fp32"], int8, scales, thr)
    if data is not None:
        retrieval = _data_retrieval(models["fp32"], data)
        report.gates[f"data {data}"] = measure_and_check(models["fp32"].run, [], retrieval, scales, thr, int8=int8)
    if source is None and data is None:
        report.skipped.append("gates not re-measured: the source run is gone and no --data was given")
    return report


def _source_run(manifest: dict[str, Any], run: str | Path | None, report: VerifyReport) -> Path | None:
    """Return the source run directory when it is there with the same best.pt; an explicit --run must match."""
    from ..device.artifact import sha256_file

    explicit = run is not None
    where = Path(run) if explicit else Path(manifest["source_run"]["path"])
    best = where / "best.pt"
    if not best.is_file():
        if explicit:
            raise MonoconError(f"--run {where} has no best.pt")
        report.skipped.append(f"source run {where} not found")
        return None
    if sha256_file(best) != manifest["source_run"]["checkpoint_sha256"]:
        message = f"{best} is not the checkpoint this artifact was exported from"
        if explicit:
            raise MonoconError(message)
        report.skipped.append(message)
        return None
    return where


def _run_gates(source: Path, manifest: dict[str, Any], fp32: Any, int8: Any, scales: np.ndarray,
               thr: GateThresholds) -> dict[str, Any]:
    """Re-measure every export gate against the source run, running the artifact's own graphs."""
    import torch

    from ..runs import load_run
    from .gate_inputs import text_gate_inputs, vision_gate_inputs
    from .fold import fold

    loaded = load_run(source)
    folded, _ = fold(loaded.model, loaded.pca, int(manifest["output"]["dims"]))
    parity = manifest["gates"].get("fp32_parity", {})
    n = int(parity.get("samples", 256))
    if loaded.cfg.modality == "vision":
        gate_in = vision_gate_inputs(loaded.task, 0, n, 1, 1024)
    else:
        gate_in = text_gate_inputs(loaded.task, 0, fp32.tokenize, n, 1024)

    def reference(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return folded(*(torch.from_numpy(feeds[k]) for k in feeds)).numpy()

    return measure_and_check(fp32.run, gate_in.parity, gate_in.retrieval, scales, thr, reference=reference,
                             int8=int8)


def _data_retrieval(model: Any, data: str) -> Retrieval:
    """Return a Retrieval over user data: .npz images (10 % queries, seeded) or a pair TSV (anchor → partner)."""
    from .gate_inputs import text_batches, vision_batches

    if model.modality == "vision":
        from ..data.vision import load_npz

        images = load_npz(data)
        model.embed(images.images[:1])  # validates the shape against the artifact's input spec
        n = len(images.labels)
        order = np.random.default_rng(0).permutation(n)
        q, g = np.sort(order[: max(1, n // 10)]), np.sort(order[max(1, n // 10):])
        return Retrieval(vision_batches(images.images, q), vision_batches(images.images, g),
                         images.labels[q], images.labels[g], f"10% of {data} -> the rest, Recall@1")
    from ..data.text import read_pair_tsv

    pairs = read_pair_tsv(data)[:MAX_PAIRS]
    labels = np.arange(len(pairs))
    return Retrieval(text_batches([a for a, _ in pairs], model.tokenize), text_batches([b for _, b in pairs],
                     model.tokenize), labels, labels, f"{len(pairs)} pairs of {data}: anchor -> partner, Recall@1")

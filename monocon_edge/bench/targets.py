"""What to benchmark: run directories (exported per dims into bench's own cache) or artifact directories.

Bench never writes into a run directory. A run's artifacts are cached in ``run_cache_dir(RUN)/d{N}[-int8]``
(under ``$MONOCON_CACHE_DIR/bench-artifacts``, else ``~/.cache/monocon-edge/bench-artifacts``) and reused while
they are valid (checksums match, exported from the run's current best.pt, the right dims and precisions); an
invalid cache folder is exported again.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..device.errors import ArtifactError, MonoconError
from ..events import EventFn

CACHE_DIR = "bench-artifacts"


@dataclass
class Target:
    """One model to benchmark: its name, facts, source run (None when gone) and {dims: (labels, artifact)}."""

    name: str
    head: str
    modality: str
    truncation: str
    d_enc: int
    d_eff: int
    run_path: Path | None
    artifacts: dict[int, tuple[str, Path]] = field(default_factory=dict)


def parse_dims(spec: str) -> tuple[str, ...]:
    """Return the dims labels of ``--dims`` ("128,64,16,deff"): integers ≥ 1 or "deff"; "full" is always added."""
    labels: list[str] = ["full"]
    for part in (p.strip().lower() for p in spec.split(",")):
        if not part:
            continue
        if part in ("deff", "d_eff"):
            part = "deff"
        elif part != "full" and not (part.isdigit() and int(part) >= 1):
            raise MonoconError(f"--dims takes positive integers, 'deff' and 'full', comma-separated; got {part!r}")
        if part not in labels:
            labels.append(part)
    return tuple(labels)


def bench_dims(labels: tuple[str, ...], d_enc: int, d_eff: int, limit: int) -> dict[int, str]:
    """Return {dims: label} for a model: "full" = ``limit`` (min of d_enc and the PCA's components); other dims
    ≥ d_enc are skipped; a dims reached by two labels (16 and deff = 16) gets both ("16+deff")."""
    out: dict[int, list[str]] = {}
    for label in labels:
        d = limit if label == "full" else max(int(d_eff), 1) if label == "deff" else int(label)
        if label != "full" and (d >= d_enc or d > limit):
            continue
        out.setdefault(d, []).append(label)
    return {d: "+".join(names) for d, names in sorted(out.items(), reverse=True)}


def dims_label(dims: int, d_enc: int, d_eff: int) -> str:
    """Return the label of an artifact's dims: "full", "deff", or the number."""
    return "full" if dims >= d_enc else "deff" if dims == d_eff else str(dims)


def _unchanged_source_run(manifest: dict[str, Any]) -> Path | None:
    """Return the artifact's source run when it is still there with the same best.pt, else None."""
    from ..device.artifact import sha256_file

    src = manifest.get("source_run", {})
    best = Path(src.get("path", "")) / "best.pt"
    if not src.get("path") or not best.is_file():
        return None
    return best.parent if sha256_file(best) == src.get("checkpoint_sha256") else None


def _run_truncation(summary: dict[str, Any]) -> str:
    # Runs from before the Matryoshka comparator have no "truncation": they are PCA-truncated.
    return str(summary.get("truncation", "pca"))


def artifact_target(folder: Path) -> Target:
    """Return the Target of one artifact directory (checksums verified); raise ArtifactError if it is not one."""
    from ..device.artifact import open_artifact

    manifest = open_artifact(folder)
    out = manifest["output"]
    name = manifest.get("source_run", {}).get("name") or folder.name
    d_enc, d_eff, dims = int(out["d_enc"]), int(out["d_eff"]), int(out["dims"])
    target = Target(name, str(manifest.get("head", "?")), manifest["modality"],
                    str(out.get("truncation", manifest.get("truncation", "pca"))), d_enc, d_eff,
                    _unchanged_source_run(manifest))
    target.artifacts[dims] = (dims_label(dims, d_enc, d_eff), folder)
    return target


def _cache_valid(folder: Path, dims: int, int8: bool, checkpoint_sha: str) -> str | None:
    """Return None when ``folder`` is a reusable artifact, else why it is not."""
    from ..device.artifact import open_artifact

    try:
        manifest = open_artifact(folder)
    except ArtifactError as exc:
        return str(exc)
    if manifest.get("source_run", {}).get("checkpoint_sha256") != checkpoint_sha:
        return "exported from another best.pt"
    if int(manifest["output"]["dims"]) != dims or (int8 and "int8" not in manifest["models"]):
        return "other dims or precisions"
    if int8:
        from ..exporting.int8_select import candidates_for

        # An export by an older monocon-edge chose among other int8 schemes: measure today's candidates.
        tried = [c.get("name") for c in manifest["models"]["int8"].get("selection", {}).get("candidates", [])]
        if sorted(tried) != sorted(candidates_for(manifest.get("modality", "vision"))):
            return "its int8 scheme was chosen among other candidates (an older export)"
    return None


def run_cache_dir(run_path: Path) -> Path:
    """Return the folder where bench keeps the artifacts it exports from ``run_path`` (one per run directory).

    ``$MONOCON_CACHE_DIR/bench-artifacts`` (``~/.cache/monocon-edge/bench-artifacts`` when unset; a fresh temporary
    folder when it is ``off``), then the run's name and a hash of its resolved path.
    """
    env = os.environ.get("MONOCON_CACHE_DIR")
    if env == "off":
        root = Path(tempfile.mkdtemp(prefix="monocon-bench-"))
    else:
        root = (Path(env) if env else Path.home() / ".cache" / "monocon-edge") / CACHE_DIR
    key = hashlib.sha256(str(run_path.resolve()).encode("utf-8")).hexdigest()[:16]
    return root / f"{run_path.resolve().name}-{key}"


def run_target(run_path: Path, labels: tuple[str, ...], int8: bool, loaded: Any, thresholds: Any,
               emit: EventFn) -> Target:
    """Return the Target of a run: every dims in ``labels`` exported (or reused) under ``run_cache_dir(run_path)``."""
    from ..device.errors import GateError
    from ..exporting.build import ExportOptions, export_run
    from ..exporting.gates import GateThresholds

    limit = min(int(loaded.model.d_enc), int(loaded.pca.components.shape[0]))
    target = Target(loaded.cfg.name, loaded.cfg.model.head, loaded.cfg.modality, _run_truncation(loaded.summary),
                    int(loaded.model.d_enc), int(loaded.d_eff), run_path)
    cache = run_cache_dir(run_path)
    cache.mkdir(parents=True, exist_ok=True)
    for dims, label in bench_dims(labels, target.d_enc, target.d_eff, limit).items():
        folder = cache / f"d{dims}{'-int8' if int8 else ''}"
        if folder.exists():
            why = _cache_valid(folder, dims, int8, loaded.checkpoint_sha256)
            if why is None:
                emit("reuse", {"name": f"{target.name}: reuse {folder.name}"})
                target.artifacts[dims] = (label, folder)
                continue
            emit("stale", {"name": f"{target.name}: re-export {folder.name} ({why})"})
            shutil.rmtree(folder)  # the cache is bench's own folder
        emit("export", {"name": f"{target.name}: export {dims} dims{' + int8' if int8 else ''}"})
        try:
            try:
                # int8 candidates are chosen under the export's own int8 gates ...
                export_run(run_path, ExportOptions(dims=dims, int8=int8, out=folder,
                                                   thresholds=GateThresholds(parity_atol=thresholds.parity_atol)),
                           loaded=loaded)
            except GateError as exc:
                if not int8 or "int8" not in str(exc):
                    raise
                # ... and where none passes, bench still measures the fastest (it reports the int8 loss itself).
                emit("warning", {"name": f"{target.name}: {dims} dims: {exc}; int8 exported without int8 gates"})
                export_run(run_path, ExportOptions(dims=dims, int8=int8, out=folder, thresholds=thresholds),
                           loaded=loaded)
        except MonoconError as exc:
            raise type(exc)(f"exporting {run_path} at {dims} dims: {exc}") from None
        target.artifacts[dims] = (label, folder)
    return target


def classify(path: Path) -> str:
    """Return "artifact" or "run" for ``path``; raise MonoconError when it is neither (or missing)."""
    if not path.exists():
        raise MonoconError(f"not found: {path}")
    if (path / "manifest.json").is_file():
        return "artifact"
    if (path / "config.json").is_file():
        return "run"
    raise MonoconError(f"{path} is neither a run directory (config.json) nor an artifact (manifest.json)")

"""What is already there: the finished runs and the artifacts under a runs folder (default ``./runs``), newest first.

Commands that are given no path use it: ``export`` takes the most recent finished run, ``bench`` the most recent
artifact and a run of the same data with the other head (MonoCon ↔ baseline), ``runs`` lists everything.
Read-only, and light: reads config.json / summary.json / manifest.json, never a checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .device.errors import ArtifactError, MonoconError
from .formatting import method_label

DEFAULT_ROOT = Path("runs")
RUN_FILES = ("config.json", "summary.json", "best.pt", "pca.npz")
# Data settings that do not change which examples a run is evaluated on.
_DATA_KEYS_IGNORED = ("augment", "m_per_class", "download")
_MAX_DEPTH = 4


@dataclass
class RunInfo:
    """A finished run directory: its config (raw JSON), summary, and when it finished."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    finished: float  # mtime of summary.json

    @property
    def head(self) -> str:
        return str(self.config.get("model", {}).get("head", "?"))

    @property
    def loss(self) -> str:
        return str(self.config.get("optim", {}).get("loss", "supcon"))

    @property
    def preset(self) -> str:
        return str(self.config.get("preset", "?"))

    @property
    def modality(self) -> str:
        return str(self.config.get("modality", "?"))

    @property
    def label(self) -> str:
        """Return what the run is: MonoCon, baseline, std-MLP or Matryoshka."""
        return method_label(self.head, self.loss)

    def data_key(self) -> str:
        """Return a key equal for runs evaluated on the same examples (data settings + seed)."""
        data = {k: v for k, v in self.config.get("data", {}).items() if k not in _DATA_KEYS_IGNORED}
        return json.dumps({"modality": self.modality, "data": data,
                           "seed": self.config.get("optim", {}).get("seed")}, sort_keys=True)


@dataclass
class ArtifactInfo:
    """An artifact directory (format and seal checked; file checksums not), or why it cannot be read."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0  # mtime of manifest.json
    problem: str | None = None

    @property
    def source_run(self) -> Path | None:
        src = self.manifest.get("source_run", {}).get("path")
        return Path(src) if src else None


def _is_finished_run(path: Path) -> bool:
    return all((path / name).is_file() for name in RUN_FILES)


def _walk(root: Path, depth: int = 0):
    """Yield folders under ``root`` (root included; nothing when it is not a folder), not descending into runs'
    or artifacts' inner folders."""
    if not root.is_dir():
        return
    yield root
    if depth >= _MAX_DEPTH:
        return
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        if (child / "manifest.json").is_file():
            yield child  # an artifact: its own subfolders (runtime, tokenizer, ...) are not searched
        else:
            yield from _walk(child, depth + 1)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def finished_runs(root: str | Path = DEFAULT_ROOT) -> list[RunInfo]:
    """Return the finished runs under ``root`` (config, summary, best.pt and pca.npz present), newest first."""
    out = []
    for folder in _walk(Path(root)):
        if _is_finished_run(folder):
            config, summary = _read_json(folder / "config.json"), _read_json(folder / "summary.json")
            if config is not None and summary is not None:
                out.append(RunInfo(folder, config, summary, (folder / "summary.json").stat().st_mtime))
    return sorted(out, key=lambda r: (r.finished, str(r.path)), reverse=True)


def artifacts(root: str | Path = DEFAULT_ROOT) -> list[ArtifactInfo]:
    """Return the artifact directories under ``root`` (readable or not, with the reason), newest first."""
    from .device.artifact import read_manifest

    out = []
    for folder in _walk(Path(root)):
        if (folder / "manifest.json").is_file():
            info = ArtifactInfo(folder, created=(folder / "manifest.json").stat().st_mtime)
            try:
                info.manifest = read_manifest(folder)
            except ArtifactError as exc:
                info.problem = str(exc)
            out.append(info)
    return sorted(out, key=lambda a: (a.created, str(a.path)), reverse=True)


def latest_run(root: str | Path = DEFAULT_ROOT) -> RunInfo:
    """Return the most recent finished run under ``root``; raise MonoconError saying what to run first."""
    runs = finished_runs(root)
    if not runs:
        raise MonoconError(f"no finished run under {Path(root)}/: run `monocon-edge train` first "
                           "(or give a run directory)")
    return runs[0]


def latest_artifact(root: str | Path = DEFAULT_ROOT) -> ArtifactInfo:
    """Return the most recent readable artifact under ``root``; raise MonoconError saying what to run first."""
    found = [a for a in artifacts(root) if a.problem is None]
    if not found:
        first = "export --dims 16 --int8" if finished_runs(root) else "train`, then `monocon-edge export --dims 16 --int8"
        raise MonoconError(f"no artifact under {Path(root)}/: run `monocon-edge {first}` first "
                           "(or give run / artifact directories)")
    return found[0]


def counterpart(run: RunInfo, root: str | Path = DEFAULT_ROOT) -> RunInfo | None:
    """Return the newest finished run of the same data with the other side of the comparison: the baseline
    (``--head none``) for a head run, MonoCon (monotonic head, SupCon) for a baseline; None when there is none."""
    want_baseline = run.head != "none"
    key = run.data_key()
    for other in finished_runs(root):
        if other.path.resolve() == run.path.resolve() or other.data_key() != key:
            continue
        if (other.head == "none") if want_baseline else (other.head == "monotonic" and other.loss == "supcon"):
            return other
    return None


def run_info(path: str | Path) -> RunInfo:
    """Return the RunInfo of one run directory; raise MonoconError if it is not a finished run."""
    path = Path(path)
    if not _is_finished_run(path):
        raise MonoconError(f"{path} is not a finished run directory (needs {', '.join(RUN_FILES)})")
    config, summary = _read_json(path / "config.json"), _read_json(path / "summary.json")
    if config is None or summary is None:
        raise MonoconError(f"cannot read {path}/config.json or summary.json")
    return RunInfo(path, config, summary, (path / "summary.json").stat().st_mtime)

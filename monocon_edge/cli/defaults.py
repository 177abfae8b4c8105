"""What ``export`` and ``bench`` take when given no path, and the ``runs`` listing.

- ``export`` with no run directory: the most recent finished run under ``--runs-dir`` (./runs).
- ``bench`` with no path: the most recent artifact under ``--runs-dir``, and the newest finished run of the same
  data with the other head (the baseline, ``--head none``, for a MonoCon artifact; MonoCon for a baseline one),
  benched side by side. For the embedded default (digits) a missing baseline is trained first (about 10 s on a
  CPU), into a new run directory under ``--runs-dir``, and said so; for other presets the command says what to
  train.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any, Callable

from ..device.errors import MonoconError
from ..runs_index import ArtifactInfo, RunInfo, artifacts, counterpart, finished_runs, latest_artifact, latest_run, \
    run_info

Say = Callable[[str], None]


def default_run(runs_dir: Path, say: Say) -> Path:
    """Return the most recent finished run under ``runs_dir`` (telling which); raise MonoconError if none."""
    run = latest_run(runs_dir)
    say(f"no run directory given: using the most recent finished run, {run.path} ({run.label}, {run.preset})")
    return run.path


def _train_hint(run: RunInfo, want: str) -> str:
    head = "--head none" if want == "baseline" else "--head monotonic"
    preset = "" if run.preset == "default" else f" --preset {run.preset}"
    return f"monocon-edge train{preset} {head}"


def _train_default_baseline(run: RunInfo, runs_dir: Path, say: Say) -> Path:
    """Train the embedded default's baseline with the MonoCon run's own settings, head none; return its path."""
    from ..training.config import RunConfig
    from ..training.loop import train

    cfg = RunConfig.from_dict(run.config)
    cfg = dataclasses.replace(cfg, name="digits-none", init_from=None,
                              model=dataclasses.replace(cfg.model, head="none"),
                              optim=dataclasses.replace(cfg.optim, loss="supcon"))
    say(f"no baseline run of the same data under {runs_dir}/: training it now (the embedded default with "
        "--head none, about 10 s on a CPU)")
    result = train(cfg, None, runs_root=runs_dir)
    if not result.finished:
        raise MonoconError(f"the baseline run {result.run_dir} did not finish")
    say(f"baseline run: {result.run_dir}")
    return Path(result.run_dir)


def default_bench_paths(runs_dir: Path, say: Say) -> tuple[list[Path], ArtifactInfo]:
    """Return [artifact, run of the other side] for ``bench`` with no path, and the artifact's info.

    Raises MonoconError with what to run first when there is no artifact, its source run is gone, or no run of
    the same data has the other head (and it cannot be trained here cheaply).
    """
    art = latest_artifact(runs_dir)
    say(f"no path given: benchmarking the most recent artifact, {art.path}")
    src = art.source_run
    if src is None or not src.is_dir():
        raise MonoconError(f"the source run of {art.path} ({src}) is gone: give the runs to compare, e.g. "
                           f"`monocon-edge bench {art.path} RUN_DIR`")
    run = run_info(_short(src))
    other = counterpart(run, runs_dir)
    want = "baseline" if run.head != "none" else "MonoCon"
    if other is None:
        if want == "baseline" and run.preset == "default" and run.config.get("data", {}).get("kind") == "digits":
            return [art.path, _train_default_baseline(run, runs_dir, say)], art
        raise MonoconError(f"no {want} run of the same data as {run.path} under {runs_dir}/: run "
                           f"`{_train_hint(run, want)}` first")
    say(f"side by side with the {other.label} run of the same data: {other.path}")
    return [art.path, other.path], art


def _short(path: Path) -> Path:
    """Return ``path`` relative to the working directory where it lies below it (as the user would type it)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(path)


def _when(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M")


def _metric(summary: dict[str, Any]) -> str:
    final = summary.get("final", {})
    for key, label in (("recall@1", "R@1"), ("spearman", "STS ρ")):
        if isinstance(final.get(key), (int, float)):
            return f"{label} {final[key]:.4f}"
    return "-"


def _print_listing(console: Any, title: str, when: str, where: str, rows: list[tuple[str, str, str]]) -> None:
    """Print one rich table of ``rows``: (``when``, ``where``, what), titled ``title``."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column(when, no_wrap=True)
    table.add_column(where, no_wrap=True)
    table.add_column("what")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def print_runs(console: Any, runs_dir: Path) -> None:
    """Print the finished runs and the artifacts under ``runs_dir``, newest first (rich tables)."""
    from ..formatting import method_label

    runs = finished_runs(runs_dir)
    arts = artifacts(runs_dir)
    if not runs and not arts:
        raise MonoconError(f"no finished run or artifact under {runs_dir}/: run `monocon-edge train` first")
    rows = []
    for r in runs:
        d_eff = r.summary.get("final", {}).get("d_eff", r.summary.get("d_eff"))
        rows.append((_when(r.finished), str(r.path), f"{r.label}, d_eff {'-' if d_eff is None else d_eff}, "
                     f"{_metric(r.summary)}"))
    _print_listing(console, f"finished runs under {runs_dir}/, newest first", "finished", "run", rows)
    rows = []
    for a in arts:
        if a.problem is not None:
            rows.append((_when(a.created), str(a.path), f"unreadable: {a.problem}"))
            continue
        m = a.manifest
        head = method_label(m.get("head"), truncation=m.get("output", {}).get("truncation"))
        rows.append((_when(a.created), str(a.path),
                     f"{head} {m['output']['dims']}d {'+'.join(sorted(m.get('models', {})))}"))
    _print_listing(console, f"artifacts under {runs_dir}/, newest first", "exported", "artifact", rows)

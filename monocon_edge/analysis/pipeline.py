"""`analyze`: check the runs, recompute their best embeddings, measure, plot, and write the report files.

Output directory::

    OUT/analysis.json            every number below, per run (with the run's truncation method)
    OUT/analysis.md              the tables in Markdown
    OUT/index.html               tables + all figures
    OUT/clustermap-NN-RUN.png    feature-correlation clustermap per run (paper Figs. 2/7)
    OUT/deff-training.png        d_eff over training: encoder, head raw, head normalised (Fig. 4)
    OUT/recall-at-k.png          Recall@k, k = 1..10 (Fig. 6)
    OUT/tsne-NN-RUN.png          2-D t-SNE of held-out embeddings per run (with --tsne)
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..device.errors import MonoconError
from ..files import staging_dir, write_json_atomic, write_text_atomic
from ..formatting import method_label
from .compute import held_out_points, tsne_2d
from .run_metrics import CLUSTER_SAMPLE, RunAnalysis, measure_run
from ..runs import FinishedRun, embed_run, load_run, open_finished_run
from .tables import Table, comparison_tables, to_html, to_markdown
from ..events import EventFn, ignore_events

FORMAT_VERSION = 1
# A difference this large between a recomputed number and summary.json is worth a warning.
SUMMARY_TOLERANCE = 1e-3


@dataclass
class FigureFile:
    """A written PNG and its caption."""

    path: Path
    caption: str


@dataclass
class AnalysisResult:
    """What ``analyze`` wrote: the output directory, per-run numbers, tables, figures and warnings."""

    out_dir: Path
    runs: list[RunAnalysis]
    tables: list[Table]
    figures: list[FigureFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Return every file written."""
        return [self.out_dir / n for n in ("analysis.json", "analysis.md", "index.html")] + \
               [f.path for f in self.figures]


def check_runs(paths: list[str | Path]) -> list[FinishedRun]:
    """Return the finished runs at ``paths``; raise MonoconError for a bad, unfinished, repeated or
    mixed-modality list (all checked before any work starts)."""
    if not paths:
        raise MonoconError("give at least one run directory")
    seen: set[Path] = set()
    runs = []
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise MonoconError(f"{p} is given twice")
        seen.add(key)
        runs.append(open_finished_run(p))
    modalities = sorted({r.cfg.modality for r in runs})
    if len(modalities) > 1:
        mixed = ", ".join(f"{r.name} ({r.cfg.modality})" for r in runs)
        raise MonoconError(f"cannot compare vision and text runs in one analysis: {mixed}")
    return runs


def prepare_out_dir(out: str | Path | None, check_only: bool = False) -> Path:
    """Return the output directory (created); a non-empty one must hold an earlier analysis, whose figures
    are removed (so that none of another set of runs lingers). ``check_only``: raise on a bad one, change nothing."""
    path = Path(out) if out is not None else Path(f"analysis-{time.strftime('%Y%m%d-%H%M%S')}")
    if check_only:
        if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / "analysis.json").is_file())):
            prepare_out_dir(path)  # raises the error that says why
        return path
    if path.exists():
        if not path.is_dir():
            raise MonoconError(f"{path} exists and is not a directory")
        earlier = path / "analysis.json"
        if any(path.iterdir()) and not earlier.is_file():
            raise MonoconError(f"{path} is not empty and holds no earlier analysis: choose another --out")
        if earlier.is_file():
            try:
                figures = [f["file"] for f in json.loads(earlier.read_text(encoding="utf-8")).get("figures", [])]
            except (OSError, ValueError, TypeError, KeyError):
                raise MonoconError(f"{earlier} is unreadable: choose another --out") from None
            for name in figures:
                if Path(name).name == name and name.endswith(".png"):  # only our own flat file names
                    (path / name).unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _labels(runs: list[FinishedRun]) -> list[str]:
    """Return a plot label per run: its method, with the run name where two runs share a method."""
    methods = [method_label(r.cfg.model.head, r.cfg.optim.loss) for r in runs]
    counts = Counter(methods)
    return [m if counts[m] == 1 else f"{m} [{r.name}]" for m, r in zip(methods, runs)]


def _slug(i: int, name: str) -> str:
    return f"{i + 1:02d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "run")


def analyze(paths: list[str | Path], out: str | Path | None = None, *, tsne: bool = False,
            device: str = "cpu", on_event: EventFn | None = None) -> AnalysisResult:
    """Compare finished runs side by side and write tables, figures and index.html into ``out``.

    Returns the AnalysisResult. Progress goes to ``on_event(kind, info)`` (kinds: ``run``, ``warning``).
    """
    from . import plots

    emit = on_event or ignore_events
    runs = check_runs(paths)
    out_dir = prepare_out_dir(out, check_only=True)
    # Everything is written into a staging folder next to OUT and moved in at the end: a run that fails
    # half-way (a corrupt checkpoint, Ctrl-C) leaves neither a half-written OUT nor an earlier analysis changed.
    anchor = next(p for p in out_dir.absolute().parents if p.exists())
    staging = staging_dir(out_dir, anchor)
    try:
        result = _analyze(runs, staging, tsne, device, emit)
        final = prepare_out_dir(out_dir)
        for f in sorted(staging.iterdir()):
            os.replace(f, final / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.out_dir = final
    result.figures = [FigureFile(final / f.path.name, f.caption) for f in result.figures]
    return result


def _analyze(runs: list[FinishedRun], out_dir: Path, tsne: bool, device: str, emit: EventFn) -> AnalysisResult:
    """Write every analysis file into ``out_dir`` and return the AnalysisResult."""
    from . import plots

    result = AnalysisResult(out_dir, [], [])
    for i, (finished, label) in enumerate(zip(runs, _labels(runs))):
        emit("run", {"index": i + 1, "total": len(runs), "run": str(finished.run.path), "label": label})
        emb = embed_run(load_run(finished, device))
        analysis, clustering = measure_run(finished, emb, label, _slug(i, finished.name))
        result.runs.append(analysis)
        diff = analysis.summary_max_abs_diff
        if diff is not None and diff > SUMMARY_TOLERANCE:
            result.warnings.append(f"{finished.name}: recomputed metrics differ from summary.json by up to {diff:.4f}")
            emit("warning", {"message": result.warnings[-1]})
        fig = plots.clustermap_figure(clustering.ordered(), clustering.linkage,
                                      f"{label}: feature correlation, normalised output\n"
                                      f"({finished.name}, {min(len(emb.embeddings['train']), CLUSTER_SAMPLE)} train inputs)")
        path = plots.save_png(fig, out_dir / f"clustermap-{analysis.slug}.png")
        result.figures.append(FigureFile(path, f"{label} ({finished.name}): feature-correlation clustermap"))
        if tsne:
            labels = None
            if finished.cfg.modality == "vision":
                labels = emb.task.data.labels[emb.task.splits.val]
            held = held_out_points(finished.cfg.modality, emb.embeddings, labels)
            fig = plots.tsne_figure(tsne_2d(held.x), held.labels, held.paired,
                                    f"{label}: t-SNE of held-out embeddings ({len(held.x)} points)")
            path = plots.save_png(fig, out_dir / f"tsne-{analysis.slug}.png")
            result.figures.append(FigureFile(path, f"{label} ({finished.name}): t-SNE of held-out embeddings"))
        del emb
    series = [plots.DeffSeries(r.label, r.deff_history, r.d_enc, r.best_epoch) for r in result.runs]
    path = plots.save_png(plots.deff_figure(series), out_dir / "deff-training.png")
    result.figures.append(FigureFile(path, "d_eff over training: encoder output, head output raw and normalised"))
    protocol = "query -> gallery" if runs[0].cfg.modality == "vision" else "held-out pairs"
    path = plots.save_png(plots.recall_figure([(r.label, r.recall_at_k) for r in result.runs], protocol),
                          out_dir / "recall-at-k.png")
    result.figures.append(FigureFile(path, f"Recall@k, k = 1..10 ({protocol})"))
    result.tables = comparison_tables(result.runs)
    _write_reports(result)
    return result


def _write_reports(result: AnalysisResult) -> None:
    """Write analysis.json, analysis.md and index.html (figures referenced by relative path)."""
    out = result.out_dir
    write_json_atomic(out / "analysis.json", {
        "format_version": FORMAT_VERSION, "modality": result.runs[0].modality if result.runs else None,
        "runs": [r.to_dict() for r in result.runs],
        "figures": [{"file": f.path.name, "caption": f.caption} for f in result.figures],
        "warnings": result.warnings,
    })
    figures_md = "\n".join(f"![{f.caption}]({f.path.name})" for f in result.figures)
    write_text_atomic(out / "analysis.md", "# monocon-edge analysis\n\n" + to_markdown(result.tables)
                      + "\n## Figures\n\n" + figures_md + "\n")
    figures_html = "\n".join(
        f"<figure><img src='{html.escape(f.path.name)}' alt='{html.escape(f.caption)}'>"
        f"<figcaption>{html.escape(f.caption)}</figcaption></figure>" for f in result.figures)
    runs_html = "".join(f"<li>{html.escape(r.name)}: <code>{html.escape(r.run)}</code></li>" for r in result.runs)
    warn_html = "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in result.warnings)
    write_text_atomic(out / "index.html", f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>monocon-edge analysis</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; }}
table {{ border-collapse: collapse; margin-bottom: 0.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; }}
.note {{ color: #555; font-size: 0.9em; }} .warn {{ color: #a00; }}
figure {{ display: inline-block; margin: 1em; vertical-align: top; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>monocon-edge analysis</h1>
<ul>{runs_html}</ul>
{warn_html}
{to_html(result.tables)}
<h2>Figures</h2>
{figures_html}
</body></html>
""")

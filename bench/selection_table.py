"""Tabulate finished runs on the SELECTION split only (the figures recipe choices were made on).

Usage: python bench/selection_table.py RUN [RUN ...] --out bench/results/selection-NAME

Reads each run's summary.json and config.json; writes NAME.md and NAME.json with one row per run: the options
that differ between runs, d_eff and the selection-split metrics. Report-split figures (``report_*``) are left
out on purpose: they are never used for a choice.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monocon_edge.training.config import DataConfig, ModelConfig, OptimConfig  # noqa: E402

# An option a run's config.json lacks (written before the option existed) had its default.
DEFAULTS = {section: {f.name: f.default for f in dataclasses.fields(cls)}
            for section, cls in (("data", DataConfig), ("model", ModelConfig), ("optim", OptimConfig))}

TEXT = ("spearman", "spearman_pca16", "recall@1", "recall@1_pca16")
VISION = ("val_knn5", "val_recall@1", "val_recall@1_pca16", "val_recall@1_pca64")
OPTIONS = (("model", "head"), ("optim", "loss"), ("data", "hard_negatives"), ("model", "negative_slope"),
           ("model", "head_init"), ("model", "head_standardize"), ("optim", "distill"), ("optim", "temperature"),
           ("optim", "batch_size"), ("optim", "lr_head"), ("optim", "lr_warmup"), ("optim", "lr_encoder"),
           ("optim", "epochs"), ("optim", "warmup_epochs"), ("optim", "select_dims"), ("optim", "seed"))


def _row(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    final = summary["final"]
    metrics = TEXT if summary["modality"] == "text" else VISION
    row = {"run": run.name, "modality": summary["modality"], "d_eff": final.get("d_eff"),
           "best_epoch": summary.get("best_epoch")}
    for section, key in OPTIONS:
        row[key] = config.get(section, {}).get(key, DEFAULTS[section].get(key))
    for m in metrics:
        # Matryoshka runs are truncated by prefix: their 16-dim figure is the prefix one.
        key = m.replace("_pca", "_prefix") if summary.get("truncation") == "prefix" and "_pca" in m else m
        row[m] = final.get(key)
    return row


def parse_args(doc: str) -> argparse.Namespace:
    """Return the arguments a bench table script takes: run folders and ``--out`` (a path without suffix)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    return parser.parse_args()


def write_table(out: Path, markdown: str, data: object) -> None:
    """Write ``out``.md (the Markdown) and ``out``.json (``data``), creating the folder; print the Markdown.

    The suffixes are appended, not substituted: a name such as ``seeds-slope0.01`` keeps its last part."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".md").write_text(markdown)
    out.with_name(out.name + ".json").write_text(json.dumps(data, indent=1) + "\n")
    print(markdown, end="")


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Return the mean and its standard error (sample std / sqrt(n); None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def seed_means(rows: list[dict], options: list[str], metrics: tuple[str, ...]) -> list[str]:
    """Return Markdown lines of the mean ± standard error over seeds of each group of runs that differ only by
    seed (one row per group with two seeds or more; no lines when no group has two)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps([r[k] for k in options]), []).append(r)
    cols = [*options, "seeds", "d_eff", *metrics]
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        cells = [str(members[0][k]) for k in options] + [", ".join(str(m["seed"]) for m in members)]
        for c in ("d_eff", *metrics):
            mean, se = mean_se([m[c] for m in members if m[c] is not None])
            digits = 1 if c == "d_eff" else 4
            cells.append(f"{mean:.{digits}f} ± {se:.{digits}f}")
        out.append("| " + " | ".join(cells) + " |")
    if not out:
        return []
    return ["", "Mean ± standard error over the seeds of each option set (selection split):", "",
            "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *out]


def main() -> None:
    """Write the selection table of the given runs; print it as Markdown."""
    args = parse_args(__doc__)
    rows = [_row(r) for r in args.runs if (r / "summary.json").is_file()]
    if not rows:
        raise SystemExit("no finished run (summary.json) among the given paths")
    varying = [k for _, k in OPTIONS if len({json.dumps(r[k]) for r in rows}) > 1] or ["head"]
    metrics = TEXT if rows[0]["modality"] == "text" else VISION
    cols = ["run", *varying, "best_epoch", "d_eff", *metrics]
    lines = ["All figures on the SELECTION split (text: STS-B train + selection pairs; vision: the selection "
             "part of the train file, and the paper's train-split query/gallery protocol). *_pca16 / recall@1_pca16: "
             "after truncation to 16 dims (prefix for Matryoshka).", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) and c not in ("distill", "temperature", "negative_slope") and
                                       not c.startswith("lr") else str(r[c]) for c in cols) + " |")
    if "seed" in varying:
        lines += seed_means(rows, [k for k in varying if k != "seed"], metrics)
    write_table(args.out, "\n".join(lines) + "\n", rows)


if __name__ == "__main__":
    main()

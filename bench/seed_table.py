"""Report-split figures of one preset's models over several training seeds: mean ± standard error per model.

Usage: python bench/seed_table.py RUN [RUN ...] --out bench/results/seeds-NAME

Reads each finished run's summary.json, config.json and splits.npz and groups the runs by model (baseline,
MonoCon, std-MLP, Matryoshka). Runs are pooled only when they were trained and scored on the same data roles:
every run must hold the same report indices as the first one (train them with one ``--split-seed``), else the
script stops — a seed whose report part overlaps another seed's selection part would not be a held-out figure.
Besides each model's mean ± standard error (sample std / sqrt(n)), the table gives MonoCon's difference to each
model **paired by seed** (same seed, same split), mean ± standard error of the per-seed differences.
Figures are the report split's (never used for a choice); d_eff is measured on the train embeddings.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from monocon_edge.formatting import method_label  # noqa: E402
from selection_table import mean_se, parse_args, write_table  # noqa: E402

# (summary key, column heading); "{t}" is the run's truncation: pca, or prefix for Matryoshka runs.
TEXT = (("d_eff", "d_eff"), ("report_spearman", "Spearman full"), ("report_spearman_{t}16", "Spearman @16"),
        ("report_recall@1", "pair R@1 full"), ("report_recall@1_{t}16", "pair R@1 @16"))
VISION = (("d_eff", "d_eff"), ("report_knn5", "5-NN full"), ("report_recall@1", "R@1 full"),
          ("report_recall@1_{t}16", "R@1 @16"))
ORDER = ("baseline", "MonoCon", "std-MLP", "Matryoshka")


def _run(path: Path) -> dict:
    """Return the run's model name, seed, report indices and figures (None where the summary lacks one)."""
    summary = json.loads((path / "summary.json").read_text())
    config = json.loads((path / "config.json").read_text())
    with np.load(path / "splits.npz", allow_pickle=False) as z:
        report = z["report"] if "report" in z.files else np.zeros(0, np.int64)
    columns = TEXT if summary["modality"] == "text" else VISION
    t = summary.get("truncation", "pca")
    return {"run": str(path), "model": method_label(summary["head"], summary.get("loss")),
            "seed": config["optim"]["seed"], "modality": summary["modality"], "report": report,
            "figures": {heading: summary["final"].get(key.format(t=t)) for key, heading in columns}}


def _cell(mean: float, se: float | None, scale: float, digits: int) -> str:
    text = f"{mean * scale:.{digits}f}"
    return text if se is None else f"{text} ± {se * scale:.{digits}f}"


def seed_table(runs: list[Path]) -> dict:
    """Return {"modality", "columns", "models": {model: {"seeds", "runs", heading: {"mean", "se", "values"}}},
    "paired": {model: {heading: {"mean", "se", "seeds"}}}} — MonoCon minus each model, paired by seed.

    Raises SystemExit when a run's report indices differ from the first run's, or runs mix modalities.
    """
    rows = [_run(r) for r in runs if (r / "summary.json").is_file()]
    if not rows:
        raise SystemExit("no finished run (summary.json) among the given paths")
    if len({r["modality"] for r in rows}) > 1:
        raise SystemExit("the runs mix text and vision: give one preset's runs")
    first = rows[0]
    if not len(first["report"]):
        raise SystemExit(f"{first['run']} has no report split: train with --report-fraction > 0")
    for r in rows[1:]:
        if not np.array_equal(r["report"], first["report"]):
            raise SystemExit(f"{r['run']} was scored on another report split than {first['run']}: train every "
                             f"seed with the same --split-seed")
    headings = [h for _, h in (TEXT if first["modality"] == "text" else VISION)]
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    models = {}
    for model, members in sorted(by_model.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 9):
        seeds = [m["seed"] for m in members]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"two {model} runs share seed {seeds}: give each seed once")
        entry: dict = {"seeds": seeds, "runs": [m["run"] for m in members]}
        for h in headings:
            values = [m["figures"][h] for m in members if m["figures"][h] is not None]
            if values:
                mean, se = mean_se(values)
                entry[h] = {"mean": mean, "se": se, "values": values}
        models[model] = entry
    paired: dict[str, dict] = {}
    mono = {m["seed"]: m for m in by_model.get("MonoCon", [])}
    for model, members in by_model.items():
        if model == "MonoCon":
            continue
        diffs: dict = {}
        for h in headings:
            pairs = [(m["seed"], mono[m["seed"]]["figures"][h] - m["figures"][h]) for m in members
                     if m["seed"] in mono and m["figures"][h] is not None and mono[m["seed"]]["figures"][h] is not None]
            if pairs:
                mean, se = mean_se([d for _, d in pairs])
                diffs[h] = {"mean": mean, "se": se, "seeds": [s for s, _ in pairs]}
        if diffs:
            paired[model] = diffs
    return {"modality": first["modality"], "columns": headings, "models": models, "paired": paired}


def to_markdown(table: dict) -> str:
    """Return the table as Markdown: figures in % (Spearman ×100), d_eff as is."""
    cols = table["columns"]

    def fmt(h: str, stat: dict) -> str:
        return _cell(stat["mean"], stat["se"], 1.0, 1) if h == "d_eff" else _cell(stat["mean"], stat["se"], 100, 1)

    lines = ["REPORT split (never used for a choice); mean ± standard error over seeds (same split for every seed); "
             "Spearman and Recall@1 ×100; d_eff on the train embeddings.", "",
             "| model | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for model, entry in table["models"].items():
        cells = [fmt(h, entry[h]) if h in entry else "-" for h in cols]
        lines.append(f"| {model} | {', '.join(map(str, entry['seeds']))} | " + " | ".join(cells) + " |")
    if table["paired"]:
        lines += ["", "MonoCon minus each model, paired by seed (mean ± standard error of the per-seed differences; "
                      "positive: MonoCon higher):", "",
                  "| MonoCon − | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
        for model, diffs in table["paired"].items():
            seeds = next(iter(diffs.values()))["seeds"]
            cells = [fmt(h, diffs[h]) if h in diffs else "-" for h in cols]
            lines.append(f"| {model} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Write NAME.md and NAME.json for the given runs; print the Markdown."""
    args = parse_args(__doc__)
    table = seed_table(args.runs)
    write_table(args.out, to_markdown(table), table)


if __name__ == "__main__":
    main()

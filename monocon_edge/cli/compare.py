"""The closing table of ``bench``: every model side by side at the dims they share (MonoCon next to the baseline)."""
from __future__ import annotations

from typing import Any

# After each modality's Recall@k columns (bench.output.recall_columns):
COLUMNS = (("knn5_accuracy", "5-NN", ".4f"),
           ("sts_spearman", "STS ρ", ".4f"), ("latency_ms_p50", "p50 ms", ".3f"), ("model_kb", "model kB", ".0f"),
           ("index_bytes_per_vector", "B/vec", "d"))


def side_by_side_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the float32-codes rows at dims that at least two models share, grouped by dims (largest first)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    shared = [d for d in sorted({r["dims"] for r in rows}, reverse=True)
              if len({r["model"] for r in rows if r["dims"] == d}) >= 2]
    picked = [r for r in rows if r["dims"] in shared and r.get("index_codes") == "float32"]
    return sorted(picked, key=lambda r: (-r["dims"], r["precision"], models.index(r["model"])))


def print_side_by_side(console: Any, result: Any) -> None:
    """Print one table with every model at the dims they share; nothing when only one model was benched."""
    from rich.table import Table

    from ..bench.output import recall_columns
    from ..formatting import cell, method_label

    rows = side_by_side_rows(result.rows)
    if not rows:
        return
    rows = [dict(r, model_kb=r["model_bytes"] / 1000 if r.get("model_bytes") is not None else None) for r in rows]
    names = dict.fromkeys(f"{method_label(r['head'], truncation=r.get('truncation'))} = {r['model']}" for r in rows)
    table = Table(title="side by side (float32 index; the tables above have the int8 codes)", title_justify="left",
                  caption=", ".join(names), caption_justify="left")
    columns = recall_columns(r["modality"] for r in rows) + COLUMNS
    shown = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
    for label in ("dims", "model", "graph"):
        table.add_column(label, no_wrap=True)
    for _, label, _ in shown:
        table.add_column(label, justify="right")
    for r in rows:
        table.add_row(str(r["dims"]), method_label(r["head"], truncation=r.get("truncation")), r["precision"], *(cell(r.get(k), spec) for k, _, spec in shown))
    console.print(table)

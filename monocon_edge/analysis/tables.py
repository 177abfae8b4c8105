"""The comparison tables of `analyze` (paper Tables 1-3 layout), built once and rendered as Markdown, HTML
or (by the CLI) rich."""
from __future__ import annotations

import html
from dataclasses import dataclass

from .compute import RECALL_KS
from ..formatting import cell
from .run_metrics import RunAnalysis

METRIC_HEADERS = {"knn5": "5-NN acc", "recall@1": "Recall@1", "recall@5": "Recall@5", "spearman": "STS Spearman"}
SPLIT_NOTES = {
    "vision": ("selection split: 5-NN / Recall@k are the paper's protocol, query -> gallery inside the train split",
               "report split: held-out images no choice has seen, queried against the whole train split"),
    "text": ("selection data: STS Spearman on the selection STS file, Recall@k on the selection pairs",
             "report data: the report STS file and the report pairs, never used for a choice"),
}


@dataclass(frozen=True)
class Table:
    """A titled table of already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def numeric_columns(self) -> list[bool]:
        """Return, per column, whether every cell is a number (or "-"): those are right-aligned."""
        def is_number(cell: str) -> bool:
            try:
                float(cell)
                return True
            except ValueError:
                return cell == "-"
        return [bool(self.rows) and all(is_number(row[i]) for row in self.rows) for i in range(len(self.columns))]


def _size_rows(runs: list[RunAnalysis], figures, names: list[str]) -> list[list[str]]:
    """Return one row per run and size (full, then each truncation) of ``figures(run)[size][name]`` cells."""
    rows = []
    for r in runs:
        for size, values in figures(r).items():
            dims = f"{r.d_enc} (full)" if size == "full" else f"{size} ({r.truncation})"
            rows.append([r.name, r.method, dims] + [cell(values.get(m)) for m in names])
    return rows


def comparison_tables(runs: list[RunAnalysis]) -> list[Table]:
    """Return the tables comparing ``runs``: compression, retrieval full and truncated, Recall@k."""
    compression = Table(
        "Compression (best model)",
        ["run", "method", "d_enc", "d_eff (99 % var.)", "PCA recon. RMSE @ d_eff", "truncation"],
        [[r.name, r.method, str(r.d_enc), str(r.d_eff), f"{r.recon_rmse:.2e}", r.truncation] for r in runs],
        "d_eff and the reconstruction RMSE use a PCA of the normalised train embeddings (RMSE on held-out data).",
    )
    metrics = list(next(iter(runs[0].retrieval.values()))) if runs else []
    modality = runs[0].modality if runs else "vision"
    retrieval = Table(
        "Retrieval, full and truncated (selection / paper protocol)",
        ["run", "method", "dims"] + [METRIC_HEADERS.get(m, m) for m in metrics],
        _size_rows(runs, lambda r: r.retrieval, metrics),
        "Truncation: pca = projection on the train PCA, prefix = first d coordinates (Matryoshka); both "
        f"re-normalised. Sizes >= d_enc are left out. Data: {SPLIT_NOTES[modality][0]}.",
    )
    tables = [compression, retrieval]
    if any(r.report for r in runs):
        names = list(next(r.report for r in runs if r.report)["full"])
        tables.append(Table(
            "Retrieval on the REPORT split, full and truncated",
            ["run", "method", "dims"] + [METRIC_HEADERS.get(m.removeprefix("report_"), m) for m in names],
            _size_rows(runs, lambda r: r.report, names), f"Data: {SPLIT_NOTES[modality][1]}."))
    # One column per run: ten k columns would not fit a terminal.
    recall = Table(
        "Recall@k",
        ["k"] + [r.label for r in runs],
        [[str(k)] + [cell(r.recall_at_k[k]) for r in runs] for k in RECALL_KS],
    )
    return tables + [recall]


def to_markdown(tables: list[Table]) -> str:
    """Return the tables as GitHub-flavoured Markdown."""
    parts = []
    for t in tables:
        parts.append(f"### {t.title}\n")
        parts.append("| " + " | ".join(t.columns) + " |")
        parts.append("|" + "|".join("---:" if num else "---" for num in t.numeric_columns()) + "|")
        parts += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
        if t.note:
            parts.append(f"\n{t.note}")
        parts.append("")
    return "\n".join(parts)


def to_html(tables: list[Table]) -> str:
    """Return the tables as HTML fragments (escaped)."""
    parts = []
    for t in tables:
        align = ["right" if num else "left" for num in t.numeric_columns()]
        head = "".join(f"<th style='text-align:{a}'>{html.escape(c)}</th>" for c, a in zip(t.columns, align))
        body = "".join("<tr>" + "".join(f"<td style='text-align:{a}'>{html.escape(c)}</td>"
                                        for c, a in zip(row, align)) + "</tr>" for row in t.rows)
        note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
        parts.append(f"<h2>{html.escape(t.title)}</h2><table><thead><tr>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table>{note}")
    return "\n".join(parts)

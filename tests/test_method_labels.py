"""Every table names a method the same way: MonoCon, baseline, std-MLP, Matryoshka (also from bench rows)."""
from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from monocon_edge.cli.compare import print_side_by_side
from monocon_edge.formatting import method_label


def _row(model: str, head: str, truncation: str) -> dict:
    return {"model": model, "head": head, "truncation": truncation, "dims": 16, "precision": "fp32",
            "index_codes": "float32", "modality": "vision", "recall_at_1": 0.5, "model_bytes": 1000}


def test_method_label_names_matryoshka_by_loss_or_by_prefix_truncation() -> None:
    assert [method_label(h) for h in ("monotonic", "mlp", "none")] == ["MonoCon", "std-MLP", "baseline"]
    assert method_label("mlp", "matryoshka") == "Matryoshka"
    assert method_label("mlp", "supcon", truncation="prefix") == "std-MLP"  # the loss, where known, decides
    assert method_label("mlp", truncation="prefix") == "Matryoshka"
    assert method_label("mlp", truncation="pca") == "std-MLP"


def test_bench_side_by_side_calls_the_matryoshka_run_matryoshka() -> None:
    console = Console(record=True, width=300)
    rows = [_row("run-mlp", "mlp", "pca"), _row("run-mlp-matryoshka", "mlp", "prefix")]
    print_side_by_side(console, SimpleNamespace(rows=rows))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "std-MLP = run-mlp, Matryoshka = run-mlp-matryoshka" in text

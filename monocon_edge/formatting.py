"""Table text, one way for the console (cli.render), bench's Markdown and analysis's tables: numbers as cells,
heads by the names the tables give them."""
from __future__ import annotations

import numbers
from typing import Any

# What each head is called in tables (the paper's names).
HEAD_LABELS = {"monotonic": "MonoCon", "none": "baseline", "mlp": "std-MLP"}


def method_label(head: Any, loss: Any = None, truncation: Any = None) -> Any:
    """Return the method's name as the paper's tables use it (MonoCon, baseline, std-MLP, Matryoshka); an
    unknown head as given.

    A Matryoshka run is known by its ``loss``, or, where only an artifact or a bench row is at hand, by its
    ``truncation`` (``prefix``: only Matryoshka runs are truncated by prefix).
    """
    if loss == "matryoshka" or (loss is None and truncation == "prefix"):
        return "Matryoshka" if head == "mlp" else f"Matryoshka ({head} head)"
    return HEAD_LABELS.get(head, head)


def cell(value: Any, spec: str | None = None) -> str:
    """Return ``value`` as a table cell: "-" when missing; with ``spec`` formatted by it (``str`` where it does
    not apply); without, real non-integers with 4 decimals and anything else as ``str``."""
    if value is None:
        return "-"
    if spec is None:
        if isinstance(value, (bool, numbers.Integral)) or not isinstance(value, numbers.Real):
            return str(value)
        spec = ".4f"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)

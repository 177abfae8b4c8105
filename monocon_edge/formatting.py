"""Numbers as table cells, one way for the console (cli.render), bench's Markdown and analysis's tables."""
from __future__ import annotations

import numbers
from typing import Any


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

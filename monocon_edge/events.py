"""How library code reports progress: it calls ``on_event(kind, info)`` and the CLI renders it (no code under
``monocon_edge`` prints, except the CLI)."""
from __future__ import annotations

from typing import Any, Callable

EventFn = Callable[[str, dict[str, Any]], None]


def ignore_events(kind: str, info: dict[str, Any]) -> None:
    """The EventFn of a caller that does not listen."""

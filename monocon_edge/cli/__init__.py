"""The command line: ``commands`` (typer, thin: parse, call one library function) and ``render`` (rich output)."""
from .commands import app, main

__all__ = ["app", "main"]

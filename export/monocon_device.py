#!/usr/bin/env python3
"""The device CLI from a source checkout, with monocon-edge installed: ``python export/monocon_device.py check ART``.

It runs the launcher that export writes into every artifact as ``ARTIFACT/monocon_device.py`` — whose one copy
is ``monocon_edge/exporting/launcher/monocon_device.py`` — as if it stood here (this folder is its home).
"""
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "monocon_edge" / "exporting" / "launcher" / "monocon_device.py"
exec(compile(SOURCE.read_bytes(), str(SOURCE), "exec"), {"__name__": __name__, "__file__": __file__})

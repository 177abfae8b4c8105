"""Peak memory of a process that loads an artifact and embeds, measured in a fresh child process.

The bench process itself holds torch, the data and every model, so its own RSS says nothing about a device;
the child (``probe``) imports only the torch-free runtime.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..device.errors import MonoconError

PROBE_TIMEOUT_S = 600


@dataclass(frozen=True)
class MemoryProbe:
    """Peak RSS (MiB) of the child after loading + embedding, and its RSS before importing the runtime."""

    peak_rss_mb: float
    baseline_rss_mb: float
    source: str
    batch: int
    torch_imported: bool


def probe_peak_rss(artifact: Path, precision: str, threads: int, batch: int, repeats: int = 2,
                   providers: Sequence[str] | None = None) -> MemoryProbe:
    """Return the MemoryProbe of a child that loads ``artifact`` at ``precision`` and embeds ``batch`` inputs.

    Raises MonoconError when the child fails (its one-line reason is passed on).
    """
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "monocon_edge.bench.probe", str(artifact), precision, str(threads), str(batch),
           str(repeats), ",".join(providers or [])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise MonoconError(f"memory probe of {artifact} ({precision}) took over {PROBE_TIMEOUT_S} s") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    info = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or "peak_rss_kb" not in info:
        reason = info.get("error") or (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MonoconError(f"memory probe of {artifact} ({precision}) failed: {reason}")
    return MemoryProbe(info["peak_rss_kb"] / 1024.0, info["baseline_rss_kb"] / 1024.0, info["source"], batch,
                       bool(info["torch_imported"]))

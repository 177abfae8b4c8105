"""Tiny configs for fast tests."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from monocon_edge.training.config import RunConfig, override, preset


def tiny_digits(head: str = "monotonic", **optim) -> RunConfig:
    """Return the embedded default shrunk to a few seconds: 400 digits, width-4 CNN, 3 epochs."""
    cfg = preset("default", head)
    cfg = override(cfg, "data", max_train=400)
    cfg = override(cfg, "model", width=4)
    return override(cfg, "optim", **{"epochs": 3, "warmup_epochs": 1, "batch_size": 64, **optim})


def with_name(cfg: RunConfig, name: str) -> RunConfig:
    """Return ``cfg`` renamed."""
    return dataclasses.replace(cfg, name=name)


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Return {relative path: (size, mtime_ns)} of every file and folder under ``folder`` (to prove it untouched)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def bench_script(name: str) -> ModuleType:
    """Return the module of ``bench/<name>.py`` (a script, not a package), loaded afresh."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

"""What makes an artifact folder all a device needs: the runtime, the device CLI and its requirements.

``write_device_bundle(folder, modality)`` writes into an artifact being built:

    monocon_runtime/      the torch-free device package (monocon_edge/device, copied as it is: it only uses
                          relative imports, so it imports under any name)
    monocon_device.py     the device CLI (check, embed, index, query), which imports monocon_runtime next to it:
                          a copy of launcher/monocon_device.py (package data)
    requirements.txt      numpy, onnxruntime (+ tokenizers for text, + Pillow for image files)

The manifest lists all of them with their sha256 (build.py checksums the whole folder afterwards).
"""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from ..device.errors import MonoconError

RUNTIME_DIR = "monocon_runtime"
DEVICE_SCRIPT = "monocon_device.py"
REQUIREMENTS = "requirements.txt"
# Lower bounds: the oldest releases the runtime is written for (the same as pyproject.toml's).
BASE_REQUIREMENTS = ("numpy>=1.24", "onnxruntime>=1.18")
TEXT_REQUIREMENTS = ("tokenizers>=0.15",)
IMAGE_REQUIREMENTS = ("Pillow>=9",)


def device_package_dir() -> Path:
    """Return the folder of the torch-free device package (monocon_edge/device)."""
    return Path(str(resources.files("monocon_edge.device")))


def launcher_path() -> Path:
    """Return the device launcher that becomes ARTIFACT/monocon_device.py: the package data file
    launcher/monocon_device.py (export/monocon_device.py in a checkout runs the same file). The CLI itself is
    monocon_edge/device/cli.py, shipped as monocon_runtime/cli.py."""
    return Path(str(resources.files("monocon_edge.exporting"))) / "launcher" / DEVICE_SCRIPT


def requirements(modality: str, versions: dict[str, str] | None = None) -> str:
    """Return requirements.txt for a ``modality`` artifact; ``versions``: what the export ran with (a comment)."""
    lines = ["# What monocon_device.py and monocon_runtime/ need on a device: pip install -r requirements.txt",
             "# (no torch, no monocon-edge)."]
    if versions:
        lines.append("# Exported and gated with " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".")
    reqs = list(BASE_REQUIREMENTS)
    if modality == "text":
        reqs += TEXT_REQUIREMENTS
    else:
        lines.append("# Pillow reads image files (PNG, JPEG, ...); .npy/.npz arrays need only numpy.")
        reqs += IMAGE_REQUIREMENTS
    return "\n".join(lines + reqs) + "\n"


def write_device_bundle(folder: Path, modality: str, versions: dict[str, str] | None = None) -> list[str]:
    """Copy the runtime and the device script into ``folder``, write requirements.txt; return the paths written."""
    src = device_package_dir()
    modules = sorted(p for p in src.glob("*.py"))
    launcher = launcher_path()
    if not (src / "__init__.py").is_file() or not (src / "cli.py").is_file() or not launcher.is_file():
        raise MonoconError(f"the device runtime is incomplete in {src.parent}: reinstall monocon-edge")
    dest = folder / RUNTIME_DIR
    dest.mkdir()
    written = []
    for module in modules:  # the .py files only: no __pycache__
        shutil.copyfile(module, dest / module.name)
        written.append(f"{RUNTIME_DIR}/{module.name}")
    shutil.copyfile(launcher, folder / DEVICE_SCRIPT)
    (folder / REQUIREMENTS).write_text(requirements(modality, versions), encoding="utf-8")
    return written + [DEVICE_SCRIPT, REQUIREMENTS]

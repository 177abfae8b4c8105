"""What makes an artifact folder all a device needs: the runtime, the device CLI and its requirements.

``write_device_bundle(folder, modality)`` writes into an artifact being built:

    monocon_runtime/      the torch-free device package (monocon_edge/device, copied as it is: it only uses
                          relative imports, so it imports under any name)
    monocon_device.py     the device CLI (check, embed, index, query), which imports monocon_runtime next to it
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


# The launcher written as ARTIFACT/monocon_device.py; export/monocon_device.py in the repository is the same text
# (a test keeps them identical). The CLI itself is monocon_edge/device/cli.py, shipped as monocon_runtime/cli.py.
LAUNCHER = '''#!/usr/bin/env python3
"""monocon-edge on a device: check an artifact, embed images or sentences, build an index, answer queries.

Every artifact folder holds this script next to ``monocon_runtime/`` (the torch-free runtime) and
``requirements.txt``. On a device, in the artifact folder:

    pip install -r requirements.txt           # numpy, onnxruntime (+ tokenizers, + Pillow); no torch
    python monocon_device.py check            # manifest sealed, every sha256 matches, every graph loads
    python monocon_device.py index --images photos/ --out gallery.npz
    python monocon_device.py query --index gallery.npz --images queries/ --top-k 5
    python monocon_device.py --help

The artifact defaults to this script's folder; pass another folder as the second argument.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave the artifact folder as it was exported
try:
    if (HERE / "monocon_runtime" / "__init__.py").is_file():
        sys.path.insert(0, str(HERE))
        from monocon_runtime.cli import main
    else:  # a source checkout (export/monocon_device.py) with monocon-edge installed
        from monocon_edge.device.cli import main
except ImportError as exc:
    HINT = f": install what it needs first: pip install -r {HERE / 'requirements.txt'}"
    NEEDED = ("numpy", "onnxruntime", "tokenizers", "PIL")
    sys.exit(f"error: cannot start the device runtime: {exc}{HINT if exc.name in NEEDED else ''}")

if __name__ == "__main__":
    sys.exit(main(home=HERE))
'''


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
    if not (src / "__init__.py").is_file() or not (src / "cli.py").is_file():
        raise MonoconError(f"the device runtime is incomplete in {src.parent}: reinstall monocon-edge")
    dest = folder / RUNTIME_DIR
    dest.mkdir()
    written = []
    for module in modules:  # the .py files only: no __pycache__
        shutil.copyfile(module, dest / module.name)
        written.append(f"{RUNTIME_DIR}/{module.name}")
    (folder / DEVICE_SCRIPT).write_text(LAUNCHER, encoding="utf-8")
    (folder / REQUIREMENTS).write_text(requirements(modality, versions), encoding="utf-8")
    return written + [DEVICE_SCRIPT, REQUIREMENTS]

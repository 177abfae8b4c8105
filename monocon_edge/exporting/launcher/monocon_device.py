#!/usr/bin/env python3
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

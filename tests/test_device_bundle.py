"""What export puts into every artifact for the device: the self-contained runtime, the launcher, requirements."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from monocon_edge.device.artifact import MANIFEST
from monocon_edge.exporting import device_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_the_launcher_in_the_repository_is_the_one_export_writes() -> None:
    assert (ROOT / "export" / "monocon_device.py").read_text() == device_bundle.LAUNCHER


def test_export_bundles_runtime_script_and_requirements_listed_in_the_manifest(digits_artifact) -> None:
    import json

    manifest = json.loads((digits_artifact / MANIFEST).read_text())
    runtime_files = {f"monocon_runtime/{p.name}" for p in (ROOT / "monocon_edge" / "device").glob("*.py")}
    assert runtime_files | {"monocon_device.py", "requirements.txt"} <= set(manifest["files"])
    for rel in runtime_files:
        name = rel.split("/")[1]
        assert (digits_artifact / rel).read_bytes() == (ROOT / "monocon_edge" / "device" / name).read_bytes()
    reqs = (digits_artifact / "requirements.txt").read_text()
    assert "numpy" in reqs and "onnxruntime" in reqs and "Pillow" in reqs and "tokenizers" not in reqs
    assert "tokenizers" in device_bundle.requirements("text") and "Pillow" not in device_bundle.requirements("text")


def test_launcher_without_the_requirements_says_what_to_install(digits_artifact, tmp_path) -> None:
    # -S -I: no site-packages, so numpy is missing as on a bare device
    done = subprocess.run([sys.executable, "-S", "-I", str(digits_artifact / "monocon_device.py"), "check"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "No module named 'numpy'" in done.stderr and "pip install -r" in done.stderr

"""What export puts into every artifact for the device: the self-contained runtime, the launcher, requirements."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from monocon_edge.device.artifact import MANIFEST
from monocon_edge.exporting import device_bundle

ROOT = Path(__file__).resolve().parents[1]


LAUNCHER = ROOT / "monocon_edge" / "exporting" / "launcher" / "monocon_device.py"


def test_the_launcher_in_the_repository_is_the_one_export_writes(digits_artifact) -> None:
    # One copy: the package data file is what export copies into the artifact, byte for byte ...
    assert device_bundle.launcher_path().resolve() == LAUNCHER
    assert (digits_artifact / "monocon_device.py").read_bytes() == LAUNCHER.read_bytes()
    # ... and what export/monocon_device.py runs in a checkout.
    probe = "import runpy, sys; print(runpy.run_path(sys.argv[1], run_name='probe')['SOURCE'])"
    done = subprocess.run([sys.executable, "-c", probe, str(ROOT / "export" / "monocon_device.py")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(LAUNCHER)]


def test_installed_packages_carry_the_launcher() -> None:
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    patterns = data["package-data"]["monocon_edge.exporting"]
    assert any(LAUNCHER.match(f"monocon_edge/exporting/{pattern}") for pattern in patterns)


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

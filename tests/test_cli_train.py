"""The train command as a user meets it: tables on success, one clear line and exit != 0 on bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from monocon_edge.cli import app

runner = CliRunner()
TINY = ["--max-train", "300", "--width", "4", "--epochs", "2", "--batch-size", "64"]


def _fails_cleanly(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert expected in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_train_prints_table_and_run_dir(tmp_path) -> None:
    result = runner.invoke(app, ["train", *TINY, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "final metrics" in result.output and "Recall@1" in result.output
    assert str(tmp_path / "r") in result.output.replace("\n", "")


def test_split_seed_fixes_the_data_roles_across_seeds(tmp_path) -> None:
    # Two seeds with one --split-seed train on the same split (no seed's report part is another's selection part);
    # without it the split follows --seed, as before.
    def splits(split_seed: int, *args: str) -> dict[str, np.ndarray]:
        out = tmp_path / "-".join(args)
        result = runner.invoke(app, ["train", *TINY, "--epochs", "1", "--report-fraction", "0.5", *args,
                                     "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "summary.json").read_text())["split_seed"] == split_seed  # the summary says it
        with np.load(out / "splits.npz") as z:
            return {k: z[k] for k in z.files}

    a, b, c = splits(7, "--seed", "1", "--split-seed", "7"), splits(7, "--seed", "2", "--split-seed", "7"), \
        splits(2, "--seed", "2")
    assert a.keys() == b.keys() and "report" in a
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(b["report"], c["report"])


def test_help_lists_heads() -> None:
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "monotonic" in result.output


@pytest.mark.parametrize("args, expected", [
    (["--preset", "nope"], "unknown preset"),
    (["--head", "wide"], "unknown head"),
    (["--data", "/nonexistent/x.npz"], "data file not found"),
    (["--preset", "cifar10", "--weights", "none", "--data-dir", "/nonexistent"], "not found"),
    (["--device", "tpu"], "unknown device"),
    (["--resume", "/nonexistent/run"], "run directory not found"),
    (["--init-from", "/nonexistent/run"], "run directory not found"),
    (["--encoder", "resnet18"], "RGB"),
    (["--split-seed", "-1"], "--split-seed must be >= 0"),
    (["--negative-slope", "-0.1"], "--negative-slope must lie in [0, 1)"),
])
def test_bad_input_gives_one_clear_line(args, expected, tmp_path) -> None:
    _fails_cleanly(["train", *args, "--out", str(tmp_path / "r")], expected)
    assert not (tmp_path / "r").exists()


def test_wrong_npz_keys(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((8, 4, 4, 3), np.uint8), labels=np.zeros(8, np.int64))
    _fails_cleanly(["train", "--data", str(bad), "--out", str(tmp_path / "r")], "lacks the key(s) images")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    _fails_cleanly(["train", "--data", str(junk), "--out", str(tmp_path / "r")], "cannot read")


def test_imagenet_weights_offline_fail_clearly(tmp_path, monkeypatch) -> None:
    import torchvision

    def offline(*_a, **_k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    _fails_cleanly(["train", "--preset", "cifar10", "--encoder", "resnet18", "--data-dir", str(tmp_path)],
                   "could not get ImageNet weights")


def test_resume_on_a_non_run_directory(tmp_path) -> None:
    (tmp_path / "plain").mkdir()
    _fails_cleanly(["train", "--resume", str(tmp_path / "plain")], "not a monocon-edge run directory")


def test_export_help_names_every_int8_scheme() -> None:
    from monocon_edge.exporting.int8_schemes import SCHEMES

    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0
    help_line = " ".join(result.output.split())
    assert all(f"| {name}" in help_line for name in SCHEMES), help_line

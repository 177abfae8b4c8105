"""End-to-end tiny trainings on the real data sets in ../shared/data (vision npz, NLI pairs + STS-B)."""
from __future__ import annotations

from pathlib import Path

import pytest

from monocon_edge.training.config import CIFAR10_SUBSET, NLI_PAIRS, STSB_DEV, TINY_IMAGENET, override, preset
from monocon_edge.training.run_dir import RunDir
from monocon_edge.training.loop import train

pytestmark = pytest.mark.shared_data


def small_sts(shared: Path, tmp_path: Path, rows: int = 150) -> str:
    """Return a TSV with the first ``rows`` pairs of the real STS-B dev file."""
    lines = (shared / STSB_DEV).read_text(encoding="utf-8").splitlines()
    out = tmp_path / "stsb_small.tsv"
    out.write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    return str(out)


@pytest.mark.parametrize("data_file", [TINY_IMAGENET, CIFAR10_SUBSET])
def test_vision_baseline_then_monocon_on_real_images(shared_data: Path, tmp_path: Path, data_file: str) -> None:
    def tiny(head: str):
        cfg = override(preset("tiny-imagenet-100", head), "data", path=str(shared_data / data_file), max_train=600)
        cfg = override(cfg, "model", width=4)
        return override(cfg, "optim", epochs=2, warmup_epochs=1, batch_size=64, eval_every=1)

    base = train(tiny("none"), tmp_path / "base")
    mono = train(override(tiny("monotonic"), None, init_from=str(base.run_dir)), tmp_path / "mono")
    for result in (base, mono):
        summary = RunDir(result.run_dir).read_summary()
        assert summary["input"]["shape"] == [3, 32, 32]
        assert 0 <= summary["final"]["recall@1"] <= 1 and summary["final"]["d_eff"] >= 1
    assert [r["phase"] for r in mono.history] == ["init", "warmup", "main"]


def test_text_pairs_with_frozen_minilm(shared_data: Path, tmp_path: Path) -> None:
    pairs = ",".join(str(shared_data / p) for p in NLI_PAIRS)
    cfg = override(preset("nli-pairs", "monotonic"), "data", path=pairs, max_train=400,
                   val_path=small_sts(shared_data, tmp_path))
    cfg = override(cfg, "optim", epochs=2, batch_size=32)
    result = train(cfg, tmp_path / "text")
    final = result.final
    assert -1 <= final["spearman"] <= 1
    assert 0 <= final["recall@1"] <= 1
    assert final["d_eff_encoder"] > final["d_eff"] >= 1  # the monotonic head concentrates the spectrum
    summary = RunDir(result.run_dir).read_summary()
    assert summary["d_enc"] == 384 and summary["input"]["kind"] == "text"


def test_text_baseline_is_the_encoder_itself(shared_data: Path, tmp_path: Path) -> None:
    cfg = override(preset("nli-pairs", "none"), "data", path=str(shared_data / NLI_PAIRS[2]), max_train=300,
                   val_path=small_sts(shared_data, tmp_path))
    result = train(cfg, tmp_path / "base")
    # A frozen encoder without a head has nothing to train: one evaluation, at epoch 0.
    assert [r["epoch"] for r in result.history] == [0]
    assert result.final["d_eff"] == result.final["d_eff_encoder"]

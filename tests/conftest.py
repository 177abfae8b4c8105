"""Shared fixtures: the ../shared/data location (skip where absent, fail in CI), tiny run configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from monocon_edge.training.config import shared_data_root

REQUIRE_SHARED = os.environ.get("MONOCON_REQUIRE_SHARED_DATA") == "1"


@pytest.fixture(scope="session", autouse=True)
def _private_feature_cache(tmp_path_factory) -> None:
    """Keep the tests' encoder-feature cache out of the user's ~/.cache."""
    os.environ["MONOCON_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return ../shared/data; skip (or fail, when MONOCON_REQUIRE_SHARED_DATA=1) where it is absent."""
    root = shared_data_root()
    if root is None:
        message = "../shared/data is absent (set MONOCON_DATA_ROOT to its location)"
        if REQUIRE_SHARED:
            pytest.fail(message + " but MONOCON_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(message)
    return root


class TinyRuns:
    """Tiny finished runs on digits, trained on first use and shared by the whole test session."""

    KINDS = ("none", "monotonic", "mlp", "matryoshka")

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[str, Path] = {}

    def __getitem__(self, kind: str) -> Path:
        """Return the run directory of ``kind`` (a head, or "matryoshka": std-MLP head + Matryoshka loss)."""
        if kind not in self._done:
            from helpers import tiny_digits
            from monocon_edge.training.config import with_loss
            from monocon_edge.training.loop import train

            cfg = tiny_digits("mlp" if kind == "matryoshka" else kind, epochs=3, warmup_epochs=0, batch_size=32)
            cfg = with_loss(cfg, "matryoshka") if kind == "matryoshka" else cfg
            self._done[kind] = train(cfg, self.root / kind).run_dir
        return self._done[kind]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> TinyRuns:
    """Return the session's TinyRuns: ``tiny_runs[kind]`` is a finished run directory (treat it as read-only)."""
    return TinyRuns(tmp_path_factory.mktemp("tiny-runs"))


# ----- export / runtime: one artifact of the baseline run, built once per session (copy it to modify) -----
@pytest.fixture(scope="session")
def digits_artifact(tiny_runs, tmp_path_factory) -> Path:
    """Return a 16-d fp32 + int8 artifact of the tiny baseline digits run; treat as read-only (copy to modify)."""
    from monocon_edge.exporting.build import ExportOptions, export_run
    from monocon_edge.exporting.gates import GateThresholds

    out = tmp_path_factory.mktemp("artifacts") / "digits-d16"
    # 36 queries: one flipped query is 2.8 Recall@1 points, so this fixture does not gate on the drop.
    opts = ExportOptions(dims=16, int8=True, out=out, thresholds=GateThresholds(int8_max_recall_drop_points=100.0))
    return export_run(tiny_runs["none"], opts).path

"""Shared fixtures: the ../shared/data location (skip where absent, fail in CI), tiny run configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from monocon_edge.config import shared_data_root

REQUIRE_SHARED = os.environ.get("MONOCON_REQUIRE_SHARED_DATA") == "1"


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

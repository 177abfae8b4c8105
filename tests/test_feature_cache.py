"""The encoder-feature cache: a hit returns the stored arrays, a changed encoder misses."""
from __future__ import annotations

import numpy as np
import torch

from monocon_edge.training import feature_cache as fc


def test_hit_and_miss(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MONOCON_CACHE_DIR", str(tmp_path))
    calls = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return {"train": np.arange(6, dtype=np.float32).reshape(2, 3)}

    net = torch.nn.Linear(3, 2)
    key = fc.key_for(fc.fingerprint(net), ["a", "b"])
    first = fc.load_or_compute(key, compute)
    second = fc.load_or_compute(key, compute)
    assert len(calls) == 1 and np.array_equal(first["train"], second["train"])
    with torch.no_grad():
        net.weight[0, 0] += 1.0
    assert fc.key_for(fc.fingerprint(net), ["a", "b"]) != key
    assert fc.key_for("x", ["ab"]) != fc.key_for("x", ["a", "b"])


def test_damaged_entry_is_recomputed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MONOCON_CACHE_DIR", str(tmp_path))
    (tmp_path / "k.npz").write_bytes(b"garbage")
    out = fc.load_or_compute("k", lambda: {"x": np.ones(2)})
    assert np.array_equal(out["x"], np.ones(2))

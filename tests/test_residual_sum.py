"""Residual Adds written as Sum: exact, not fused into SkipLayerNormalization by onnxruntime at load, and kept only
where it measurably helps (fp32 or its dynamic int8 graph)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from monocon_edge.device.artifact import sha256_file
from monocon_edge.exporting.latency import session
from monocon_edge.exporting.residual_sum import residual_adds_as_sum, try_residual_sum

VOCAB, HIDDEN = 2048, 32


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> Path:
    from helpers import tiny_text_graph

    return tiny_text_graph(tmp_path_factory.mktemp("residual") / "model.onnx", VOCAB, HIDDEN)


def _feeds(seed: int, batch: int = 4, length: int = 10) -> dict[str, np.ndarray]:
    from helpers import token_batches

    return token_batches(seed, 1, batch, length, VOCAB)[0]


def _loaded_ops(path: Path, tmp: Path) -> list[str]:
    """Return the op types of the graph as onnxruntime runs it (after its load-time fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / "loaded.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp / "loaded.onnx")).graph.node]


def test_sums_are_exact_and_escape_the_skip_layernorm_fusion(tiny_text, tmp_path) -> None:
    assert _loaded_ops(tiny_text, tmp_path).count("SkipLayerNormalization") == 4  # 2 layers x 2 residuals
    model = onnx.load(str(tiny_text))
    assert residual_adds_as_sum(model) == 5  # those 4 and the embeddings' word + position Add
    onnx.save_model(model, str(tmp_path / "sum.onnx"))
    onnx.checker.check_model(str(tmp_path / "sum.onnx"), full_check=True)
    ops = _loaded_ops(tmp_path / "sum.onnx", tmp_path)
    assert "SkipLayerNormalization" not in ops and ops.count("Sum") == 5
    a, b = session(tiny_text), session(tmp_path / "sum.onnx")
    for seed in range(3):
        feeds = _feeds(seed)
        # the same additions; only the fused kernel's LayerNorm rounds differently
        np.testing.assert_allclose(b.run(None, feeds)[0], a.run(None, feeds)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("fp32_ratio, int8_ratio, kept", [
    (0.97, 0.80, True),  # the int8 graph gains, fp32 no worse
    (0.99, 0.98, False),  # no measurable gain
    (1.10, 0.80, False),  # fp32 loses more than the margin
])
def test_the_sum_graph_ships_only_where_it_measurably_helps(tiny_text, tmp_path, monkeypatch, fp32_ratio, int8_ratio,
                                                            kept) -> None:
    from monocon_edge.exporting import int8_select

    from helpers import graph_copy

    graph, before = graph_copy(tiny_text, tmp_path)
    fixed = {"fp32": 1.0, "fp32_sum": fp32_ratio, "dynamic": 0.5, "dynamic_sum": 0.5 * int8_ratio}
    monkeypatch.setattr(int8_select, "blocked_latency", lambda paths, *a, **k: {n: {"cpu_p50_ms": fixed[n]} for n in paths})
    record = try_residual_sum(graph, [_feeds(0)], [_feeds(1, batch=1)], calls=5, atol=1e-5)
    assert record["sums"] == 5 and record["max_abs_diff_to_add"] <= 1e-6
    assert record["kept"] is kept and record["sum_over_add_p50"]["dynamic_sum"] == pytest.approx(int8_ratio)
    assert (sha256_file(graph) != before) is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no candidate or int8 file left
    assert (sum(n.op_type == "Sum" for n in onnx.load(str(graph)).graph.node) == 5) is kept

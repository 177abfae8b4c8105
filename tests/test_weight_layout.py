"""The fp32 weight-layout rewrite (weight MatMuls as Gemm(Wᵀ, x)): exact on a tiny BERT, every weight MatMul moved,
Q/K/V stacked, the feed-forward pair kept transposed, other MatMuls left alone; and the measured decision."""
from __future__ import annotations

import collections
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from monocon_edge.device.artifact import sha256_file
from monocon_edge.device.errors import GateError, MonoconError
from monocon_edge.exporting import weight_layout
from monocon_edge.exporting.latency import session
from monocon_edge.exporting.weight_layout import try_weight_layout, weights_as_left_operand

VOCAB, HIDDEN = 2048, 32


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> Path:
    """Return a tiny BERT graph fused as export ships MiniLM's (MultiHeadAttention, BiasGelu, SkipLayerNorm)."""
    from helpers import tiny_text_graph
    from onnxruntime.transformers.optimizer import optimize_model

    from monocon_edge.exporting.attention_fusion import fuse_attention

    folder = tmp_path_factory.mktemp("layout")
    optimized = optimize_model(str(tiny_text_graph(folder / "exported.onnx", VOCAB, HIDDEN)), model_type="bert",
                               num_heads=0, hidden_size=0, opt_level=0)
    model = optimized.model
    assert fuse_attention(model)
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # BERT starts with zero biases: give them values the rewrite must carry
        if "bias" in init.name and len(init.dims) == 1:
            value = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(value + rng.standard_normal(value.shape).astype(np.float32) * 0.1,
                                                  init.name))
    onnx.save_model(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def _batches(seed: int, batch: int, length: int, n: int = 2) -> list[dict[str, np.ndarray]]:
    from helpers import token_batches

    return token_batches(seed, n, batch, length, VOCAB)  # padded rows: the mask must reach attention and pooling


def _weight_matmuls(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def _rewritten(src: Path, dst: Path) -> tuple[onnx.ModelProto, dict]:
    model = onnx.load(str(src))
    stats = weights_as_left_operand(model)
    onnx.save_model(model, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    return model, stats


def test_rewrite_is_exact_and_moves_every_weight_matmul(tiny_text, tmp_path) -> None:
    before = onnx.load(str(tiny_text))
    assert len(_weight_matmuls(before)) == 12  # 2 layers x (Q, K, V, output, FFN in, FFN out)
    model, stats = _rewritten(tiny_text, tmp_path / "t.onnx")
    assert _weight_matmuls(model) == []
    # per layer: one Gemm for the stacked Q/K/V, one for the attention output, two for the feed-forward pair
    assert stats == {"matmuls": 12, "gemms": 8, "merged_groups": 2, "transposes": 6}
    inits = {i.name: i for i in model.graph.initializer}
    left = [n for n in model.graph.node if n.op_type == "Gemm" and n.input[0] in inits
            and n.input[1] not in inits]
    assert len(left) == 8 and {tuple(inits[n.input[0]].dims) for n in left} == {(96, 32), (32, 32), (64, 32), (32, 64)}
    a, b = session(tiny_text, threads=1), session(tmp_path / "t.onnx", threads=1)
    for batch, length in ((1, 1), (1, 9), (1, 17), (5, 12), (64, 30)):
        for feeds in _batches(batch * 100 + length, batch, length):
            want, got = a.run(None, feeds)[0], b.run(None, feeds)[0]
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_feed_forward_pair_hands_over_its_result_transposed(tiny_text, tmp_path) -> None:
    model, _ = _rewritten(tiny_text, tmp_path / "t.onnx")
    producers = {o: n for n in model.graph.node for o in n.output}
    second = [n for n in model.graph.node if n.op_type == "Gemm"
              and producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "Gelu"]
    assert len(second) == 2  # one per layer: reads the Gelu of the first Gemm directly, no Transpose between
    for gemm in second:
        assert {a.name: a.i for a in gemm.attribute}.get("transB", 0) == 0
        first = producers[producers[gemm.input[1]].input[0]]
        assert first.op_type == "Gemm" and {a.name: a.i for a in first.attribute}["transB"] == 1
    counts = collections.Counter(n.op_type for n in model.graph.node)
    assert counts["Transpose"] == 6 and counts["Split"] == 2 and counts["BiasGelu"] == 0


def test_unfused_graph_chains_through_its_gelu(tmp_path) -> None:
    """As exported with --no-optimize: MatMul -> Add -> Gelu (standard ONNX) -> MatMul, attention decomposed."""
    from helpers import tiny_text_graph

    exported = tiny_text_graph(tmp_path / "exported.onnx", VOCAB, HIDDEN)
    model, stats = _rewritten(exported, tmp_path / "t.onnx")
    assert stats == {"matmuls": 12, "gemms": 8, "merged_groups": 2, "transposes": 6}
    assert not any(o.domain == "com.microsoft" for o in model.opset_import)  # standard operators only
    a, b = session(exported, threads=1), session(tmp_path / "t.onnx", threads=1)
    for feeds in _batches(3, 3, 11):
        np.testing.assert_allclose(b.run(None, feeds)[0], a.run(None, feeds)[0], atol=1e-6, rtol=0)


def _graph(nodes: list, inputs: dict[str, list], inits: dict[str, np.ndarray], output: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v)
                                           for k, v in inputs.items()],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def test_only_matmuls_with_a_2d_float_weight_are_rewritten(tmp_path) -> None:
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((8, 6)), "w3": rng.standard_normal((2, 6, 6))}
    nodes = [helper.make_node("MatMul", ["x", "y"], ["xy"]),  # both operands computed: left alone
             helper.make_node("MatMul", ["xy", "w"], ["h"]),  # 2-D input, 2-D weight, no bias: rewritten
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "axes"], ["r3"]),
             helper.make_node("Expand", ["r3", "shape3"], ["r3b"]),
             helper.make_node("MatMul", ["r3b", "w3"], ["out"])]  # a 3-D weight: left alone
    model = _graph(nodes, {"x": [4, 5], "y": [5, 8]}, inits, "out")
    model.graph.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), "axes"),
                                    numpy_helper.from_array(np.array([2, 4, 6], np.int64), "shape3")])
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save_model(model, str(tmp_path / "a.onnx"))
    stats = weights_as_left_operand(model)
    onnx.save_model(model, str(tmp_path / "b.onnx"))
    assert stats["matmuls"] == 1 and stats["gemms"] == 1 and stats["transposes"] == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 2 and ops.count("Gemm") == 1
    feeds = {"x": rng.standard_normal((4, 5)).astype(np.float32), "y": rng.standard_normal((5, 8)).astype(np.float32)}
    want = session(tmp_path / "a.onnx").run(None, feeds)[0]
    np.testing.assert_allclose(session(tmp_path / "b.onnx").run(None, feeds)[0], want, atol=1e-5, rtol=0)


def test_a_graph_without_weight_matmuls_is_unchanged(tmp_path) -> None:
    model = _graph([helper.make_node("MatMul", ["x", "y"], ["out"])], {"x": [4, 5], "y": [5, 8]}, {}, "out")
    before = model.SerializeToString()
    assert weights_as_left_operand(model)["matmuls"] == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize("mode, batch1, batch64, kept", [
    ("auto", 0.80, 1.05, True),  # faster at batch 1, batch 64 within its allowance
    ("auto", 0.97, 1.00, True),  # 3 % faster: the rewrite is exact, only the direction has to be clear
    ("auto", 0.99, 1.00, False),  # not 2 % faster at batch 1
    ("auto", 0.80, 1.20, False),  # the batch path loses too much
    ("transposed", 1.30, 1.30, True),  # forced: kept whatever the timings
])
def test_the_rewrite_ships_only_where_it_measurably_helps(tiny_text, tmp_path, monkeypatch, mode, batch1, batch64,
                                                          kept) -> None:
    from monocon_edge.exporting import latency

    from helpers import graph_copy

    graph, before = graph_copy(tiny_text, tmp_path)
    plain = tmp_path / "plain" / "model.onnx"
    plain.parent.mkdir()
    # The timings are the decision's input: fix them to test the decision itself.
    monkeypatch.setattr(latency, "sessions_latency", lambda sessions, *a, **k: {
        "plain": {"cpu_p50_ms": 1.0}, "transposed": {"cpu_p50_ms": batch1}})
    monkeypatch.setattr(latency, "time_blocks", lambda runners, *a, **k: {
        "plain": {"cpu_p50_ms": 10.0}, "transposed": {"cpu_p50_ms": 10.0 * batch64}})
    record = try_weight_layout(graph, plain, _batches(0, 8, 12, n=1), _batches(1, 1, 12), calls=5, atol=1e-5,
                               mode=mode)
    assert record["kept"] is kept and record["max_abs_diff_to_plain"] <= 1e-6
    assert record["transposed_over_plain"] == pytest.approx(batch1)
    # no candidate left; a kept rewrite ships its A-operand weights beside the graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"] + ["model.onnx.data"] * kept + ["plain"]
    assert (sha256_file(graph) != before) is kept
    assert plain.is_file() is kept and (not kept or sha256_file(plain) == before)  # the graph as it was
    assert (_weight_matmuls(onnx.load(str(graph))) == []) is kept


def test_left_operand_weights_ship_as_external_data_at_a_fixed_page_offset(tiny_text, tmp_path) -> None:
    model = onnx.load(str(tiny_text))
    weights_as_left_operand(model)
    names = weight_layout.left_operand_weights(model)
    assert len(names) == 8
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in names}
    record = weight_layout.place_left_operands(model, tmp_path / "model.onnx")
    assert record["file"] == "model.onnx.data" and record["tensors"] == 8
    assert (tmp_path / "model.onnx.data").stat().st_size == record["bytes"]
    onnx.checker.check_model(str(tmp_path / "model.onnx"), full_check=True)
    stored = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    external = {i.name: {e.key: e.value for e in i.external_data} for i in stored.graph.initializer
                if i.data_location == onnx.TensorProto.EXTERNAL}
    assert sorted(external) == names
    assert {int(e["offset"]) % 4096 for e in external.values()} == {weight_layout.LEFT_OPERAND_OFFSET}
    loaded = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert all(np.array_equal(loaded[n], values[n]) for n in names)
    feeds = _batches(5, 2, 9)[0]
    np.testing.assert_allclose(session(tmp_path / "model.onnx").run(None, feeds)[0],
                               session(tiny_text).run(None, feeds)[0], atol=1e-6, rtol=0)


def test_plain_mode_does_not_touch_the_graph_and_bad_modes_are_refused(tiny_text, tmp_path, monkeypatch) -> None:
    graph = tmp_path / "model.onnx"
    shutil.copyfile(tiny_text, graph)
    record = try_weight_layout(graph, tmp_path / "plain.onnx", [], [], calls=5, atol=1e-5, mode="plain")
    assert record["kept"] is False and record["reason"] == "--fp32-layout plain"
    assert sha256_file(graph) == sha256_file(tiny_text) and not (tmp_path / "plain.onnx").exists()
    with pytest.raises(MonoconError, match="--fp32-layout must be one of auto, transposed, plain"):
        weight_layout.check_mode("fast")


def test_forced_rewrite_whose_outputs_drift_is_a_gate_error(tiny_text, tmp_path, monkeypatch) -> None:
    graph = tmp_path / "model.onnx"
    shutil.copyfile(tiny_text, graph)
    real = weight_layout.weights_as_left_operand

    def drifting(model):  # a broken rewrite: one weight changed on the way
        stats = real(model)
        init = next(i for i in model.graph.initializer if i.name.endswith("_T"))
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
        return stats

    monkeypatch.setattr(weight_layout, "weights_as_left_operand", drifting)
    with pytest.raises(GateError, match="outputs differ"):
        try_weight_layout(graph, tmp_path / "plain.onnx", _batches(0, 8, 12, n=1), _batches(1, 1, 12), calls=5,
                          atol=1e-5, mode="transposed")
    assert sha256_file(graph) == sha256_file(tiny_text) and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    record = try_weight_layout(graph, tmp_path / "plain.onnx", _batches(0, 8, 12, n=1), _batches(1, 1, 12), calls=5,
                               atol=1e-5, mode="auto")
    assert record["kept"] is False and record["reason"].startswith("outputs differ")


def test_bench_script_times_both_layouts_per_length(tiny_text, tmp_path) -> None:
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "bench" / "weight_layout.py"
    done = subprocess.run([sys.executable, str(script), str(tiny_text), "--tokens", "4,9", "--calls", "3",
                           "--batch", "2", "--batch-tokens", "5", "--sessions", "2", "--session-tokens", "6",
                           "--offsets", "inline,256", "--json", str(tmp_path / "t.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "t.json").read_text())
    rows = written["rows"]
    spread = written["session_spread"]
    # the shipped placement, then each asked-for one: every graph loaded --sessions times
    assert spread["tokens"] == 6 and {k: len(v) for k, v in spread["ms"].items()} == {
        "plain": 2, "transposed": 2, "at inline": 2, "at 256": 2}
    assert [(r["tokens"], r["batch"]) for r in rows] == [(4, 1), (9, 1), (5, 2)]
    assert all(r["plain_ms"] > 0 and r["ratio"] == pytest.approx(r["transposed_ms"] / r["plain_ms"]) for r in rows)
    assert "transposed / plain" in done.stdout
    for args, code, message in ((["--tokens", "4,x"], 2, "--tokens takes integers"),
                                (["--offsets", "4096", "--sessions", "1"], 2, "--offsets takes"),
                                ([], 1, "no plain weight MatMul")):
        graph = str(tmp_path / "t.onnx") if code == 1 else str(tiny_text)
        if code == 1:
            model = onnx.load(str(tiny_text))
            weights_as_left_operand(model)
            onnx.save_model(model, graph)
        bad = subprocess.run([sys.executable, str(script), graph, *args], capture_output=True, text=True, timeout=300)
        assert bad.returncode == code and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert message in bad.stderr and "Traceback" not in bad.stderr

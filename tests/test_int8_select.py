"""int8 candidate selection on a tiny BERT folded like a real text run: Gather tables quantized, tail fp32, a
forced scheme honoured, a candidate that fails a gate skipped and named, the fastest passing one kept."""
from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from monocon_edge.device.artifact import sha256_file
from monocon_edge.exporting import int8_select, latency
from monocon_edge.device.errors import GateError, MonoconError
from monocon_edge.exporting.gates import GateThresholds, Retrieval, compare_figures
from monocon_edge.exporting import quantize as Q
from monocon_edge.exporting.quantize import (LARGE_GATHER_ELEMENTS, quantize_dynamic_int8, quantize_gathers_4bit,
                                   quantize_gathers_int8, quantize_nbits, tail_nodes, unpack_block_quantized_gathers,
                                   weight_matmuls)

VOCAB, HIDDEN = 8192, 32
WORD_TABLE = "transformer.embeddings.word_embeddings.weight"
LOOSE = GateThresholds(int8_min_cosine=-1.0, int8_max_recall_drop_points=100.0)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> Path:
    """Return the fp32 ONNX graph of a 2-layer BERT (vocab 8192, hidden 32) + monotonic-style head + PCA tail."""
    from helpers import tiny_text_graph

    return tiny_text_graph(tmp_path_factory.mktemp("tiny-text") / "model.onnx", VOCAB, HIDDEN)


def _batches(seed: int, n: int = 4, batch: int = 8, length: int = 12) -> list[dict[str, np.ndarray]]:
    from helpers import token_batches

    return token_batches(seed, n, batch, length, VOCAB)


def _evaluate(fp32: Path):
    """Return evaluate(path) -> gate figures vs ``fp32`` on random token batches (query = gallery sentences)."""
    batches = _batches(1)
    labels = np.arange(sum(b["input_ids"].shape[0] for b in batches))
    retrieval = Retrieval(batches, batches, labels, labels, "tiny: each sentence finds itself")
    ref = retrieval.embed(lambda f: int8_select.session(fp32).run(None, f)[0])

    def evaluate(path: Path) -> dict:
        s = int8_select.session(path)
        return compare_figures(ref, retrieval.embed(lambda f: s.run(None, f)[0]), retrieval)

    return evaluate


def _timing() -> list[dict[str, np.ndarray]]:
    return [{k: v[:1] for k, v in b.items()} for b in _batches(2, n=2)]


def _select(fp32: Path, work: Path, thresholds: GateThresholds = LOOSE, **kw) -> int8_select.Selection:
    work.mkdir(exist_ok=True)
    return int8_select.select(fp32, work, "text", _batches(3), _timing(), _evaluate(fp32), thresholds,
                              calls=10, **kw)


def _initializers(path: Path) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("scheme", ["dynamic", "dynamic-t4", "nbits8", "mixed", "int4", "dynamic-smooth",
                                    "dynamic-smooth-t4"])
def test_gather_table_is_quantized_and_the_tail_stays_fp32(tiny_text, tmp_path, scheme) -> None:
    out = tmp_path / f"{scheme}.onnx"
    fp32_model = onnx.load(str(tiny_text))
    tail = {i for n in fp32_model.graph.node if n.name in tail_nodes(fp32_model) for i in n.input
            if i.startswith("tail.")}
    assert len(tail) >= 2  # head weight, projection
    if scheme == "dynamic":
        info = quantize_dynamic_int8(tiny_text, out)
    elif scheme == "dynamic-t4":
        info = int8_select.build(scheme, tiny_text, out, _batches(3))
        assert info["method"] == scheme and info["gather_tables_4bit"] == [WORD_TABLE]
    elif scheme.startswith("dynamic-smooth"):
        info = int8_select.build(scheme, tiny_text, out, _batches(3))
        assert info["method"] == scheme and info["smoothing"]["fp32_max_abs_diff"] <= 1e-5
    elif scheme == "mixed":
        keep = weight_matmuls(fp32_model)[:2]
        info = quantize_dynamic_int8(tiny_text, out, keep_fp32=keep)
        assert info["method"] == "mixed" and info["kept_fp32"] == keep
    else:
        info = quantize_nbits(tiny_text, out, bits=4 if scheme == "int4" else 8)
    assert WORD_TABLE in info["gather_tables"]
    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    # The 8192 x 32 word-embedding table is no longer stored in fp32 ...
    assert WORD_TABLE not in inits
    if scheme in ("int4", "dynamic-t4", "dynamic-smooth-t4"):
        # 4-bit blocks as packed nibbles unpacked by standard ops (not onnxruntime's slower GatherBlockQuantized)
        assert inits[f"{WORD_TABLE}.q4"].data_type == TensorProto.UINT8
        # its block scales stay the fp32 ones the 4-bit quantizer chose (the int8 Gather pass must not requantize them)
        assert inits[f"{WORD_TABLE}_scales"].data_type == TensorProto.FLOAT
        assert not any(n.op_type == "GatherBlockQuantized" for n in model.graph.node)
    else:
        assert inits[f"{WORD_TABLE}.int8"].data_type == TensorProto.INT8
    assert all(not (i.data_type == TensorProto.FLOAT and int(np.prod(i.dims)) >= LARGE_GATHER_ELEMENTS)
               for i in inits.values()), "a large fp32 table is left"
    # ... while the folded tail's weights are still fp32, read by plain fp32 MatMul / Gemm nodes.
    for name in tail:  # (dynamic quantization stores a Gemm's weight transposed, as <name>_Transposed)
        copies = [i for i in inits if i.startswith(name)]
        assert copies and all(inits[c].data_type == TensorProto.FLOAT for c in copies), (name, copies)
        readers = {n.op_type for n in model.graph.node for c in copies if c in n.input}
        assert readers and readers <= {"MatMul", "Gemm"}, (name, readers)
    nodes = {n.name: n for n in model.graph.node}
    if scheme == "mixed":  # the MatMuls it keeps are untouched fp32 MatMuls
        assert all(nodes[k].op_type == "MatMul" for k in keep)
    assert int8_select.session(out).run(None, _batches(0, n=1)[0])[0].shape == (8, 8)


def test_gather_int8_rows_round_trip() -> None:
    table = np.random.default_rng(0).standard_normal((300, 256)).astype(np.float32)
    table[7] *= 100  # one row far larger than the others keeps its own scale
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"], name="g")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 256])],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    assert quantize_gathers_int8(model) == ["table"]
    ids = np.array([0, 7, 299, 7])
    got = int8_select.session(model.SerializeToString()).run(None, {"ids": ids})[0]
    want = table[ids]
    assert np.abs(got - want).max(axis=1).tolist() <= (np.abs(want).max(axis=1) / 127 * 0.51).tolist()


@pytest.mark.parametrize("ids_rank", [2, 1])
def test_gather_4bit_unpacked_by_standard_ops_equals_gather_block_quantized(ids_rank) -> None:
    from onnx import helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((600, 128)).astype(np.float32)
    table[5] *= 50  # a row far larger than the others: its blocks keep their own scales
    shape = [None, None] if ids_rank == 2 else [None]
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"], name="g")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    assert quantize_gathers_4bit(model, min_elements=1) == ["table"]
    blocked = model.SerializeToString()  # onnxruntime's GatherBlockQuantized
    unpacked = unpack_block_quantized_gathers(model)
    ids = np.array([[0, 5, 599], [5, 17, 0]]) if ids_rank == 2 else np.array([0, 5, 599, 5])
    want = int8_select.session(blocked).run(None, {"ids": ids})[0]
    got = int8_select.session(model.SerializeToString()).run(None, {"ids": ids})[0]
    ops = {n.op_type for n in model.graph.node}
    if ids_rank == 2:  # rewritten: the same 4-bit values and scales, so the same numbers
        assert unpacked == ["table"] and "GatherBlockQuantized" not in ops
        assert "table.q4" in {i.name for i in model.graph.initializer}
        np.testing.assert_array_equal(got, want)
    else:  # indices of another rank: left to GatherBlockQuantized
        assert unpacked == [] and "GatherBlockQuantized" in ops
    assert np.abs(want - table[ids]).max() <= np.abs(table).max() / 7  # 4 bits: a coarse copy, not another table


def test_t4_block_scales_are_not_quantized_again(tmp_path) -> None:
    # A word table wide enough that its 4-bit block scales (rows x width/32) are themselves a "large" float table:
    # the int8 Gather pass must leave them as the 4-bit quantizer chose them.
    from onnx import helper

    rows, width = 4096, 512
    assert rows * width // 32 >= LARGE_GATHER_ELEMENTS
    table = np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["out"], name="g")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(table, "table")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "f.onnx"))
    info = quantize_dynamic_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", table_bits=4)
    assert info["gather_tables_4bit"] == ["table"]
    inits = _initializers(tmp_path / "q.onnx")
    assert inits["table_scales"].data_type == TensorProto.FLOAT and "table_scales.int8" not in inits
    ids = np.array([[0, 9, 4095]])
    got = int8_select.session(tmp_path / "q.onnx").run(None, {"ids": ids})[0]
    assert np.abs(got - table[ids]).max() <= np.abs(table).max() / 7


def test_forced_scheme_is_the_only_candidate_and_wins(tiny_text, tmp_path) -> None:
    chosen = _select(tiny_text, tmp_path / "w", forced="nbits8")
    assert chosen.name == "nbits8" and [r["name"] for r in chosen.record["candidates"]] == ["nbits8"]
    assert chosen.record["forced"] and "forced" in chosen.record["reason"]
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(chosen.path)).graph.node)
    assert chosen.scheme["accuracy_level"] == 4
    # timed as a device runs it: blocks of consecutive calls, every timed call counted
    from monocon_edge.exporting.latency import BLOCK_CALLS

    for row in (chosen.record["fp32"], chosen.record["candidates"][0]):
        assert row["block"] == BLOCK_CALLS > 1 and row["calls"] == 10


def test_unknown_or_unfit_scheme_is_refused(tiny_text, tmp_path) -> None:
    with pytest.raises(MonoconError, match="unknown int8 scheme"):
        _select(tiny_text, tmp_path / "w", forced="weights4")
    with pytest.raises(MonoconError, match="static int8 calibration is for image models"):
        _select(tiny_text, tmp_path / "w", forced="static")


def _smallest_of_the_tied(rows) -> str:
    """Return the name the selection rule must pick from recorded rows: the per-round ratios recomputed from each
    row's block timings; tied = not measurably more than FASTER_MARGIN slower than the fastest."""
    rows = list(rows)
    fastest = min(rows, key=lambda r: r["cpu_p50_ms"])
    tied = []
    for r in rows:
        ratio, low, high = latency.paired_ratio(r["cpu_block_ms"], fastest["cpu_block_ms"])
        assert r["vs_fastest"] == {"ratio": ratio, "low": low, "high": high}
        if r is fastest or low <= 1 + int8_select.FASTER_MARGIN:
            tied.append(r)
    return min(tied, key=lambda r: (r["bytes"], r["cpu_p50_ms"]))["name"]


def _row(name: str, mb: float, slowdown: float, noise: float) -> dict:
    drift = np.array([1.0, 1.3, 0.9, 1.6, 1.1, 1.0, 1.2, 0.95])  # shared by every graph of a round
    wobble = 1 + noise * np.array([1, -1, 0.5, -0.5, 0.8, -0.8, 0.2, -0.2])
    blocks = (slowdown * drift * wobble).tolist()
    return {"name": name, "bytes": mb * 1e6, "cpu_p50_ms": float(np.median(blocks)), "cpu_block_ms": blocks}


def test_a_smaller_candidate_wins_unless_measurably_slower() -> None:
    fastest = _row("fast", 25.6, 1.0, 0.0)
    close = _row("close-but-smaller", 20.8, 1.055, 0.04)  # 5.5 % slower: over the margin, but not measurably
    clearly = _row("clearly-slower", 10.0, 1.25, 0.04)
    steady = _row("steadily-6-percent", 15.0, 1.06, 0.0)  # just over the margin on every round
    assert int8_select._fastest_then_smallest([fastest, close, clearly, steady])["name"] == "close-but-smaller"
    assert steady["vs_fastest"]["low"] == pytest.approx(1.06) and clearly["vs_fastest"]["low"] > 1.15
    assert close["vs_fastest"]["low"] <= 1.05 < close["vs_fastest"]["ratio"] < close["vs_fastest"]["high"]
    # without per-round timings (or with no noise) the medians alone decide
    assert int8_select._fastest_then_smallest([fastest, steady])["name"] == "fast"
    # --int8-prefer size: the smallest that passes, however much slower
    assert int8_select._choose([fastest, clearly, steady], "size")["name"] == "clearly-slower"
    assert int8_select._choose([fastest, clearly, steady], "speed")["name"] == "fast"


def test_candidate_failing_a_gate_is_skipped_and_named(tiny_text, tmp_path) -> None:
    first = _select(tiny_text, tmp_path / "a")
    rows = {r["name"]: r for r in first.record["candidates"]}
    assert set(rows) == {"dynamic", "dynamic-t4", "nbits8", "mixed", "dynamic-smooth", "dynamic-smooth-t4"}
    assert all(r["passed"] for r in rows.values())
    # the fastest of those passing (CPU time per batch-1 call at one thread); of those within the timing margin
    # of the fastest, the smallest file
    assert first.name == _smallest_of_the_tied(rows.values())
    assert first.record["prefer"] == "speed"
    assert rows["dynamic-smooth"]["alpha"] in Q.SMOOTH_ALPHAS
    for r in rows.values():
        assert r["bytes"] > 0 and r["p50_ms"] > 0 and r["cpu_p50_ms"] > 0 and r["min_cosine"] <= r["mean_cosine"]
        assert r["speedup_vs_fp32"] == first.record["fp32"]["cpu_p50_ms"] / r["cpu_p50_ms"]
    assert "sensitivity" in first.scheme or first.name != "mixed"
    # A cosine gate between the least and the most accurate candidate: the least accurate is skipped, named.
    worst = min(rows.values(), key=lambda r: r["mean_cosine"])
    best = max(rows.values(), key=lambda r: r["mean_cosine"])
    assert worst["mean_cosine"] < best["mean_cosine"]
    gate = GateThresholds(int8_min_cosine=(worst["mean_cosine"] + best["mean_cosine"]) / 2,
                          int8_max_recall_drop_points=100.0)
    second = _select(tiny_text, tmp_path / "b", thresholds=gate)
    rows2 = {r["name"]: r for r in second.record["candidates"]}
    assert not rows2[worst["name"]]["passed"] and "mean cosine" in rows2[worst["name"]]["failures"][0]
    assert second.name != worst["name"] and rows2[second.name]["passed"]
    assert f"failed a gate: {worst['name']}" in second.record["reason"]
    # Nothing passes: the export fails and names every candidate.
    with pytest.raises(GateError, match="no int8 candidate passes the gates: dynamic: .*dynamic-t4: .*nbits8: .*mixed: "
                                        ".*dynamic-smooth: .*dynamic-smooth-t4: "):
        _select(tiny_text, tmp_path / "c", thresholds=GateThresholds(int8_min_cosine=1.0))


def test_candidate_under_the_min_cos_floor_is_skipped(tiny_text, tmp_path) -> None:
    first = _select(tiny_text, tmp_path / "a")
    assert first.record["thresholds"]["int8_cosine_floor"] is None  # default: no floor, every candidate passes
    rows = {r["name"]: r for r in first.record["candidates"]}
    worst = min(rows.values(), key=lambda r: r["min_cosine"])
    best = max(rows.values(), key=lambda r: r["min_cosine"])
    assert worst["min_cosine"] < best["min_cosine"]
    floor = (worst["min_cosine"] + best["min_cosine"]) / 2
    second = _select(tiny_text, tmp_path / "b", thresholds=dataclasses.replace(LOOSE, int8_cosine_floor=floor))
    assert second.record["thresholds"]["int8_cosine_floor"] == floor
    rows2 = {r["name"]: r for r in second.record["candidates"]}
    for name, row in rows2.items():
        failed = any("minimum cosine" in f and "--int8-cosine-floor" in f for f in row["failures"])
        assert failed is (row["min_cosine"] < floor) and row["passed"] is not failed, name
    assert not rows2[worst["name"]]["passed"] and second.name != worst["name"]
    assert rows2[second.name]["min_cosine"] >= floor
    # the export's candidate table names the floor and the failure
    from rich.console import Console

    from monocon_edge.cli.render import print_int8_selection

    console = Console(record=True, width=400)
    print_int8_selection(console, second.record)
    text = console.export_text()
    assert f"min cos >= {floor:g}" in text and "FAIL: minimum cosine" in text


def test_mixed_keeps_the_measured_most_sensitive_matmuls(tiny_text, tmp_path) -> None:
    sens = int8_select.matmul_sensitivity(tiny_text, _batches(3))
    losses = [n["loss"] for n in sens["nodes"]]
    assert losses == sorted(losses, reverse=True) and len(losses) == len(weight_matmuls(onnx.load(str(tiny_text))))
    assert sens["keep"] == [n["node"] for n in sens["nodes"][:len(sens["keep"])]]
    assert 1 <= len(sens["keep"]) < len(losses)
    # The simulated node really is the node's quantization: quantizing the costliest node alone with onnxruntime
    # moves the output about as much as the simulation said.
    top = sens["nodes"][0]["node"]
    others = [n["node"] for n in sens["nodes"][1:]]
    quantize_dynamic_int8(tiny_text, tmp_path / "top.onnx", keep_fp32=others)
    feeds = _batches(3)[0]
    a = int8_select.session(tiny_text).run(None, feeds)[0]
    b = int8_select.session(tmp_path / "top.onnx").run(None, feeds)[0]
    assert np.abs(a - b).max() > 0  # the node was quantized (and the Gather table)


@pytest.mark.parametrize("fused_ms, kept", [(0.5, True), (0.99, False), (1.5, False)])
def test_transformer_fusion_is_kept_only_where_it_measurably_helps(tiny_text, tmp_path, monkeypatch, fused_ms,
                                                                   kept) -> None:
    from helpers import graph_copy

    graph, before = graph_copy(tiny_text, tmp_path)
    # The timing is the decision's input: fix it (fp32 1 ms, fused fused_ms) to test the decision itself.
    fixed = {"fp32": 1.0, "fp32_fused": fused_ms}
    monkeypatch.setattr(int8_select, "blocked_latency",
                        lambda paths, *a, **k: {n: {"p50_ms": fixed[n], "p90_ms": fixed[n], "cpu_p50_ms": fixed[n]}
                                                for n in paths})
    record = int8_select.try_transformer_fusion(graph, _batches(0, n=1), _timing(), calls=10, atol=1e-5,
                                                quantized=False)
    assert record["fused_ops"], "the BERT optimizer fuses something in this graph (BiasGelu)"
    assert record["max_abs_diff_to_unfused"] <= 1e-5 / 4 and record["load_ms"]["fp32_fused"] > 0
    assert record["kept"] is kept
    assert (sha256_file(graph) != before) is kept  # the fused graph replaces the file only when kept
    if kept:
        assert int8_select.session(graph).run(None, _batches(0, n=1)[0])[0].shape == (8, 8)


def _with_outlier_channel(src: Path, dst: Path, channel: int = 5, gain: float = 40.0) -> None:
    """Copy ``src`` with one LayerNorm-output channel of every layer made an outlier (gamma x gain, beta + gain,
    the weights reading it / gain: the activation range grows as in BERT's outlier channels, while the
    quantization error of the int8 weights does not)."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for g in Q.layernorm_matmul_groups(model):
        for slot, key in ((1, "gamma"), (2, "beta")):  # own copies: the exporter shares equal gammas
            v = numpy_helper.to_array(inits[g[key]]).copy()
            v[channel] = v[channel] * gain + (gain if key == "beta" else 0.0)
            model.graph.initializer.append(numpy_helper.from_array(v, f"{g[key]}.{g['ln']}"))
            nodes[g["ln"]].input[slot] = f"{g[key]}.{g['ln']}"
        for m in g["matmuls"]:
            w = numpy_helper.to_array(inits[nodes[m].input[1]]).copy()
            w[channel] /= gain
            inits[nodes[m].input[1]].CopyFrom(numpy_helper.from_array(w, nodes[m].input[1]))
    onnx.save_model(model, str(dst))


def test_smoothing_is_exact_in_fp32_and_cuts_the_quantization_loss(tiny_text, tmp_path) -> None:
    outlier = tmp_path / "outlier.onnx"
    _with_outlier_channel(tiny_text, outlier)
    model = onnx.load(str(outlier))
    groups = Q.layernorm_matmul_groups(model)
    # 2 layers: embeddings LN -> Q/K/V, attention LN -> FFN1, layer-0 output LN -> Q/K/V; the last LN feeds pooling
    assert [len(g["matmuls"]) for g in groups] == [3, 1, 3, 1]
    assert all(g["others"] for g in groups)  # each also feeds a residual Add
    record = int8_select.smooth_fp32(outlier, tmp_path / "smoothed.onnx", _batches(3), atol=1e-5)
    assert record["fp32_max_abs_diff"] <= 1e-5 and record["alpha"] in Q.SMOOTH_ALPHAS
    assert [r["alpha"] for r in record["alphas_tried"]] == list(Q.SMOOTH_ALPHAS)
    smoothed = onnx.load(str(tmp_path / "smoothed.onnx"))
    assert sum(n.name.endswith(".unsmooth") for n in smoothed.graph.node) == len(groups)
    # the outlier channel is evened out, and with it most of the simulated dynamic-int8 loss
    assert all(g["x_max_over_median_after"] < g["x_max_over_median_before"] / 2 for g in record["groups"])
    before = record["simulated_loss_unsmoothed"]
    after = min(r["simulated_loss"] for r in record["alphas_tried"])
    assert after < before / 2, (before, after)
    # ... and the real onnxruntime int8 graphs agree: smoothed dynamic int8 is closer to fp32 than plain dynamic
    feeds = _batches(4)
    ref = np.concatenate([int8_select.session(outlier).run(None, f)[0] for f in feeds]).astype(np.float64)

    def loss(path: Path) -> float:
        out = np.concatenate([int8_select.session(path).run(None, f)[0] for f in feeds]).astype(np.float64)
        return float(0.5 * np.sum((ref - out) ** 2, axis=1).mean())  # 1 - cos of unit outputs, in float64

    quantize_dynamic_int8(outlier, tmp_path / "plain.onnx")
    int8_select.build("dynamic-smooth", outlier, tmp_path / "smooth.onnx", _batches(3))
    assert loss(tmp_path / "smooth.onnx") < 0.75 * loss(tmp_path / "plain.onnx")  # (the int8 word table's share
    # of the loss is the same in both)


def test_a_smoothing_that_breaks_fp32_equivalence_is_caught_and_skipped(tiny_text, tmp_path, monkeypatch) -> None:
    real = Q.smooth_layernorm_matmuls

    def broken(model, act_max, alpha=Q.SMOOTH_ALPHA):
        """Divide the LayerNorms by s but forget to multiply one MatMul's weights by s."""
        record = real(model, act_max, alpha)
        name = record[0]["matmuls"][0]
        node = next(n for n in model.graph.node if n.name == name)
        init = next(i for i in model.graph.initializer if i.name == node.input[1])
        s = next(i for i in model.graph.initializer if i.name.endswith(".smoothing_factors"))
        w = numpy_helper.to_array(init) / numpy_helper.to_array(s)[:, None]
        init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
        return record

    monkeypatch.setattr(Q, "smooth_layernorm_matmuls", broken)
    with pytest.raises(int8_select.EquivalenceError, match="differs from fp32 by .* > 1e-05"):
        int8_select.smooth_fp32(tiny_text, tmp_path / "s.onnx", _batches(3), atol=1e-5)
    chosen = _select(tiny_text, tmp_path / "w")
    rows = {r["name"]: r for r in chosen.record["candidates"]}
    for name in ("dynamic-smooth", "dynamic-smooth-t4"):
        assert not rows[name]["passed"] and "the equalisation is not exact" in rows[name]["failures"][0]
        assert "bytes" not in rows[name]  # never quantized, never timed
    assert chosen.name not in ("dynamic-smooth", "dynamic-smooth-t4") and rows[chosen.name]["passed"]
    assert "failed a gate: dynamic-smooth (the smoothed fp32 graph differs" in chosen.record["reason"]


def test_forced_smooth_scheme_records_its_equalisation(tiny_text, tmp_path) -> None:
    chosen = _select(tiny_text, tmp_path / "w", forced="dynamic-smooth")
    assert chosen.name == "dynamic-smooth" and [r["name"] for r in chosen.record["candidates"]] == ["dynamic-smooth"]
    sm = chosen.scheme["smoothing"]
    assert sm["fp32_max_abs_diff"] <= 1e-5 and len(sm["groups"]) == 4 and sm["alpha"] == chosen.record[
        "candidates"][0]["alpha"]
    # each layer's Q, K and V projections became one MatMul + Split (exact: within the same fp32 parity check)
    assert [len(m["merged"]) for m in sm["merged_matmuls"]] == [3, 3]
    assert sum(n.op_type == "Split" for n in onnx.load(str(chosen.path)).graph.node) == 2
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in onnx.load(str(chosen.path)).graph.node)
    with pytest.raises(MonoconError, match="dynamic-smooth scheme is for transformers"):
        int8_select.check_scheme("dynamic-smooth", "vision")


def test_merged_qkv_matmuls_compute_the_same_outputs() -> None:
    from onnx import helper

    rng = np.random.default_rng(0)
    inits, nodes, outs = [], [], []
    for k, width in enumerate((6, 6, 4)):  # distinct weights and biases: an order mix-up shows
        inits += [numpy_helper.from_array(rng.standard_normal((5, width)).astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("MatMul", ["x", f"w{k}"], [f"m{k}"], name=f"mm{k}"),
                  helper.make_node("Add", [f"b{k}", f"m{k}"] if k == 1 else [f"m{k}", f"b{k}"], [f"y{k}"],
                                   name=f"a{k}")]
        outs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = {"x": rng.standard_normal((3, 5)).astype(np.float32)}
    want = int8_select.session(model.SerializeToString()).run(None, x)
    assert Q.merge_parallel_matmuls(model) == [{"merged": ["mm0", "mm1", "mm2"], "into": "mm0.merged"}]
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add", "Split"]
    got = int8_select.session(model.SerializeToString()).run(None, x)
    assert all(np.abs(g - w).max() <= 1e-6 for g, w in zip(got, want))


def test_attention_fusion_is_exact_and_passes_the_checker(tiny_text, tmp_path) -> None:
    from monocon_edge.exporting.attention_fusion import fuse_attention
    from monocon_edge.exporting.onnx_export import check_graph

    model = onnx.load(str(tiny_text))
    before = len(model.graph.node)
    fused = fuse_attention(model)
    assert [f["num_heads"] for f in fused] == [2, 2]  # 2 layers, 2 heads of 16
    assert all(abs(f["scale"] - 16 ** -0.5) < 1e-6 for f in fused)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops and "IsNaN" not in ops
    assert len(ops) < before - 2 * 15
    path = tmp_path / "fused.onnx"
    onnx.save_model(model, str(path))
    check_graph(path)
    for feeds in _batches(5):  # half of each batch padded: the additive mask is honoured
        want = int8_select.session(tiny_text).run(None, feeds)[0]
        assert np.abs(int8_select.session(path).run(None, feeds)[0] - want).max() <= 1e-6
    # the int8 schemes build on the fused graph (MultiHeadAttention stays fp32)
    quantize_dynamic_int8(path, tmp_path / "dyn.onnx")
    assert int8_select.session(tmp_path / "dyn.onnx").run(None, _batches(0, n=1)[0])[0].shape == (8, 8)
    # a graph without that pattern is left alone
    again = onnx.load(str(path))
    assert fuse_attention(again) == [] and len(again.graph.node) == len(model.graph.node)


def test_prefer_size_ships_the_smallest_passing_candidate(tiny_text, tmp_path) -> None:
    small = _select(tiny_text, tmp_path / "s", prefer="size")
    rows = [r for r in small.record["candidates"] if r.get("passed")]
    assert small.name == min(rows, key=lambda r: r["bytes"])["name"] and small.record["prefer"] == "size"
    assert small.record["reason"].startswith(f"{small.name} is the smallest") and "--int8-prefer size" in \
        small.record["reason"]


@pytest.mark.parametrize("speedup, noted", [(0.71, True), (3.2, False)])
def test_export_table_notes_an_int8_graph_slower_than_fp32(speedup, noted) -> None:
    from rich.console import Console

    from monocon_edge.cli.render import print_int8_selection

    row = {"name": "static", "bytes": 1e5, "cpu_p50_ms": 0.02, "p50_ms": 0.02, "load_ms": 2.0, "passed": True,
           "speedup_vs_fp32": speedup, "mean_cosine": 0.999, "min_cosine": 0.99, "recall_drop_points": 0.0}
    record = {"timing": {"batch": 1, "threads": 1, "calls": 20, "block": 25}, "candidates": [row],
              "thresholds": {"int8_min_cosine": 0.99, "int8_max_recall_drop_points": 1.0, "int8_cosine_floor": None},
              "fp32": {"bytes": 2e5, "cpu_p50_ms": 0.014, "p50_ms": 0.014, "load_ms": 1.0}, "winner": "static",
              "reason": "static is the fastest candidate that passes every gate"}
    console = Console(record=True, width=400)
    print_int8_selection(console, record)
    assert ("int8 graph is slower than fp32 here (0.71x" in console.export_text()) is noted

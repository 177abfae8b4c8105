"""Vision int8 candidates on the tiny digits runs with a head: ``static`` keeps the folded tail fp32,
``static-head`` quantizes the head's layers too (the gated CNN exception), is measured beside it, can be forced,
and is skipped with its gate named when it misses one."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto
from typer.testing import CliRunner

from monocon_edge.cli import app
from monocon_edge.device.artifact import INT8_FILE, MANIFEST
from monocon_edge.exporting import int8_select, latency
from monocon_edge.exporting.build import ExportOptions, export_run
from monocon_edge.exporting.gates import GateThresholds
from monocon_edge.exporting.quantize import HEAD_PREFIX, PROJECTION_PREFIX, TAIL_PREFIX

runner = CliRunner()
# 36 tiny queries: one flipped query moves Recall@1 by 2.8 points, so no recall gate here.
NO_RECALL_GATE = GateThresholds(int8_max_recall_drop_points=100.0)
HEAD_WEIGHTS = [f"{TAIL_PREFIX}{HEAD_PREFIX}.layers.{i}.weight" for i in range(2)]
PROJECTION = f"{TAIL_PREFIX}{PROJECTION_PREFIX}.weight"


def _export(run: Path, out: Path, thresholds: GateThresholds = NO_RECALL_GATE, scheme: str = "auto") -> dict:
    opts = ExportOptions(dims=8, int8=True, out=out, thresholds=thresholds, int8_scheme=scheme, timing_rounds=20)
    return export_run(run, opts).manifest


def _weight_readers(model: onnx.ModelProto, weight: str) -> tuple[dict, list]:
    """Return ({initializer name: data type} of ``weight`` and its quantized copies, [op types reading them])."""
    inits = {i.name: i.data_type for i in model.graph.initializer if i.name.startswith(weight)}
    return inits, [n.op_type for n in model.graph.node if set(inits).intersection(n.input)]


@pytest.fixture(scope="module")
def auto_mlp(tiny_runs, tmp_path_factory) -> dict:
    """The manifest of an auto int8 export of the tiny std-MLP run (head 32 -> 64 -> 32)."""
    return _export(tiny_runs["mlp"], tmp_path_factory.mktemp("vint8") / "auto")


def test_both_candidates_are_measured_and_the_head_makes_the_difference(auto_mlp) -> None:
    selection = auto_mlp["models"]["int8"]["selection"]
    rows = {r["name"]: r for r in selection["candidates"]}
    assert list(rows) == ["static", "static-head"] and all(r["passed"] for r in rows.values())
    for r in rows.values():
        assert r["bytes"] > 0 and r["cpu_p50_ms"] > 0 and r["mean_cosine"] >= 0.99 and "min_cosine" in r
    # the head's 2 x 32 x 64 fp32 weights (16 kB) become int8 (4 kB; plus per-channel scales and QDQ nodes,
    # which weigh more on weights this small than on the real runs' 1 MB)
    assert rows["static"]["bytes"] - rows["static-head"]["bytes"] > 0.4 * 2 * 32 * 64 * 4
    # chosen like the transformer candidates: the fastest; of those not measurably more than FASTER_MARGIN
    # slower, the smaller file
    fastest = min(rows.values(), key=lambda r: r["cpu_p50_ms"])
    tied = [r for r in rows.values()
            if r is fastest or latency.paired_ratio(r["cpu_block_ms"], fastest["cpu_block_ms"])[1]
            <= 1 + int8_select.FASTER_MARGIN]
    assert selection["winner"] == min(tied, key=lambda r: r["bytes"])["name"]
    assert auto_mlp["models"]["int8"]["quantization"]["method"] == selection["winner"]


def test_forced_static_head_quantizes_the_head_and_keeps_the_projection_fp32(tiny_runs, tmp_path) -> None:
    out = tmp_path / "forced"
    # (not the tiny monotonic run: collapsed to a few dims, its static-head graph keeps only cos ~0.96 and fails)
    result = runner.invoke(app, ["export", str(tiny_runs["mlp"]), "--dims", "8", "--int8", "--int8-scheme",
                                 "static-head", "--int8-max-recall-drop", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "static-head" in result.output
    manifest = json.loads((out / MANIFEST).read_text())
    selection = manifest["models"]["int8"]["selection"]
    assert selection["forced"] and selection["winner"] == "static-head"
    assert [c["name"] for c in selection["candidates"]] == ["static-head"]
    scheme = manifest["models"]["int8"]["quantization"]
    assert scheme["method"] == "static-head" and scheme["format"] == "QDQ"
    model = onnx.load(str(out / INT8_FILE))
    consumers = {i: n for n in model.graph.node for i in n.input}
    for weight in HEAD_WEIGHTS:  # stored int8, dequantized per output channel into the head's Gemm / MatMul
        inits, readers = _weight_readers(model, weight)
        assert weight not in inits and inits[f"{weight}_quantized"] == TensorProto.INT8, inits
        assert [t for n, t in inits.items() if n != f"{weight}_scale"].count(TensorProto.FLOAT) == 0, inits
        scale = next(i for i in model.graph.initializer if i.name == f"{weight}_scale")
        assert list(scale.dims) in ([32], [64]), scale.dims  # one scale per output channel
        assert set(readers) == {"DequantizeLinear"}, readers
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and set(inits) & set(n.input))
        assert consumers[dq.output[0]].op_type in ("Gemm", "MatMul")
    inits, readers = _weight_readers(model, PROJECTION)  # the PCA projection stays a plain fp32 weight
    assert inits == {PROJECTION: TensorProto.FLOAT} and set(readers) <= {"Gemm", "MatMul"}, (inits, readers)


def test_static_keeps_the_head_fp32(tiny_runs, tmp_path) -> None:
    manifest = _export(tiny_runs["mlp"], tmp_path / "static", scheme="static")
    assert manifest["models"]["int8"]["quantization"]["method"] == "static"
    model = onnx.load(str(tmp_path / "static" / INT8_FILE))
    for weight in HEAD_WEIGHTS + [PROJECTION]:
        inits, readers = _weight_readers(model, weight)
        assert inits == {weight: TensorProto.FLOAT} and set(readers) <= {"Gemm", "MatMul"}, (weight, inits, readers)


def test_static_head_failing_a_gate_is_skipped_and_named(tiny_runs, auto_mlp, tmp_path) -> None:
    rows = {r["name"]: r for r in auto_mlp["models"]["int8"]["selection"]["candidates"]}
    static, head = rows["static"]["mean_cosine"], rows["static-head"]["mean_cosine"]
    # quantizing the head too costs some cosine: a threshold between the two fails static-head alone
    assert head < static, (head, static)
    gate = GateThresholds(int8_min_cosine=(head + static) / 2, int8_max_recall_drop_points=100.0)
    selection = _export(tiny_runs["mlp"], tmp_path / "gated", thresholds=gate)["models"]["int8"]["selection"]
    rows = {r["name"]: r for r in selection["candidates"]}
    assert selection["winner"] == "static" and rows["static"]["passed"]
    assert not rows["static-head"]["passed"]
    assert rows["static-head"]["failures"][0].startswith("mean cosine to fp32 is ")
    assert "(--int8-min-cosine)" in rows["static-head"]["failures"][0]
    assert "failed a gate: static-head (mean cosine to fp32" in selection["reason"]


def test_static_head_is_vision_only_and_needs_a_head(tiny_runs, tmp_path) -> None:
    from monocon_edge.device.errors import MonoconError

    with pytest.raises(MonoconError, match="static-head int8 calibration is for image models"):
        int8_select.check_scheme("static-head", "text")
    with pytest.raises(MonoconError, match="no folded head to quantize"):
        _export(tiny_runs["none"], tmp_path / "baseline", scheme="static-head")
    assert not (tmp_path / "baseline").exists()


def test_prefer_size_through_the_cli_ships_the_smallest_passing(tiny_runs, tmp_path) -> None:
    out = tmp_path / "small"
    result = runner.invoke(app, ["export", str(tiny_runs["mlp"]), "--dims", "8", "--int8", "--int8-prefer", "size",
                                 "--int8-max-recall-drop", "100", "--timing-rounds", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    selection = json.loads((out / MANIFEST).read_text())["models"]["int8"]["selection"]
    passing = [c for c in selection["candidates"] if c.get("passed")]
    assert selection["prefer"] == "size" and len(passing) == 2
    assert selection["winner"] == min(passing, key=lambda c: c["bytes"])["name"]
    assert (out / INT8_FILE).stat().st_size < min(passing, key=lambda c: c["bytes"])["bytes"] + 64 * 1024

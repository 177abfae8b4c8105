"""int8 (and 4-bit) graphs with onnxruntime's quantization tools, as candidates for measurement.

Schemes (``int8_schemes.SCHEMES``): static QDQ for CNNs — ``static`` (encoder only) and ``static-head`` (the folded head's
Gemm/MatMul weights quantized too); for transformers dynamic per-channel QOperator int8, MatMulNBits
8-bit with int8 compute (``accuracy_level=4``), and a mixed dynamic scheme that keeps named MatMuls fp32 (the
most sensitive ones, chosen by ``int8_select`` from a measurement); ``int4`` is MatMulNBits 4-bit + 4-bit
Gather. Every transformer scheme also stores the large constant Gather tables (the word embeddings: half of
MiniLM's bytes) in int8 or 4 bits.

The folded tail (head, normalisation, PCA projection) stays fp32 in all of them but one: it is a tiny share of
the compute, and the final normalise(P·(z − μ)) is exactly where 8-bit activations would cost accuracy. The
exception is ``static-head``, for CNNs only: a small CNN's fp32 head weights (256→512→256: 1 MB) are most of
its int8 file, so this candidate quantizes the head's layers like the encoder's (int8 per-channel weights,
calibrated uint8 inputs; the layers' outputs stay fp32) and keeps only the normalisations and the PCA
projection (d_enc × dims, 16 kB at 16 dims: quantizing it too saved 10 kB and moved nothing measurable) fp32.
It is a candidate like the others: ``int8_select`` measures it and keeps it only where it passes every gate.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..device.errors import MonoconError
from .fold import HEAD_PREFIX, PROJECTION_PREFIX
from .gates import batch_rows

TAIL_PREFIX = "tail."
# A constant Gather table with at least this many elements is stored quantized (MiniLM: the 30522 x 384 word
# embeddings; the position table, cut to the tokenizer's 128 rows by export, and the 2 x 384 token types stay fp32).
LARGE_GATHER_ELEMENTS = 1 << 16
# With table_bits=4 a table of at least this many elements (MiniLM's 30522 x 384 word embeddings, not the
# 512 x 384 position table) is stored in 4-bit blocks instead of int8 rows.
TABLE_4BIT_ELEMENTS = 1 << 18
# MatMulNBits block (input channels per scale) and the int8-compute kernel level (4 = int8 activations).
NBITS_BLOCK = 32
NBITS_ACCURACY_LEVEL = 4
# SmoothQuant migration strength: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (Xiao et al. 2023 use 0.5 for
# BERT-like encoders); int8_select tries SMOOTH_ALPHAS and keeps the one with the least simulated loss.
SMOOTH_ALPHA = 0.5
SMOOTH_ALPHAS = (0.3, 0.5, 0.65, 0.8)
# A smoothing factor is kept inside [SMOOTH_MIN, 1 / SMOOTH_MIN] (a near-zero channel must not blow a weight up).
SMOOTH_MIN = 1e-3

GATHER_INT8 = "int8 per row (symmetric, one fp32 scale per table row): Gather(int8) · Gather(scale)"
GATHER_INT4 = (f"4-bit blocks of {NBITS_BLOCK}, symmetric, one fp32 scale per block: packed nibbles gathered and "
               "unpacked by standard ops (BitwiseAnd / BitShift · Cast · Sub 8 · Mul scale)")
STATIC_SCHEME = {
    "method": "static", "format": "QDQ", "activations": "uint8 (per-tensor, MinMax calibration)",
    "weights": "int8 per-channel", "op_types": ["Conv", "MatMul", "Gemm"], "fp32": "head + normalise + PCA tail",
}
STATIC_HEAD_SCHEME = {
    **STATIC_SCHEME, "method": "static-head",
    "head": "int8 per-channel weights, uint8 inputs (QDQ, MinMax calibration) as the encoder; fp32 layer outputs",
    "fp32": "normalise + PCA projection (the head's layers are int8)",
}
DYNAMIC_SCHEME = {
    "method": "dynamic", "format": "QOperator (MatMulInteger / DynamicQuantizeLinear)",
    "activations": "uint8, scales computed per batch at run time", "weights": "int8 per-channel",
    "op_types": ["MatMul", "Gemm", "Gather"], "gather": GATHER_INT8, "fp32": "head + normalise + PCA tail",
}
NBITS8_SCHEME = {
    "method": "weight-only", "format": f"MatMulNBits (8 bits, accuracy_level={NBITS_ACCURACY_LEVEL}: int8 compute)",
    "activations": "int8 inside MatMulNBits (accuracy level 4), float32 between nodes",
    "weights": f"int8, symmetric, one scale per block of {NBITS_BLOCK} input channels",
    "op_types": ["MatMul", "Gather"], "gather": GATHER_INT8, "fp32": "head + normalise + PCA tail",
}
INT4_SCHEME = {
    "method": "weight-only", "format": f"MatMulNBits (4 bits, accuracy_level={NBITS_ACCURACY_LEVEL})",
    "activations": "int8 inside MatMulNBits (accuracy level 4), float32 between nodes",
    "weights": f"4-bit, symmetric, one scale per block of {NBITS_BLOCK} input channels",
    "op_types": ["MatMul", "Gather"], "gather": GATHER_INT4, "fp32": "head + normalise + PCA tail",
}


class _Batches:
    """A CalibrationDataReader over a list of input dicts (onnxruntime asks for ``get_next`` until None)."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(list(batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # part of the CalibrationDataReader interface; calibration reads once
        pass


def tensor_readers(graph) -> dict[str, list]:
    """Return, for each tensor name of ``graph``, the nodes that read it (in graph order)."""
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    return readers


def drop_unread_initializers(graph, among: Iterable[str] | None = None) -> None:
    """Remove (in place) the initializers of ``graph`` that no node reads; only those named in ``among`` when given."""
    used = {i for n in graph.node for i in n.input}
    among = None if among is None else set(among)
    for init in list(graph.initializer):
        if init.name not in used and (among is None or init.name in among):
            graph.initializer.remove(init)


def tail_nodes(model) -> list[str]:
    """Return the names of the nodes that read a folded-tail initializer (head or PCA projection weights)."""
    tail = {i.name for i in model.graph.initializer
            if i.name.startswith(TAIL_PREFIX) and (HEAD_PREFIX in i.name or PROJECTION_PREFIX in i.name)}
    return [n.name for n in model.graph.node if n.name and tail.intersection(n.input)]


def head_nodes(model) -> list[str]:
    """Return the names of the nodes that read a folded head initializer (the head's Gemm / MatMul layers;
    the PCA projection excluded)."""
    head = {i.name for i in model.graph.initializer if i.name.startswith(TAIL_PREFIX) and HEAD_PREFIX in i.name}
    return [n.name for n in model.graph.node if n.name and head.intersection(n.input)]


def has_head(path: Path) -> bool:
    """Return True when the ONNX graph at ``path`` holds a folded head (the baseline run's has none)."""
    import onnx

    return bool(head_nodes(onnx.load(str(path), load_external_data=False)))


def weight_matmuls(model) -> list[str]:
    """Return the names of the MatMul nodes with a constant 2-D float B (what int8 schemes quantize), tail excluded,
    in graph order."""
    from onnx import TensorProto

    consts = {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT and len(i.dims) == 2}
    tail = set(tail_nodes(model))
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.name and n.input[1] in consts and n.name not in tail]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's logging and prints (model code does not print)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _preprocess(src: Path, dst: Path) -> None:
    """Run onnxruntime's quant pre-processing (ONNX shape inference + graph optimisation) from ``src`` to ``dst``.

    Symbolic shape inference is skipped: ONNX shape inference covers these graphs, and on the exported
    transformer the symbolic pass is incomplete and, before failing, dumps sym_shape_infer_temp.onnx
    (+ ~90 MB of external data) into the current directory.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


@contextlib.contextmanager
def _preprocessed(fp32: Path, out: Path, quantize_head: bool = False) -> Iterator[tuple[Path, list[str]]]:
    """Yield (pre-processed copy of ``fp32`` in a temporary folder beside ``out``, its tail nodes to keep fp32),
    with onnxruntime's quantization tools silenced. ``quantize_head``: the head's nodes are not in the list
    (only the PCA projection's are); MonoconError where the graph has no head."""
    import onnx

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        _preprocess(fp32, pre)
        model = onnx.load(str(pre))
        keep = tail_nodes(model)
        if quantize_head:
            head = set(head_nodes(model))
            if not head:
                raise MonoconError("the graph has no folded head to quantize (a baseline run): use the static scheme")
            keep = [n for n in keep if n not in head]
        yield pre, keep


def quantize_static_qdq(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]],
                        quantize_head: bool = False) -> dict:
    """Write a static QDQ int8 graph of ``fp32`` to ``out``, calibrated on ``calibration`` batches; return the scheme.

    ``quantize_head`` (the ``static-head`` scheme): the folded head's Gemm / MatMul layers are quantized too;
    otherwise the whole tail (head, normalisation, PCA projection) stays fp32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise MonoconError("static int8 quantization needs calibration images, got none")
    # static-head: the head layers' inputs and weights are int8, their outputs stay fp32 (no Q/DQ after a
    # Gemm / MatMul; the encoder has none, so only the head's). Measured on the tiny-imagenet-100 MonoCon run at
    # 16 dims: quantizing the outputs too cost mean cos 0.9947 -> 0.9932 and Recall@1 0.0 -> 1.0 point, at the
    # same speed; int8 weights dequantized for fp32 Gemms (weight-only) kept cos 0.9978 but the graph ran at
    # 0.11 ms (static 0.09, this 0.08, fp32 0.12): onnxruntime dequantizes the weights at every call.
    extra = {"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]} if quantize_head else {}
    with _preprocessed(fp32, out, quantize_head) as (pre, exclude):
        quantize_static(str(pre), str(out), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(STATIC_SCHEME["op_types"]), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                        calibration_providers=["CPUExecutionProvider"], extra_options=extra)
    scheme = dict(STATIC_HEAD_SCHEME if quantize_head else STATIC_SCHEME, fp32_nodes=list(exclude))
    return {**scheme, "calibration_batches": len(calibration),
            "calibration_examples": batch_rows(calibration)}


def quantize_dynamic_int8(fp32: Path, out: Path, keep_fp32: Sequence[str] = (), table_bits: int = 8) -> dict:
    """Write a dynamically quantized int8 graph of ``fp32`` to ``out`` (per-channel int8 MatMul weights, uint8
    activations quantized at run time, large Gather tables int8 per row); ``keep_fp32``: MatMul nodes left fp32
    (the mixed scheme); ``table_bits=4`` stores the tables of at least TABLE_4BIT_ELEMENTS (the word
    embeddings) in 4-bit blocks instead (unpacked by standard ops: ``unpack_block_quantized_gathers``). Return
    the scheme."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if table_bits not in (4, 8):
        raise MonoconError(f"Gather tables are stored in 8 or 4 bits, got {table_bits}")
    with _preprocessed(fp32, out) as (pre, tail):
        # quantize_dynamic first rewrites every Gemm as <name>_MatMul (+ <name>_Add): exclude both names.
        exclude = [f"{n}{suffix}" for n in tail + list(keep_fp32) for suffix in ("", "_MatMul")]
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    model = onnx.load(str(out))
    gathers4 = quantize_gathers_4bit(model) if table_bits == 4 else []
    gathers = quantize_gathers_int8(model)
    # After the int8 pass: unpacked, the 4-bit table's block scales are a float table read by a Gather, which that
    # pass would quantize again.
    unpack_block_quantized_gathers(model)
    onnx.save_model(model, str(out))
    scheme = dict(DYNAMIC_SCHEME, gather_tables=gathers4 + gathers)
    if gathers4:
        scheme.update(gather=f"{GATHER_INT4} for the tables of >= {TABLE_4BIT_ELEMENTS} elements, {GATHER_INT8} "
                             "for the other large tables", gather_tables_4bit=gathers4)
    if keep_fp32:
        scheme.update(method="mixed", fp32=f"{len(keep_fp32)} most sensitive MatMuls + head + normalise + PCA tail",
                      kept_fp32=list(keep_fp32))
    return scheme


def quantize_nbits(fp32: Path, out: Path, bits: int = 8, block_size: int = NBITS_BLOCK,
                   accuracy_level: int | None = NBITS_ACCURACY_LEVEL) -> dict:
    """Write a graph of ``fp32`` with MatMulNBits weights of ``bits`` (8 or 4; block-wise symmetric scales) to
    ``out``: 8 bits stores the large Gather tables int8 per row, 4 bits in 4-bit blocks
    (``unpack_block_quantized_gathers``). ``accuracy_level=4`` runs the MatMuls on int8 kernels (None: onnxruntime's
    default, fp32 compute). Return the scheme."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if bits not in (4, 8):
        raise MonoconError(f"MatMulNBits schemes here are 8 or 4 bits, got {bits}")
    with _quiet(), np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks: onnxruntime divides by 0
        model = onnx.load(str(fp32))
        exclude = tail_nodes(model)
        if bits == 4:
            exclude += _small_gathers(model, LARGE_GATHER_ELEMENTS)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level, nodes_to_exclude=exclude,
                                         op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",),
                                         quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer.process()
        model = quantizer.model.model
    scheme = dict(NBITS8_SCHEME if bits == 8 else INT4_SCHEME, block_size=block_size, accuracy_level=accuracy_level)
    if bits == 8:
        scheme["gather_tables"] = quantize_gathers_int8(model)
    else:
        scheme["gather_tables"] = _block_quantized_tables(model)
        unpack_block_quantized_gathers(model)
    onnx.save_model(model, str(out))
    return scheme


def quantize_gathers_4bit(model, min_elements: int = TABLE_4BIT_ELEMENTS) -> list[str]:
    """Store every constant Gather table of ``model`` with at least ``min_elements`` (in place) as 4-bit
    symmetric blocks of NBITS_BLOCK along the row (onnxruntime's GatherBlockQuantized); return their names."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    exclude = _small_gathers(model, min_elements)
    if len(exclude) == sum(n.op_type == "Gather" for n in model.graph.node):
        return []
    with _quiet(), np.errstate(divide="ignore", invalid="ignore"):
        quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=NBITS_BLOCK, is_symmetric=True,
                                         nodes_to_exclude=exclude, op_types_to_quantize=("Gather",),
                                         quant_axes=(("Gather", 1),))
        quantizer.process()
    quantized = quantizer.model.model
    if quantized is not model:
        model.CopyFrom(quantized)
    return _block_quantized_tables(model)


def unpack_block_quantized_gathers(model) -> list[str]:
    """Replace (in place) each 4-bit GatherBlockQuantized node of ``model`` by standard ONNX ops reading the same
    4-bit values and block scales; return the names of the tables rewritten.

    onnxruntime's GatherBlockQuantized costs ~34 µs a call at one thread for a dozen MiniLM tokens (an int8 row
    Gather: ~5 µs), about 4 % of the int8 text graph — enough to decide the int8 choice's tie between the 4-bit and
    the 8-bit word table by noise. The same values as offset nibbles (q + 8, two per byte) are gathered and unpacked
    by BitwiseAnd / BitShift, Cast, Sub 8 and Mul by the block's scale (~11 µs): the outputs are identical. Rewritten
    only where the node is 4-bit, symmetric, gathers rows (axis 0) of blocks along the row, from rank-2 indices that
    are a graph input (the text graphs' ``input_ids``); any other stays as it is.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if not any(o.domain in ("", "ai.onnx") and o.version >= 18 for o in model.opset_import):
        return []  # BitwiseAnd needs opset 18
    inits = {i.name: i for i in graph.initializer}
    rank2 = {i.name for i in graph.input if len(i.type.tensor_type.shape.dim) == 2}
    done: list[str] = []
    replaced: list[str] = []
    new_nodes = []
    for node in graph.node:
        attrs = {a.name: a.i for a in node.attribute}
        data = inits.get(node.input[0]) if node.op_type == "GatherBlockQuantized" else None
        if (data is None or data.data_type != TensorProto.INT4 or len(node.input) != 3 or node.input[1] not in rank2
                or node.input[2] not in inits or attrs.get("gather_axis", 0) != 0
                or attrs.get("quantize_axis", 1) not in (1, -1) or attrs.get("bits", 4) != 4):
            new_nodes.append(node)
            continue
        q = numpy_helper.to_array(data).astype(np.int8)  # (rows, width), values in [-8, 7]
        rows, width = q.shape
        block = int(attrs.get("block_size", NBITS_BLOCK))
        if width % block or width % 2:  # whole blocks, whole bytes of two nibbles
            new_nodes.append(node)
            continue
        offset = (q + 8).astype(np.uint8)
        name = node.input[0].removesuffix("_Q4")
        packed, stem = f"{name}.q4", f"{node.name or name}.unpack"
        graph.initializer.append(numpy_helper.from_array(offset[:, 0::2] | (offset[:, 1::2] << 4), packed))
        consts = {"m15": np.array(15, np.uint8), "s4": np.array(4, np.uint8), "last": np.array([-1], np.int64),
                  "eight": np.array(8.0, np.float32), "blocks": np.array([0, 0, width // block, block], np.int64),
                  "rows": np.array([0, 0, width], np.int64)}
        for key, value in consts.items():
            graph.initializer.append(numpy_helper.from_array(value, f"{stem}.{key}"))
        t = lambda key: f"{stem}.{key}"  # noqa: E731 - names of this node's tensors
        ids, scales = node.input[1], node.input[2]
        new_nodes += [
            helper.make_node("Gather", [packed, ids], [t("packed_rows")], name=t("gather")),
            helper.make_node("BitwiseAnd", [t("packed_rows"), t("m15")], [t("even")], name=t("and")),
            helper.make_node("BitShift", [t("packed_rows"), t("s4")], [t("odd")], name=t("shift"), direction="RIGHT"),
            helper.make_node("Unsqueeze", [t("even"), t("last")], [t("even1")], name=t("unsqueeze_even")),
            helper.make_node("Unsqueeze", [t("odd"), t("last")], [t("odd1")], name=t("unsqueeze_odd")),
            helper.make_node("Concat", [t("even1"), t("odd1")], [t("pairs")], name=t("concat"), axis=-1),
            helper.make_node("Reshape", [t("pairs"), t("blocks")], [t("nibbles")], name=t("reshape_blocks")),
            helper.make_node("Cast", [t("nibbles")], [t("nibbles_f")], name=t("cast"), to=TensorProto.FLOAT),
            helper.make_node("Sub", [t("nibbles_f"), t("eight")], [t("values")], name=t("sub")),
            helper.make_node("Gather", [scales, ids], [t("row_scales")], name=t("gather_scales")),
            helper.make_node("Unsqueeze", [t("row_scales"), t("last")], [t("block_scales")],
                             name=t("unsqueeze_scales")),
            helper.make_node("Mul", [t("values"), t("block_scales")], [t("dequantized")], name=t("mul")),
            helper.make_node("Reshape", [t("dequantized"), t("rows")], [node.output[0]], name=t("reshape_rows")),
        ]
        done.append(name)
        replaced.append(data.name)
    if done:
        del graph.node[:]
        graph.node.extend(new_nodes)
        drop_unread_initializers(graph, among=replaced)
    return done


def _block_quantized_tables(model) -> list[str]:
    """Return the names of the tables ``model`` gathers in 4-bit blocks (GatherBlockQuantized's ``<name>_Q4``)."""
    return [n.input[0].removesuffix("_Q4") for n in model.graph.node if n.op_type == "GatherBlockQuantized"]


def _small_gathers(model, min_elements: int) -> list[str]:
    """Return the names of the Gather nodes that do not read a large table (``_large_table``): left unquantized."""
    return [n.name for n in model.graph.node if n.op_type == "Gather" and not _large_table(model, n, min_elements)]


def _large_table(model, node, min_elements: int = LARGE_GATHER_ELEMENTS) -> bool:
    """Return True when ``node`` gathers from a constant float table of at least ``min_elements`` (axis 0)."""
    from onnx import TensorProto

    if node.op_type != "Gather" or any(a.name == "axis" and a.i != 0 for a in node.attribute):
        return False
    init = next((i for i in model.graph.initializer if i.name == node.input[0]), None)
    return (init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) == 2
            and int(np.prod(init.dims)) >= min_elements)


def quantize_gathers_int8(model, min_elements: int = LARGE_GATHER_ELEMENTS) -> list[str]:
    """Store every large constant Gather table of ``model`` (in place) as int8 rows with one fp32 scale per row.

    ``Gather(table, ids)`` becomes ``Cast(Gather(table_int8, ids)) · Gather(row_scales, ids)``: standard ONNX
    ops, 4× fewer bytes, and a per-row scale (a token's own range) rather than one range for the whole table.
    Returns the names of the tables it replaced (their int8 copies are named ``<table>.int8``).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    readers = tensor_readers(graph)
    inits = {i.name: i for i in graph.initializer}
    done: list[str] = []
    new_nodes = []
    for node in graph.node:
        if not _large_table(model, node, min_elements) or len(readers.get(node.input[0], [])) != 1:
            new_nodes.append(node)
            continue
        name, ids, out = node.input[0], node.input[1], node.output[0]
        table = numpy_helper.to_array(inits[name]).astype(np.float32)
        scale = np.abs(table).max(axis=1, keepdims=True) / np.float32(127.0)
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}.int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}.row_scale")])
        base = node.name or out
        new_nodes += [
            helper.make_node("Gather", [f"{name}.int8", ids], [f"{out}.int8"], name=f"{base}.int8", axis=0),
            helper.make_node("Cast", [f"{out}.int8"], [f"{out}.float"], name=f"{base}.cast", to=TensorProto.FLOAT),
            helper.make_node("Gather", [f"{name}.row_scale", ids], [f"{out}.scale"], name=f"{base}.scale", axis=0),
            helper.make_node("Mul", [f"{out}.float", f"{out}.scale"], [out], name=f"{base}.dequantize"),
        ]
        done.append(name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return done


def fake_quant_switches(model, nodes: Sequence[str]) -> tuple[object, dict[str, str]]:
    """Return (a copy of ``model`` in which each MatMul of ``nodes`` can be switched to simulated dynamic int8,
    {node: the name of its bool switch input}).

    A switched-on node multiplies DequantizeLinear(DynamicQuantizeLinear(x)) — the uint8 per-tensor activation
    of onnxruntime's dynamic scheme, computed at run time — by its weight rounded to int8 per output channel
    (symmetric), in fp32: what the dynamic int8 kernel computes, without its integer arithmetic. Switched off,
    it is the fp32 MatMul. One session then measures every node's effect on the output (``int8_select``).
    """
    import copy

    from onnx import TensorProto, helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    switches: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        if node.name not in wanted:
            new_nodes.append(node)
            continue
        x, w_name = node.input[0], node.input[1]
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        scale = np.abs(w).max(axis=0, keepdims=True) / np.float32(127.0)
        scale[scale == 0] = 1.0
        w_q = (np.clip(np.rint(w / scale), -127, 127) * scale).astype(np.float32)
        key = node.name
        switch = f"{key}.int8_switch"
        switches[node.name] = switch
        graph.input.append(helper.make_tensor_value_info(switch, TensorProto.BOOL, []))
        graph.initializer.append(numpy_helper.from_array(w_q, f"{w_name}.fake_int8"))
        new_nodes += [
            helper.make_node("DynamicQuantizeLinear", [x], [f"{key}.xq", f"{key}.xs", f"{key}.xz"], name=f"{key}.dql"),
            helper.make_node("DequantizeLinear", [f"{key}.xq", f"{key}.xs", f"{key}.xz"], [f"{key}.xdq"],
                             name=f"{key}.dq"),
            helper.make_node("Where", [switch, f"{key}.xdq", x], [f"{key}.x"], name=f"{key}.x_switch"),
            helper.make_node("Where", [switch, f"{w_name}.fake_int8", w_name], [f"{key}.w"], name=f"{key}.w_switch"),
            helper.make_node("MatMul", [f"{key}.x", f"{key}.w"], list(node.output), name=node.name),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model, switches


def layernorm_matmul_groups(model) -> list[dict]:
    """Return the LayerNormalization nodes whose output feeds weight MatMuls (``weight_matmuls``: Q/K/V of the
    next layer, FFN1), as [{ln, output, gamma, beta, matmuls: [names], others: [names of the other readers]}].

    Only a LayerNormalization with constant 1-D gamma and beta over the last axis qualifies: those are what
    an equalisation folds 1/s into.
    """
    inits = {i.name: i for i in model.graph.initializer}
    matmuls = set(weight_matmuls(model))
    readers = tensor_readers(model.graph)
    outputs = {o.name for o in model.graph.output}
    groups = []
    for n in model.graph.node:
        if n.op_type != "LayerNormalization" or len(n.input) < 3 or len(n.output) < 1:
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
        gamma, beta = inits.get(n.input[1]), inits.get(n.input[2])
        if axis != -1 or gamma is None or beta is None or len(gamma.dims) != 1 or len(beta.dims) != 1:
            continue
        users = readers.get(n.output[0], [])
        mm = [u.name for u in users if u.name in matmuls and u.input[0] == n.output[0]]
        if not mm:
            continue
        others = [u.name for u in users if u.name not in mm]
        groups.append({"ln": n.name, "output": n.output[0], "gamma": n.input[1], "beta": n.input[2], "matmuls": mm,
                       "others": others, "graph_output": n.output[0] in outputs})
    return groups


def activation_channel_max(model, names: Sequence[str], batches: Iterable[dict[str, np.ndarray]]) -> dict:
    """Return {tensor: max |x| per last-axis channel over ``batches``} for the tensors ``names`` of ``model``
    (every token of every batch, padding included: the dynamic quantizer's range sees them too)."""
    import copy

    from onnx import TensorProto, helper

    from .int8_select import session

    probe = copy.deepcopy(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in names if n not in have])
    sess = session(probe.SerializeToString())
    out: dict[str, np.ndarray] = {}
    for feed in batches:
        for name, value in zip(names, sess.run(list(names), feed)):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            out[name] = m if name not in out else np.maximum(out[name], m)
    if not out:
        raise MonoconError("smoothing needs calibration inputs, got none")
    return out


def smoothing_factors(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """Return SmoothQuant's per-input-channel s = max|X|^alpha / max|W|^(1 - alpha), 1 where a side is all zero,
    clipped to [SMOOTH_MIN, 1 / SMOOTH_MIN]."""
    if not 0.0 <= alpha <= 1.0:
        raise MonoconError(f"the smoothing strength alpha must be in [0, 1], got {alpha}")
    x = np.asarray(x_max, np.float64)
    w = np.asarray(w_max, np.float64)
    s = np.ones_like(x)
    ok = (x > 0) & (w > 0)
    s[ok] = x[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, SMOOTH_MIN, 1.0 / SMOOTH_MIN).astype(np.float32)


def smooth_layernorm_matmuls(model, act_max: dict[str, np.ndarray], alpha: float = SMOOTH_ALPHA) -> list[dict]:
    """Equalise (in place, SmoothQuant) the activations of every LayerNorm → weight-MatMul group of ``model``.

    For each group (``layernorm_matmul_groups``): s from the LayerNorm output's calibrated per-channel max
    ``act_max[output]`` and the largest |weight| of each input row over the group's MatMuls; gamma and beta
    are divided by s and every MatMul's weight rows multiplied by s, so X·W is unchanged while X's outlier
    channels shrink before the dynamic per-tensor activation quantization. The LayerNorm's other readers (the
    residual Add) read a ``Mul(·, s)`` that restores the unscaled output. Exact in real arithmetic; in fp32
    up to rounding. Returns [{ln, matmuls, s_min, s_max, x_max_ratio_before, x_max_ratio_after}].
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    record, replaced = [], set()
    for g in layernorm_matmul_groups(model):
        x_max = np.asarray(act_max[g["output"]], np.float32)
        weights = {m: numpy_helper.to_array(inits[nodes[m].input[1]]).astype(np.float32) for m in g["matmuls"]}
        w_max = np.max(np.stack([np.abs(w).max(axis=1) for w in weights.values()]), axis=0)
        s = smoothing_factors(x_max, w_max, alpha)
        ln = nodes[g["ln"]]
        for slot, key in ((1, "gamma"), (2, "beta")):
            value = numpy_helper.to_array(inits[g[key]]).astype(np.float32) / s
            name = f"{g[key]}.smooth.{g['ln']}"  # per LayerNorm: an exporter may share equal gammas
            graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
            replaced.add(ln.input[slot])
            ln.input[slot] = name
        for m, w in weights.items():
            node = nodes[m]
            name = f"{node.input[1]}.smooth.{m}"
            graph.initializer.append(numpy_helper.from_array((w * s[:, None]).astype(np.float32), name))
            replaced.add(node.input[1])
            node.input[1] = name
        # (not "<output>.smooth" + "_scale": the dynamic quantizer names its activation scale "<input>_scale")
        smoothed, factors = f"{g['output']}.smoothed", f"{g['output']}.smoothing_factors"
        ln.output[0] = smoothed
        for m in g["matmuls"]:
            nodes[m].input[0] = smoothed
        if g["others"] or g["graph_output"]:  # the residual reads the unscaled LayerNorm output
            graph.initializer.append(numpy_helper.from_array(s, factors))
            restore = helper.make_node("Mul", [smoothed, factors], [g["output"]],
                                       name=f"{g['ln']}.unsmooth")
            position = list(graph.node).index(ln) + 1
            graph.node.insert(position, restore)
        ratio = lambda v: float(v.max() / max(float(np.median(v)), 1e-12))  # noqa: E731
        record.append({"layernorm": g["ln"], "matmuls": list(g["matmuls"]), "s_min": float(s.min()),
                       "s_max": float(s.max()), "x_max_over_median_before": ratio(x_max),
                       "x_max_over_median_after": ratio(x_max / s)})
    drop_unread_initializers(graph, replaced)  # the unscaled originals
    return record


def merge_parallel_matmuls(model) -> list[dict]:
    """Merge (in place) the weight MatMuls that read one tensor, each followed by its own bias Add (a layer's
    Q, K and V projections), into one MatMul over the concatenated weights, one Add and a Split.

    Exact: every output column is the same dot product. For dynamic int8 it is one activation quantization and
    one int8 GEMM instead of three (the per-channel weight scales are unchanged). Returns [{merged, into}].
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers = tensor_readers(graph)
    weight = set(weight_matmuls(model))
    record = []
    for source in list(readers):
        mms = [n for n in readers[source] if n.name in weight and n.input[0] == source]
        if len(mms) < 2:
            continue
        adds, biases = [], []
        for mm in mms:
            users = readers.get(mm.output[0], [])
            add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
            other = None if add is None else [i for i in add.input if i != mm.output[0]]
            if add is None or len(other) != 1 or other[0] not in inits or len(inits[other[0]].dims) != 1:
                break
            adds.append(add)
            biases.append(numpy_helper.to_array(inits[other[0]]).astype(np.float32))
        if len(adds) != len(mms):
            continue
        ws = [numpy_helper.to_array(inits[m.input[1]]).astype(np.float32) for m in mms]
        if len({w.shape[0] for w in ws}) != 1 or any(b.shape[0] != w.shape[1] for b, w in zip(biases, ws)):
            continue
        key = f"{mms[0].name}.merged"
        graph.initializer.extend([numpy_helper.from_array(np.concatenate(ws, axis=1), f"{key}.weight"),
                                  numpy_helper.from_array(np.concatenate(biases), f"{key}.bias"),
                                  numpy_helper.from_array(np.array([w.shape[1] for w in ws], np.int64),
                                                          f"{key}.sizes")])
        new = [helper.make_node("MatMul", [source, f"{key}.weight"], [f"{key}.out"], name=key),
               helper.make_node("Add", [f"{key}.out", f"{key}.bias"], [f"{key}.biased"], name=f"{key}.bias"),
               helper.make_node("Split", [f"{key}.biased", f"{key}.sizes"], [a.output[0] for a in adds],
                                name=f"{key}.split", axis=-1)]
        position = min(list(graph.node).index(n) for n in mms)
        for n in mms + adds:
            graph.node.remove(n)
        for k, n in enumerate(new):
            graph.node.insert(position + k, n)
        record.append({"merged": [m.name for m in mms], "into": key})
    drop_unread_initializers(graph, inits)  # the separate Q/K/V weights and biases
    return record


def stamp_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the metadata_props of the ONNX file at ``path`` with ``metadata``."""
    import onnx

    from .onnx_export import set_metadata

    model = onnx.load(str(path))
    set_metadata(model, metadata)
    onnx.save_model(model, str(path))

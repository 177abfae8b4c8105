"""int8 graphs with onnxruntime's quantization tools: static QDQ for CNNs, dynamic for transformers.

The folded tail (head, normalisation, PCA projection) stays fp32 in both: it is a tiny share of the compute,
and the final normalise(P·(z − μ)) is exactly where 8-bit activations would cost accuracy.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..device.errors import MonoconError
from .fold import HEAD_PREFIX, PROJECTION_PREFIX

TAIL_PREFIX = "tail."
STATIC_SCHEME = {
    "method": "static", "format": "QDQ", "activations": "uint8 (per-tensor, MinMax calibration)",
    "weights": "int8 per-channel", "op_types": ["Conv", "MatMul", "Gemm"], "fp32": "head + normalise + PCA tail",
}
DYNAMIC_SCHEME = {
    "method": "dynamic", "format": "QOperator (MatMulInteger / DynamicQuantizeLinear)",
    "activations": "uint8, scales computed per batch at run time", "weights": "int8 per-channel",
    "op_types": ["MatMul", "Gemm"], "fp32": "head + normalise + PCA tail",
}


class _Batches:
    """A CalibrationDataReader over a list of input dicts (onnxruntime asks for ``get_next`` until None)."""

    def __init__(self, batches: Iterable[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(list(batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # part of the CalibrationDataReader interface; calibration reads once
        pass


WEIGHT_ONLY_SCHEME = {
    "method": "weight-only", "format": "MatMulNBits (8 bits)",
    "activations": "float32", "weights": "int8, symmetric, one scale per block of input channels",
    "op_types": ["MatMul"], "fp32": "head + normalise + PCA tail, activations",
}


def tail_nodes(model) -> list[str]:
    """Return the names of the nodes that read a folded-tail initializer (head or PCA projection weights)."""
    tail = {i.name for i in model.graph.initializer
            if i.name.startswith(TAIL_PREFIX) and (HEAD_PREFIX in i.name or PROJECTION_PREFIX in i.name)}
    return [n.name for n in model.graph.node if n.name and tail.intersection(n.input)]


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
def _preprocessed(fp32: Path, out: Path) -> Iterator[tuple[Path, list[str]]]:
    """Yield (pre-processed copy of ``fp32`` in a temporary folder beside ``out``, its tail nodes to keep fp32),
    with onnxruntime's quantization tools silenced."""
    import onnx

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        _preprocess(fp32, pre)
        yield pre, tail_nodes(onnx.load(str(pre)))


def quantize_static_qdq(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> dict:
    """Write a static QDQ int8 graph of ``fp32`` to ``out``, calibrated on ``calibration`` batches; return the scheme."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise MonoconError("static int8 quantization needs calibration images, got none")
    with _preprocessed(fp32, out) as (pre, exclude):
        quantize_static(str(pre), str(out), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(STATIC_SCHEME["op_types"]), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                        calibration_providers=["CPUExecutionProvider"])
    return {**STATIC_SCHEME, "calibration_batches": len(calibration),
            "calibration_examples": int(sum(next(iter(b.values())).shape[0] for b in calibration))}


def quantize_dynamic_int8(fp32: Path, out: Path) -> dict:
    """Write a dynamically quantized int8 graph of ``fp32`` to ``out``; return the scheme."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _preprocessed(fp32, out) as (pre, exclude):
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(DYNAMIC_SCHEME["op_types"]),
                         per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    return dict(DYNAMIC_SCHEME)


def quantize_weights_int8(fp32: Path, out: Path, block_size: int = 32) -> dict:
    """Write a graph of ``fp32`` whose constant MatMul weights are int8 (block-wise symmetric scales,
    MatMulNBits with 8 bits) and whose activations stay float32 to ``out``; return the scheme."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet():
        model = onnx.load(str(fp32))
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                                         nodes_to_exclude=tail_nodes(model))
        quantizer.process()
        onnx.save_model(quantizer.model.model, str(out))
    return dict(WEIGHT_ONLY_SCHEME, block_size=block_size)


def stamp_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Replace the metadata_props of the ONNX file at ``path`` with ``metadata``."""
    import onnx

    from .onnx_export import set_metadata

    model = onnx.load(str(path))
    set_metadata(model, metadata)
    onnx.save_model(model, str(path))

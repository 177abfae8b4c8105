"""Export a folded module to one ONNX graph (dynamic batch / sequence axes), stamp metadata, check it."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..device.artifact import OUTPUT_NAME, TEXT_INPUTS, VISION_INPUTS
from ..device.errors import GateError, MonoconError

OPSET = 20
# The example batch the graph is traced with; the parity gate runs at another batch size on purpose.
EXPORT_BATCH = 2


def example_inputs(modality: str, input_shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """Return tracing inputs: pixels (EXPORT_BATCH, C, H, W), or token ids + mask (EXPORT_BATCH, 8)."""
    if modality == "vision":
        if input_shape is None:
            raise MonoconError("a vision export needs the input shape (C, H, W)")
        return (torch.rand(EXPORT_BATCH, *input_shape),)
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 6251, 102], [101, 2460, 102, 0, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    return ids, mask


def input_names(modality: str) -> tuple[str, ...]:
    """Return the graph's input names for ``modality``."""
    return VISION_INPUTS if modality == "vision" else TEXT_INPUTS


def export_onnx(folded: nn.Module, modality: str, inputs: tuple[torch.Tensor, ...], path: Path,
                metadata: dict[str, str], opset: int = OPSET) -> None:
    """Write ``folded`` as an ONNX file at ``path`` (weights inside the file), with ``metadata`` in metadata_props.

    Batch (and, for text, sequence) axes are dynamic. The output is renamed to ``OUTPUT_NAME`` after export:
    the exporter's own renaming can collide with internal value names (e.g. a BERT ``embedding`` node).
    """
    import onnx

    names = input_names(modality)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    if modality == "vision":
        dynamic = {names[0]: {0: batch}}
    else:
        seq = torch.export.Dim("sequence", min=1, max=4096)
        dynamic = {n: {0: batch, 1: seq} for n in names}
    # The exporter prints progress and warns about renamed axes, and its graph passes log at INFO once a
    # library has configured the root logger (onnxruntime.quantization does): model code stays silent.
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(folded, inputs, dynamo=True, input_names=list(names),
                                        dynamic_shapes=dynamic, opset_version=opset, external_data=False,
                                        optimize=True, verbose=False)
        except Exception as exc:
            raise MonoconError(f"torch.onnx.export failed: {type(exc).__name__}: {_first_line(exc)}") from None
    model = program.model_proto
    if len(model.graph.output) != 1:
        raise MonoconError(f"the exported graph has {len(model.graph.output)} outputs, expected 1")
    rename_value(model, model.graph.output[0].name, OUTPUT_NAME)
    _name_axes(model, modality)
    set_metadata(model, metadata)
    onnx.save_model(model, str(path))
    check_graph(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def rename_value(model, old: str, new: str) -> None:
    """Rename value ``old`` to ``new`` everywhere in ``model.graph``; an existing ``new`` is renamed out of the way."""
    if old == new:
        return
    g = model.graph
    taken = {v for n in g.node for v in (*n.input, *n.output)} | {i.name for i in g.initializer}
    taken |= {v.name for v in (*g.input, *g.output, *g.value_info)}
    if new in taken:
        spare = f"{new}_internal"
        while spare in taken:
            spare += "_"
        rename_value(model, new, spare)

    def swap(seq) -> None:
        for i, v in enumerate(seq):
            if v == old:
                seq[i] = new

    for n in g.node:
        swap(n.input)
        swap(n.output)
    for v in (*g.input, *g.output, *g.value_info, *g.initializer):
        if v.name == old:
            v.name = new


def _name_axes(model, modality: str) -> None:
    """Give the dynamic axes stable names (batch, sequence) on inputs and output."""
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
        if modality == "text" and value.name in TEXT_INPUTS and len(dims) > 1:
            dims[1].dim_param = "sequence"


def check_graph(path: Path) -> None:
    """Run ``onnx.checker.check_model(full_check=True)`` on the file; raise GateError if it fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape-inference errors
        raise GateError(f"onnx.checker rejected {path.name}: {_first_line(exc)}") from None


def set_metadata(model, metadata: dict[str, str]) -> None:
    """Replace the ``metadata_props`` of the loaded ONNX ``model`` with ``metadata``."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)

"""Write a transformer's residual additions as ``Sum`` so that onnxruntime keeps them apart from the LayerNorm.

At load, onnxruntime fuses every ``Add`` of two computed tensors that feeds a ``LayerNormalization`` into one
``SkipLayerNormalization`` kernel. At batch 1 on the CPU this project measures on, that kernel is slower than the
two it replaces: the MiniLM int8 graph runs ~20 % faster without it, the fp32 graph ~5 %
(the export records both timings: bench/results/int8-text-layout). ``Sum`` of two inputs is the same addition (an exact rewrite) but is not
what the fusion looks for, so any onnxruntime that loads the file — the device runtime or someone else's code —
runs Sum + LayerNormalization. Whether the rewrite ships is measured per graph (``try_residual_sum``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

Batch = dict[str, np.ndarray]


def residual_adds_as_sum(model) -> int:
    """Turn (in place) every ``Add`` of two computed tensors whose only reader is a ``LayerNormalization`` into a
    two-input ``Sum``; return how many."""
    from .quantize import tensor_readers

    graph = model.graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                       for o in n.output}
    outputs = {o.name for o in graph.output}
    readers = tensor_readers(graph)
    count = 0
    for node in graph.node:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or any(i in constants for i in node.input):
            continue
        users = readers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "LayerNormalization" and node.output[0] not in outputs:
            node.op_type = "Sum"
            count += 1
    return count


def try_residual_sum(fp32: Path, parity: Sequence[Batch], feeds: Sequence[Batch], calls: int,
                     atol: float) -> dict[str, Any]:
    """Rewrite the fp32 graph at ``fp32`` with ``residual_adds_as_sum``; keep it (replacing the file, so that every
    int8 candidate quantized from it inherits it) where it measurably helps: batch-1 CPU p50 (one thread, blocks
    of calls) at least FASTER_MARGIN lower for fp32 or for its dynamic int8 graph, neither more than FASTER_MARGIN
    higher, outputs within ``atol`` / 4. Returns the manifest's record."""
    import os
    import tempfile

    import onnx

    from .int8_select import FASTER_MARGIN, SPEED_KEY, measurably_faster, time_rewrite
    from .latency import session

    record: dict[str, Any] = {"rewrite": "residual Add -> Sum before each LayerNormalization, so onnxruntime does "
                                         "not fuse them into SkipLayerNormalization (exporting/residual_sum.py)",
                              "kept": False}
    model = onnx.load(str(fp32))
    record["sums"] = residual_adds_as_sum(model)
    if not record["sums"]:
        record["reason"] = "no residual Add feeds a LayerNormalization"
        return record
    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        rewritten = Path(tmp) / "sum.onnx"
        onnx.save_model(model, str(rewritten))
        del model
        a, b = session(fp32), session(rewritten)
        diff = max(float(np.abs(a.run(None, f)[0] - b.run(None, f)[0]).max()) for f in parity)
        del a, b
        record["max_abs_diff_to_add"] = diff
        _, timed, ratios = time_rewrite(fp32, rewritten, "sum", Path(tmp), feeds, calls)
        record["cpu_p50_ms"] = {k: v[SPEED_KEY] for k, v in timed.items()}
        record["sum_over_add_p50"] = ratios
        figures = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
        if diff > atol / 4:
            record["reason"] = f"outputs differ by {diff:.2g} from the graph with Add (> {atol / 4:g})"
        elif not measurably_faster(ratios):
            record["reason"] = (f"no measurable gain: Sum / Add p50 {figures} (needs <= {1 - FASTER_MARGIN:.2f} on "
                                f"one, <= {1 + FASTER_MARGIN:.2f} on all)")
        else:
            record.update(kept=True, reason=f"Sum / Add p50 {figures}")
            os.replace(rewritten, fp32)
    return record

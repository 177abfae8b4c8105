"""Run the fp32 graph's weight MatMuls with the weights as the *left* GEMM operand (an exact rewrite).

``y = x · W`` (x: tokens × K activations, W: K × N constant weights) is what the exporter writes; onnxruntime packs
W at load and its MLAS kernel streams the packed W while it multiplies. At batch 1 a sentence has ~10–30 tokens,
so there is little arithmetic per weight byte, and MiniLM's 42.5 MB of fp32 weights do not fit the L3: on the CPU
this project measures on, that kernel pays the memory stream and the arithmetic one after the other
(bench/results/fp32-matmul-bound). Computed as ``yᵀ = Wᵀ · xᵀ`` — ``Gemm(Wᵀ, x, bias as a column, transB=1)`` —
the weights become MLAS's A operand, read in place, and the few token columns the small packed operand; the
encoder then runs ~10–35 % faster at 8–48 tokens (``bench/weight_layout.py`` times both layouts per token count).

The rewrite, per weight MatMul (a 2-D float32 initializer as its second input, optionally followed by its bias
``Add`` or ``BiasGelu``):
- MatMuls that read the same activations (Q, K and V) become one Gemm over their stacked weights, then a Split;
- a MatMul whose only reader is the next weight MatMul, directly or through one elementwise activation (the
  feed-forward pair), hands its result over still transposed, the activation applied in that layout, so the pair
  costs one Transpose;
- every other result is transposed back and reshaped to the original leading axes.
Same arithmetic in another summation order: outputs agree to ~1e-6. Whether the rewrite ships is measured per graph
(``try_weight_layout``).

Where the A-operand weights sit in memory matters as much: on this project's CPU the same graph runs at ~2.3 or
~3.1 ms per onnxruntime session, and each weight buffer's address mod 4096 moves the odds (fresh sessions: fast in
12 of 16 at 512, 5 to 9 of 16 at 0, 1024, 2048 or onnxruntime's own placement, none at 256 —
``bench/weight_layout.py --offsets``; the rest of the session's buffers decide the remainder). So a kept rewrite
ships those weights as ONNX external data (``model.onnx.data``), each at a file offset ≡ LEFT_OPERAND_OFFSET
(mod 4096): onnxruntime maps external data into memory in place, so every session — the device runtime's or
anyone's — gets that address mod 4096.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..device.artifact import external_data_path
from ..device.errors import GateError, MonoconError

Batch = dict[str, np.ndarray]
MODES = ("auto", "transposed", "plain")
# Kept (auto) when batch-1 CPU p50 is at least FASTER_MARGIN lower and batch-64 time at most BATCH_SLOWER higher:
# devices call at batch 1; the batch path loses a little to the extra Transposes. The margin is smaller than the
# int8 table's 5 %: the rewrite is exact, so only the direction has to be clear, and a session whose weights land
# at a slow address (module docstring) times ~1.4x its fast self: an export measured 0.95, fresh fast sessions 0.66.
FASTER_MARGIN = 0.02
BATCH_SLOWER = 0.10
# File offset (mod the 4 KiB page) of every A-operand weight in the external data file; see the module docstring.
LEFT_OPERAND_OFFSET = 512
PAGE = 4096
BATCH_CALLS = 3

_BIAS_OPS = ("Add", "BiasGelu")
# One-input elementwise activations that may sit between two chained weight MatMuls (layout-independent).
_ACTIVATIONS = ("Gelu", "FastGelu", "Relu", "Tanh", "Sigmoid")


@dataclass
class _Candidate:
    """One weight MatMul and what follows it."""

    matmul: Any
    weight: np.ndarray  # K x N
    tail: Any | None = None  # the bias Add / BiasGelu, when there is one
    bias: np.ndarray | None = None
    feeds: "_Candidate | None" = None  # the weight MatMul that alone reads this one's result (chained, transposed)
    fed_by: "_Candidate | None" = None
    activation: Any | None = None  # an elementwise node between this one and ``feeds``
    nodes: list = field(default_factory=list)

    @property
    def output(self) -> str:
        return (self.tail if self.tail is not None else self.matmul).output[0]

    @property
    def gelu(self) -> bool:
        return self.tail is not None and self.tail.op_type == "BiasGelu"


def _shape(value_info: dict[str, Any], name: str) -> list | None:
    """Return the dims of ``name`` (int, or the symbolic name as a str), None when unknown."""
    info = value_info.get(name)
    if info is None or not info.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            return None
    return dims


def _candidates(graph, value_info: dict[str, Any]) -> list[_Candidate]:
    from onnx import TensorProto, numpy_helper

    from .quantize import tensor_readers

    inits = {i.name: i for i in graph.initializer}
    readers = tensor_readers(graph)
    graph_outputs = {o.name for o in graph.output}
    found: list[_Candidate] = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        if len(init.dims) != 2 or init.data_type != TensorProto.FLOAT:
            continue
        x_shape = _shape(value_info, node.input[0])
        if x_shape is None or len(x_shape) < 2 or x_shape[-1] != init.dims[0]:
            continue
        cand = _Candidate(node, numpy_helper.to_array(init))
        users = readers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type in _BIAS_OPS and node.output[0] not in graph_outputs:
            tail = users[0]
            other = [i for i in tail.input if i != node.output[0]]
            bias = numpy_helper.to_array(inits[other[0]]) if len(other) == 1 and other[0] in inits else None
            if bias is not None and bias.shape == (cand.weight.shape[1],) and bias.dtype == np.float32:
                cand.tail, cand.bias = tail, bias
        if cand.tail is None and node.output[0] in graph_outputs:
            continue
        found.append(cand)
    # a MatMul reading a tensor that no other weight MatMul reads (Q, K and V share theirs)
    readers_of = collections.Counter(c.matmul.input[0] for c in found)
    by_input = {c.matmul.input[0]: c for c in found if readers_of[c.matmul.input[0]] == 1}
    for c in found:
        handoff, activation = c.output, None
        users = readers.get(handoff, [])
        if (len(users) == 1 and users[0].op_type in _ACTIVATIONS and len(users[0].input) == 1
                and handoff not in graph_outputs):
            activation, handoff = users[0], users[0].output[0]
            users = readers.get(handoff, [])
        nxt = by_input.get(handoff)
        if (len(users) == 1 and nxt is not None and users[0] is nxt.matmul and handoff not in graph_outputs
                and c.output not in graph_outputs):
            c.feeds, nxt.fed_by, c.activation = nxt, c, activation
    return found


def weights_as_left_operand(model) -> dict[str, int]:
    """Rewrite (in place) every weight MatMul of ``model`` into a Gemm with its transposed weights as operand A;
    return {"matmuls", "gemms", "merged_groups", "transposes"} (``matmuls`` 0: nothing to rewrite, unchanged)."""
    from onnx import helper, numpy_helper

    from .quantize import drop_unread_initializers

    graph = model.graph
    value_info = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    cands = _candidates(graph, value_info)
    stats = {"gemms": 0, "matmuls": len(cands), "merged_groups": 0, "transposes": 0}
    if not cands:
        return stats
    taken = {v for n in graph.node for v in (*n.input, *n.output)} | {i.name for i in graph.initializer}

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    new_inits: dict[str, Any] = {}
    head_nodes: list = []  # nodes that read only graph inputs (the shapes of the activations)

    def const(base: str, value: np.ndarray) -> str:
        name = fresh(base)
        new_inits[name] = numpy_helper.from_array(value, name)
        return name

    graph_inputs = {i.name: _shape(value_info, i.name) for i in graph.input}
    lead_shapes: dict[tuple, str] = {}
    target_shapes: dict[tuple, str] = {}

    def target_shape(x: str, n: int, block: list) -> str:
        """Return a tensor holding x's shape with the last axis replaced by ``n``. Shared by every tensor with the
        same leading dims (ONNX: the same dim_param is the same size throughout a graph)."""
        lead = tuple(_shape(value_info, x)[:-1])
        if (lead, n) not in target_shapes:
            if all(isinstance(d, int) for d in lead):
                target_shapes[(lead, n)] = const("layout_shape", np.array([*lead, n], dtype=np.int64))
                return target_shapes[(lead, n)]
            if lead not in lead_shapes:
                lead_shapes[lead] = fresh("layout_lead")
                source = next((i for i, s in graph_inputs.items() if s is not None and tuple(s) == lead), None)
                if source is not None:
                    head_nodes.append(helper.make_node("Shape", [source], [lead_shapes[lead]]))
                else:  # no graph input of that shape: x's own leading axes
                    block.append(helper.make_node("Shape", [x], [lead_shapes[lead]], end=-1))
            target_shapes[(lead, n)] = fresh("layout_shape")
            block.append(helper.make_node("Concat", [lead_shapes[lead], const("layout_n", np.array([n], np.int64))],
                                          [target_shapes[(lead, n)]], axis=0))
        return target_shapes[(lead, n)]

    flat: dict[str, str] = {}

    def flattened(x: str, k: int, block: list) -> str:
        if len(_shape(value_info, x)) == 2:
            return x
        if x not in flat:
            flat[x] = fresh(f"{x}_rows")
            block.append(helper.make_node("Reshape", [x, const("layout_rows", np.array([-1, k], np.int64))],
                                          [flat[x]]))
        return flat[x]

    chained: dict[int, str] = {}  # id(candidate) -> its transposed result (N x rows), for the chained reader
    groups: dict[str, list[_Candidate]] = {}
    for c in cands:
        if c.fed_by is None and c.feeds is None and c.tail is not None and not c.gelu:
            groups.setdefault(c.matmul.input[0], []).append(c)
    merged = {id(c): g for g in groups.values() if len(g) > 1 for c in g}
    done: set[int] = set()
    for c in cands:
        if id(c) in done:
            continue
        block = c.nodes
        group = merged.get(id(c), [c])
        x = c.matmul.input[0]
        widths = [g.weight.shape[1] for g in group]
        stacked = np.ascontiguousarray(np.concatenate([g.weight.T for g in group], axis=0), dtype=np.float32)
        inputs = [const(f"{c.matmul.input[1]}_T" if len(group) == 1 else "layout_stacked_weight_T", stacked)]
        if c.fed_by is not None:  # the previous MatMul's result, still transposed: K x rows
            inputs.append(chained[id(c.fed_by)])
            trans_b = 0
        else:
            inputs.append(flattened(x, c.weight.shape[0], block))
            trans_b = 1
        if all(g.bias is not None for g in group):
            bias = np.concatenate([g.bias for g in group]).astype(np.float32)
            inputs.append(const("layout_bias_column", bias.reshape(-1, 1)))
        result = fresh(f"{c.output}_T")
        if c.gelu:
            pre = fresh(f"{result}_pre")
            block.append(helper.make_node("Gemm", inputs, [pre], transB=trans_b))
            block.append(helper.make_node("Gelu", [pre], [result], domain="com.microsoft"))
        else:
            block.append(helper.make_node("Gemm", inputs, [result], transB=trans_b))
        stats["gemms"] += 1
        if c.activation is not None:  # elementwise: the same node on the transposed tensor
            activated = fresh(f"{c.activation.output[0]}_T")
            node = helper.make_node(c.activation.op_type, [result], [activated], domain=c.activation.domain)
            node.attribute.extend(c.activation.attribute)
            block.append(node)
            result = activated
        if c.feeds is not None:
            chained[id(c)] = result
            done.add(id(c))
            continue
        rows = fresh(f"{c.output}_rows")
        block.append(helper.make_node("Transpose", [result], [rows], perm=[1, 0]))
        stats["transposes"] += 1
        origin = c  # the shape to restore is that of the chain's first input
        while origin.fed_by is not None:
            origin = origin.fed_by
        x0 = origin.matmul.input[0]
        if len(group) > 1:
            stats["merged_groups"] += 1
            parts = [fresh(f"{g.output}_rows") for g in group]
            block.append(helper.make_node("Split", [rows, const("layout_split", np.array(widths, np.int64))], parts, axis=1))
        else:
            parts = [rows]
        for g, part in zip(group, parts):
            if len(_shape(value_info, x0)) == 2:
                block.append(helper.make_node("Identity", [part], [g.output]))
            else:
                block.append(helper.make_node("Reshape", [part, target_shape(x0, g.weight.shape[1], block)],
                                              [g.output]))
            done.add(id(g))
    replaced = {id(n) for c in cands for n in (c.matmul, c.tail, c.activation) if n is not None}
    nodes = head_nodes + [n for n in graph.node if id(n) not in replaced] + [n for c in cands for n in c.nodes]
    del graph.node[:]
    graph.node.extend(_topological(nodes, {i.name for i in graph.input} | {i.name for i in graph.initializer}
                                   | set(new_inits)))
    graph.initializer.extend(new_inits.values())
    drop_unread_initializers(graph)
    produced = {o for n in graph.node for o in n.output}
    for info in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(info)
    if any(c.gelu for c in cands) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return stats


def _topological(nodes: list, available: set[str]) -> list:
    """Return ``nodes`` in an order where every node follows the producers of its inputs (stable: a node keeps its
    place unless an input is not yet produced)."""
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("weight layout rewrite: the graph has a cycle or an input nothing produces: "
                             + ", ".join(sorted({i for n in rest for i in n.input if i not in ready}))[:200])
        pending = rest
    return ordered


def left_operand_weights(model) -> list[str]:
    """Return the names of the initializers that are a Gemm's A operand over computed activations."""
    inits = {i.name for i in model.graph.initializer}
    return sorted({n.input[0] for n in model.graph.node
                   if n.op_type == "Gemm" and n.input[0] in inits and n.input[1] not in inits})


def place_left_operands(model, path: Path, offset: int = LEFT_OPERAND_OFFSET) -> dict[str, Any]:
    """Save ``model`` at ``path`` with its A-operand weights as external data (``external_data_path``), each at a
    file offset ≡ ``offset`` (mod PAGE); return {"file", "tensors", "bytes", "offset_mod_page"}. Empties those
    initializers in ``model`` (they now point at the file)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    names = set(left_operand_weights(model))
    data = external_data_path(path)
    position = 0
    with open(data, "wb") as fh:
        for init in model.graph.initializer:
            if init.name not in names:
                continue
            raw = init.raw_data or numpy_helper.to_array(init).tobytes()
            pad = (offset - position) % PAGE
            fh.write(b"\0" * pad)
            position += pad
            fh.write(raw)
            init.ClearField("raw_data")
            init.ClearField("float_data")
            init.data_location = TensorProto.EXTERNAL
            del init.external_data[:]
            for key, value in (("location", data.name), ("offset", str(position)), ("length", str(len(raw)))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
            position += len(raw)
    onnx.save_model(model, str(path))
    return {"file": data.name, "tensors": len(names), "bytes": position, "offset_mod_page": offset % PAGE}


def check_mode(mode: str) -> None:
    """Raise MonoconError unless ``mode`` is one of MODES."""
    if mode not in MODES:
        raise MonoconError(f"--fp32-layout must be one of {', '.join(MODES)}, got {mode!r}")


def try_weight_layout(fp32: Path, plain: Path, parity: Sequence[Batch], feeds: Sequence[Batch], calls: int,
                      atol: float, mode: str = "auto") -> dict[str, Any]:
    """Rewrite the fp32 graph at ``fp32`` with ``weights_as_left_operand``, its A-operand weights placed in
    its external data file (``place_left_operands``); keep the rewrite (replacing the file, the graph as it was
    moved to ``plain``: the source the int8 candidates quantize) where it measurably helps.

    ``mode`` "auto": kept when its outputs are within ``atol`` / 4 of the graph's on the ``parity`` batches, its
    batch-1 CPU p50 on ``feeds`` (one thread, blocks of calls as in the int8 table) at least FASTER_MARGIN lower,
    and its batch-64 time (the first parity batch) at most BATCH_SLOWER higher. "transposed": kept whatever the
    timings say (GateError if the outputs differ by more); "plain": not tried. Returns the manifest's record.
    """
    import os
    import shutil

    import onnx

    from .latency import session, sessions_latency, time_blocks

    check_mode(mode)
    record: dict[str, Any] = {"rewrite": "weight MatMuls as Gemm(Wᵀ, x, bias, transB=1): the weights are the GEMM's "
                                         "A operand, activations transposed (exporting/weight_layout.py)",
                              "mode": mode, "kept": False}
    if mode == "plain":
        record["reason"] = "--fp32-layout plain"
        return record
    model = onnx.load(str(fp32))
    record["stats"] = weights_as_left_operand(model)
    if not record["stats"]["matmuls"]:
        record["reason"] = "the graph has no weight MatMul"
        return record
    staging = fp32.parent / f"{fp32.stem}.transposed"
    staging.mkdir()
    candidate = staging / fp32.name  # its external data's file name must be the one it ships with
    record["external_data"] = place_left_operands(model, candidate)
    del model
    try:
        a, b = session(fp32, threads=1), session(candidate, threads=1)
        diff = max(float(np.abs(a.run(None, f)[0] - b.run(None, f)[0]).max()) for f in parity)
        record["max_abs_diff_to_plain"] = diff
        timed = sessions_latency({"plain": a, "transposed": b}, feeds, calls)
        batch = time_blocks({"plain": lambda f: a.run(None, f), "transposed": lambda f: b.run(None, f)},
                            list(parity)[:1], calls=2 * BATCH_CALLS, block=BATCH_CALLS, rewarm=1)
        del a, b
        ratio = timed["transposed"]["cpu_p50_ms"] / timed["plain"]["cpu_p50_ms"]
        batch_ratio = batch["transposed"]["cpu_p50_ms"] / batch["plain"]["cpu_p50_ms"]
        record.update(cpu_p50_ms={k: v["cpu_p50_ms"] for k, v in timed.items()},
                      batch_cpu_ms={k: v["cpu_p50_ms"] for k, v in batch.items()},
                      batch_rows=int(next(iter(parity[0].values())).shape[0]),
                      transposed_over_plain=ratio, batch_transposed_over_plain=batch_ratio)
        figures = f"batch-1 p50 transposed / plain {ratio:.2f}, batch {record['batch_rows']} {batch_ratio:.2f}"
        if diff > atol / 4:
            record["reason"] = f"outputs differ by {diff:.2g} from the plain graph (> {atol / 4:g})"
            if mode == "transposed":
                raise GateError(f"--fp32-layout transposed: {record['reason']}")
        elif mode == "transposed":
            record.update(kept=True, reason=f"--fp32-layout transposed ({figures})")
        elif ratio > 1 - FASTER_MARGIN or batch_ratio > 1 + BATCH_SLOWER:
            record["reason"] = (f"no measurable gain: {figures} (needs <= {1 - FASTER_MARGIN:.2f} at batch 1 and "
                                f"<= {1 + BATCH_SLOWER:.2f} at batch {record['batch_rows']})")
        else:
            record.update(kept=True, reason=figures)
        if record["kept"]:
            os.replace(fp32, plain)
            os.replace(candidate, fp32)
            os.replace(external_data_path(candidate), external_data_path(fp32))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record

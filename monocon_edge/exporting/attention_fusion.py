"""Fuse the exporter's decomposed attention into onnxruntime's MultiHeadAttention kernel.

torch.onnx (dynamo) writes BERT's scaled-dot-product attention as ~25 nodes per layer — Reshape/Transpose
of Q, K and V into heads, Q and K each scaled by a constant, MatMul, Add of the additive mask, Softmax, a
NaN guard (IsNaN + Where), MatMul with V, Transpose and Reshape back — which onnxruntime's transformer
optimizer does not recognise. At batch 1 those small nodes cost about as much as the int8 GEMMs, so they
are replaced by one ``com.microsoft.MultiHeadAttention(q, k, v, attention_bias=mask)`` per layer (same
math: softmax(scale · q kᵀ + mask) v per head, scale = the product of the two constants). The caller
checks the fused graph against the unfused one on real inputs before keeping it.
"""
from __future__ import annotations

from typing import Any

_PASS_THROUGH = ("Reshape", "Transpose", "Mul")


def _scalar(inits: dict[str, Any], name: str) -> float | None:
    from onnx import numpy_helper

    if name not in inits:
        return None
    value = numpy_helper.to_array(inits[name])
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _projection_width(inits: dict[str, Any], producers: dict[str, Any], name: str) -> int | None:
    """Return the last-axis width of the projection output ``name`` (a bias Add or a Split of merged ones)."""
    from onnx import numpy_helper

    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Add":
        const = [i for i in node.input if i in inits]
        return int(inits[const[0]].dims[-1]) if const and len(inits[const[0]].dims) == 1 else None
    if node.op_type == "Split" and len(node.input) > 1 and node.input[1] in inits:
        return int(numpy_helper.to_array(inits[node.input[1]])[list(node.output).index(name)])
    return None


def fuse_attention(model) -> list[dict[str, Any]]:
    """Replace (in place) every decomposed attention of ``model`` by a MultiHeadAttention node; return
    [{softmax, num_heads, scale}] for what was fused. A pattern that does not match exactly is left alone."""
    from onnx import helper

    from .quantize import drop_unread_initializers, tensor_readers

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers = tensor_readers(graph)

    def only_reader(name: str, op: str):
        users = readers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    def head_path(name: str) -> tuple[str, float, list] | None:
        """Walk from a per-head tensor back to the projection output: (it, constant scale, the nodes)."""
        scale, nodes = 1.0, []
        while name in producers and producers[name].op_type in _PASS_THROUGH:
            node = producers[name]
            if node.op_type == "Mul":
                value = _scalar(inits, node.input[1])
                if value is None:
                    return None
                scale *= value
            nodes.append(node)
            name = node.input[0]
        return name, scale, nodes

    fused = []
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        add = producers.get(softmax.input[0])
        scores = producers.get(add.input[0]) if add is not None and add.op_type == "Add" else None
        if scores is None or scores.op_type != "MatMul":
            continue
        users = readers.get(softmax.output[0], [])
        guard = [u for u in users if u.op_type == "Where"]
        if len(guard) != 1 or any(u.op_type not in ("IsNaN", "Where") for u in users):
            continue
        context = only_reader(guard[0].output[0], "MatMul")
        back = only_reader(context.output[0], "Transpose") if context is not None else None
        merged = only_reader(back.output[0], "Reshape") if back is not None else None
        perm = [list(a.ints) for a in back.attribute if a.name == "perm"] if back is not None else []
        if merged is None or perm != [[0, 2, 1, 3]]:
            continue
        paths = [head_path(scores.input[0]), head_path(scores.input[1]), head_path(context.input[1])]
        if any(p is None for p in paths):
            continue
        (q, q_scale, q_nodes), (k, k_scale, _), (v, v_scale, _) = paths
        reshape = next((n for n in reversed(q_nodes) if n.op_type == "Reshape"), None)
        shape = producers.get(reshape.input[1]) if reshape is not None else None
        width = _projection_width(inits, producers, q)
        if shape is None or shape.op_type != "Concat" or len(shape.input) != 4 or width is None or v_scale != 1.0:
            continue
        head_dim = _scalar(inits, shape.input[3])
        if head_dim is None or head_dim <= 0 or width % int(head_dim):
            continue
        heads = width // int(head_dim)
        scale = q_scale * k_scale
        node = helper.make_node("MultiHeadAttention", [q, k, v, "", "", add.input[1]], [merged.output[0]],
                                name=f"{softmax.name}.mha", domain="com.microsoft", num_heads=heads, scale=scale)
        graph.node.insert(list(graph.node).index(merged), node)
        graph.node.remove(merged)
        fused.append({"softmax": softmax.name, "num_heads": int(heads), "scale": float(scale)})
    if not fused:
        return fused
    # drop what nothing reads any more (the decomposed attention), then unused initializers
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    drop_unread_initializers(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused

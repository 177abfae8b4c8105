"""Choose the int8 graph by measurement: build each candidate scheme, time it against the fp32 graph (batch 1,
one thread, in one process: blocks of consecutive calls per graph, the blocks interleaved; latency.py), measure
its gate figures, keep the fastest that passes every gate (Intel Neural Compressor's accuracy-aware tuning,
reduced to a handful of schemes); candidates not measurably more than FASTER_MARGIN slower than the fastest (per-round
paired ratio, see _fastest_then_smallest) count as equally fast and the smallest file of them wins.

Candidates: static QDQ for CNNs — ``static`` (the folded tail fp32) and, where the graph has a head,
``static-head`` (its head layers int8 too: the one gated exception to the fp32 tail, because a small CNN's fp32
head is most of its int8 file); for transformers dynamic per-channel int8, MatMulNBits 8-bit with int8
compute, and ``mixed`` — dynamic int8 with the MatMuls whose quantization costs the most left fp32. "Costs
the most" is measured, not guessed from node names: one session of the fp32 graph with a switch per MatMul
(``quantize.fake_quant_switches``) gives the output's mean cosine loss on calibration data when that node
alone is quantized; then the fewest top-ranked nodes that, kept fp32, leave at most half of the loss of
quantizing them all (simulated on the same data) stay fp32. ``dynamic-smooth`` is dynamic int8 after a
SmoothQuant equalisation (Xiao et al. 2023) of every LayerNorm → MatMul pair (``smooth_fp32``): the
per-channel activation outliers of the LayerNorm outputs move into the weights, exactly in fp32, before the
per-tensor activation quantization. ``dynamic-t4`` and ``dynamic-smooth-t4`` are ``dynamic`` and ``dynamic-smooth``
with the word-embedding table in 4-bit blocks instead of 8-bit rows (the largest single tensor of a MiniLM graph).

Pure and silent: progress goes through ``emit``; the CLI renders the table from the returned record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..device.artifact import graph_bytes
from ..device.errors import GateError, MonoconError
from .gates import GateThresholds, batch_rows, int8_failures
from .int8_schemes import (PREFERENCES, SCHEMES, SMOOTH_SCHEMES, STATIC_SCHEMES, TEXT_CANDIDATES,
                           VISION_CANDIDATES)
from .latency import BLOCK_CALLS, REWARM_CALLS, blocked_latency, load_ms, paired_ratio, session

Batch = dict[str, np.ndarray]
EmbedFn = Callable[[Batch], np.ndarray]
EventFn = Callable[[str, dict[str, Any]], None]

# Counts of top-ranked MatMuls the mixed scheme may keep fp32, tried in order; the first that recovers enough wins.
MIXED_LADDER = (1, 2, 3, 4, 6, 8, 12, 16)
MIXED_LOSS_FRACTION = 0.5
SENSITIVITY_EXAMPLES = 64
# A graph counts as faster only when its p50 is at least this much lower (timings on a shared machine jitter).
FASTER_MARGIN = 0.05
# What "fastest" compares: the median CPU time per batch-1 call at one thread (see latency.time_blocks). On a
# shared machine wall time mostly measures the wait for a CPU; both are recorded.
SPEED_KEY = "cpu_p50_ms"


def candidates_for(modality: str) -> tuple[str, ...]:
    """Return the int8 schemes ``export --int8`` tries for ``modality``."""
    return VISION_CANDIDATES if modality == "vision" else TEXT_CANDIDATES


def check_prefer(prefer: str) -> None:
    """Raise MonoconError unless ``prefer`` is one of PREFERENCES (what auto selection optimises)."""
    if prefer not in PREFERENCES:
        raise MonoconError(f"--int8-prefer must be one of {', '.join(PREFERENCES)}, got {prefer!r}")


def check_scheme(name: str, modality: str) -> None:
    """Raise MonoconError unless ``name`` is "auto" or a scheme that fits ``modality``."""
    if name == "auto":
        return
    if name not in SCHEMES:
        raise MonoconError(f"unknown int8 scheme {name!r}: choose auto, {', '.join(SCHEMES)}")
    if name in STATIC_SCHEMES and modality != "vision":
        raise MonoconError(f"{name} int8 calibration is for image models: use --int8-scheme dynamic, nbits8 or mixed")
    if (name == "mixed" or name in SMOOTH_SCHEMES) and modality == "vision":
        raise MonoconError(f"the {name} scheme is for transformers (dynamic int8 MatMuls after LayerNorms): "
                           "use static or dynamic")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from ..metrics import l2_normalize

    return np.sum(l2_normalize(a.astype(np.float64)) * l2_normalize(b.astype(np.float64)), axis=1)


def matmul_sensitivity(fp32: Path, calibration: Sequence[Batch], examples: int = SENSITIVITY_EXAMPLES) -> dict:
    """Measure each weight MatMul's quantization cost on ``calibration`` and pick the nodes ``mixed`` keeps fp32.

    Returns {"nodes": [{node, loss}] sorted most costly first (loss = 1 − mean cosine of the output with only
    that node quantized, simulated), "all_quantized_loss", "ladder": [{kept_fp32, loss}], "keep": [...],
    "rule", "examples"}.
    """
    import onnx

    from .quantize import _preprocess, fake_quant_switches, weight_matmuls

    batches = _calibration_subset(calibration, examples)
    n = batch_rows(batches)
    if not batches:
        raise MonoconError("the mixed int8 scheme needs calibration inputs, got none")
    import tempfile

    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        _preprocess(fp32, pre)
        model = onnx.load(str(pre))
    nodes = weight_matmuls(model)
    if not nodes:
        raise MonoconError("the graph has no weight MatMul to keep fp32")
    switched, switches = fake_quant_switches(model, nodes)
    sess = session(switched.SerializeToString())
    output = sess.get_outputs()[0].name

    def run(quantized: set[str]) -> np.ndarray:
        outs = []
        for b in batches:
            feed = dict(b)
            feed.update({switches[m]: np.array(m in quantized) for m in nodes})
            outs.append(sess.run([output], feed)[0])
        return np.concatenate(outs)

    ref = run(set())

    def loss(quantized: set[str]) -> float:
        return float(1.0 - _cosines(ref, run(quantized)).mean())

    costs = {m: loss({m}) for m in nodes}
    order = sorted(nodes, key=lambda m: -costs[m])
    all_loss = loss(set(nodes))
    ladder, keep = [], order[:min(MIXED_LADDER[-1], len(order))]
    for k in (k for k in MIXED_LADDER if k < len(order)):
        value = loss(set(order[k:]))
        ladder.append({"kept_fp32": k, "loss": value})
        if value <= MIXED_LOSS_FRACTION * all_loss:
            keep = order[:k]
            break
    return {"nodes": [{"node": m, "loss": costs[m]} for m in order], "all_quantized_loss": all_loss,
            "ladder": ladder, "keep": keep, "examples": n,
            "rule": f"keep fp32 the fewest top-ranked MatMuls (tried {', '.join(map(str, MIXED_LADDER))}) whose "
                    f"simulated loss is <= {MIXED_LOSS_FRACTION:g} x the loss with every MatMul quantized"}


class EquivalenceError(Exception):
    """An fp32 graph rewrite (the smoothing) changed the fp32 outputs beyond the parity tolerance."""


def _calibration_subset(calibration: Sequence[Batch], examples: int) -> list[Batch]:
    batches, n = [], 0
    for b in calibration:
        if n >= examples:
            break
        take = min(examples - n, next(iter(b.values())).shape[0])
        batches.append({k: v[:take] for k, v in b.items()})
        n += take
    return batches


def simulated_dynamic_loss(model, batches: Sequence[Batch], reference: Sequence[np.ndarray] | None = None) -> float:
    """Return 1 − mean cosine between ``model``'s fp32 output and its output with every weight MatMul quantized
    as the dynamic scheme does (``quantize.fake_quant_switches``: uint8 per-tensor activations at run time,
    int8 per-channel weights), simulated in fp32 on ``batches``; ``reference``: the fp32 outputs, if known."""
    from .quantize import fake_quant_switches, weight_matmuls

    nodes = weight_matmuls(model)
    switched, switches = fake_quant_switches(model, nodes)
    sess = session(switched.SerializeToString())
    output = sess.get_outputs()[0].name
    outs = {True: [], False: []}
    for on in ((True,) if reference is not None else (True, False)):
        for b in batches:
            feed = dict(b)
            feed.update({switches[m]: np.array(on) for m in nodes})
            outs[on].append(sess.run([output], feed)[0])
    ref = np.concatenate(list(reference) if reference is not None else outs[False]).astype(np.float64)
    test = np.concatenate(outs[True]).astype(np.float64)
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    # 1 − cos = |a − b|² / 2 for unit a, b: no cancellation when the loss is tiny
    return float(0.5 * np.sum((unit(ref) - unit(test)) ** 2, axis=1).mean())


def smooth_fp32(fp32: Path, out: Path, calibration: Sequence[Batch], atol: float,
                alphas: Sequence[float] | None = None, examples: int = SENSITIVITY_EXAMPLES,
                merge: bool = True) -> dict:
    """Write the SmoothQuant-equalised fp32 graph of ``fp32`` to ``out`` and return its record.

    Per-channel activation maxima of every LayerNorm output that feeds weight MatMuls come from the
    calibration (train) inputs; each alpha of ``alphas`` (default quantize.SMOOTH_ALPHAS) is scored by the
    simulated dynamic-int8 loss on ``examples`` of them (``simulated_dynamic_loss``), the least-loss alpha is
    kept. ``merge``: then merge each layer's Q/K/V MatMuls into one (``quantize.merge_parallel_matmuls``: one
    activation quantization and int8 GEMM instead of three). The rewritten graph must reproduce fp32 within
    ``atol`` (max abs) on the calibration inputs, else EquivalenceError: both rewrites are exact in real
    arithmetic, so a larger difference is a broken rewrite.
    """
    import copy

    import onnx

    from . import quantize as Q

    alphas = tuple(Q.SMOOTH_ALPHAS if alphas is None else alphas)
    if not calibration:
        raise MonoconError("the dynamic-smooth int8 scheme needs calibration inputs, got none")
    model = onnx.load(str(fp32))
    groups = Q.layernorm_matmul_groups(model)
    if not groups:
        raise MonoconError("no LayerNorm feeds a weight MatMul in this graph: nothing to smooth")
    act = Q.activation_channel_max(model, [g["output"] for g in groups], calibration)
    batches = _calibration_subset(calibration, examples)
    fp32_sess = session(fp32)
    ref = [fp32_sess.run(None, b)[0] for b in batches]
    ladder, best = [], None
    for alpha in alphas:
        candidate = copy.deepcopy(model)
        groups_record = Q.smooth_layernorm_matmuls(candidate, act, alpha)
        loss = simulated_dynamic_loss(candidate, batches, ref)
        ladder.append({"alpha": float(alpha), "simulated_loss": loss})
        if best is None or loss < best[0]:
            best = (loss, float(alpha), candidate, groups_record)
    loss, alpha, smoothed, groups_record = best
    merged = Q.merge_parallel_matmuls(smoothed) if merge else []
    onnx.save_model(smoothed, str(out))
    test = session(out)
    diff = max(float(np.abs(fp32_sess.run(None, b)[0] - test.run(None, b)[0]).max()) for b in calibration)
    record = {"alpha": alpha, "alphas_tried": ladder, "simulated_loss_unsmoothed": simulated_dynamic_loss(
        model, batches, ref), "groups": groups_record, "merged_matmuls": merged, "fp32_max_abs_diff": diff,
        "parity_atol": atol,
        "calibration_examples": batch_rows(calibration),
        "rule": "s_j = max|X_j|^alpha / max|W_j|^(1-alpha) per input channel of the MatMuls reading a LayerNorm; "
                "gamma, beta / s, weight rows * s, residual reads Mul(., s); alpha = least simulated dynamic-int8 "
                f"loss on {batch_rows(batches)} calibration inputs"}
    if not diff <= atol:
        raise EquivalenceError(f"the smoothed fp32 graph differs from fp32 by {diff:.3g} (max abs over the "
                               f"calibration inputs) > {atol:g}: the equalisation is not exact")
    return record


def build(name: str, fp32: Path, out: Path, calibration: Sequence[Batch], atol: float = 1e-5) -> dict:
    """Write candidate ``name`` of ``fp32`` to ``out``; return its scheme (for the manifest). ``atol``: the fp32
    parity tolerance an equalised (dynamic-smooth) fp32 graph must keep before it is quantized."""
    import tempfile

    from . import quantize as Q

    if name in SMOOTH_SCHEMES:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            smoothed = Path(tmp) / "smoothed.onnx"
            record = smooth_fp32(fp32, smoothed, calibration, atol)
            scheme = Q.quantize_dynamic_int8(smoothed, out, table_bits=SMOOTH_SCHEMES[name])
        scheme.update(method=name, smoothing=record, format=f"{scheme['format']}; Q/K/V MatMuls merged",
                      activations="uint8, scales computed per batch at run time, after SmoothQuant equalisation "
                                  f"(alpha {record['alpha']:g}) of the LayerNorm outputs")
        return scheme

    if name in STATIC_SCHEMES:
        return Q.quantize_static_qdq(fp32, out, list(calibration), quantize_head=name == "static-head")
    if name == "dynamic":
        return Q.quantize_dynamic_int8(fp32, out)
    if name == "dynamic-t4":
        return {**Q.quantize_dynamic_int8(fp32, out, table_bits=4), "method": name}
    if name == "nbits8":
        return Q.quantize_nbits(fp32, out, bits=8)
    if name == "int4":
        return Q.quantize_nbits(fp32, out, bits=4)
    if name == "mixed":
        sens = matmul_sensitivity(fp32, calibration)
        scheme = Q.quantize_dynamic_int8(fp32, out, keep_fp32=sens["keep"])
        top = sens["nodes"][:max(len(sens["keep"]), 8)]
        scheme["sensitivity"] = {**{k: v for k, v in sens.items() if k not in ("nodes", "keep")}, "top_nodes": top}
        return scheme
    raise MonoconError(f"unknown quantization scheme {name!r}")


@dataclass
class Selection:
    """The chosen graph (``path`` inside the work folder), its scheme, and the record of every candidate."""

    name: str | None
    path: Path | None
    scheme: dict | None
    figures: dict | None
    record: dict[str, Any]
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. int4: {path, scheme, figures}


def select(fp32: Path, work: Path, modality: str, calibration: Sequence[Batch], timing_feeds: Sequence[Batch],
           evaluate: Callable[[Path], dict], thresholds: GateThresholds, forced: str = "auto",
           int4: bool = False, only_int4: bool = False, calls: int = 200,
           emit: EventFn | None = None, prefer: str = "speed", reference: Path | None = None) -> Selection:
    """Build, time and gate the int8 candidates of ``fp32`` in ``work``; return the fastest that passes (``prefer``
    "size": the smallest that passes). ``reference``: the fp32 graph that ships, when it is not ``fp32`` itself
    (its weight layout rewritten): the candidates are timed against it.

    ``evaluate(path)`` returns a candidate's gate figures against fp32 (mean/min cosine, Recall@1 drop, and
    for text the Spearman drop). ``forced`` (a scheme name) builds and gates only that one. ``int4`` also
    builds the 4-bit graph (returned in ``extra``; it must pass the same gates), ``only_int4`` nothing else.
    Raises GateError when the forced scheme, every candidate, or the int4 graph misses a gate.
    """
    from .quantize import has_head

    emit = emit or (lambda kind, info: None)
    check_scheme(forced, modality)
    check_prefer(prefer)
    names = list(candidates_for(modality)) if forced == "auto" else [forced]
    not_applicable: dict[str, str] = {}
    if forced == "auto" and "static-head" in names and not has_head(fp32):
        names.remove("static-head")  # it would be the static graph again
        not_applicable["static-head"] = "the graph has no folded head (baseline run): same graph as static"
    if only_int4:
        names = []
    if int4 or only_int4:
        names.append("int4")
    rows: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    schemes: dict[str, dict] = {}
    figures: dict[str, dict] = {}
    for name in names:
        emit("stage", {"name": f"int8 candidate {name}: quantize"})
        out = work / f"{name}.onnx"
        row: dict[str, Any] = {"name": name, "eligible": name != "int4"}
        rows[name] = row
        try:
            schemes[name] = build(name, fp32, out, calibration, thresholds.parity_atol)
        except MonoconError:
            raise
        except EquivalenceError as exc:  # recorded as the gate it misses, skipped
            row.update(passed=False, failures=[str(exc)])
            continue
        except Exception as exc:  # a scheme the graph or this onnxruntime cannot take: recorded, skipped
            row.update(passed=False, failures=[f"quantization failed: {type(exc).__name__}: {_first_line(exc)}"])
            continue
        paths[name] = out
        row.update(format=schemes[name]["format"], bytes=out.stat().st_size)
        if "kept_fp32" in schemes[name]:
            row["kept_fp32"] = len(schemes[name]["kept_fp32"])
        if "smoothing" in schemes[name]:
            row["alpha"] = schemes[name]["smoothing"]["alpha"]
        emit("stage", {"name": f"int8 candidate {name}: gate figures"})
        figures[name] = evaluate(out)
        fails = int8_failures(figures[name], thresholds)
        row.update({k: figures[name].get(k) for k in ("mean_cosine", "min_cosine", "recall_drop_points",
                                                        "spearman_drop_points")})
        row.update(passed=not fails, failures=fails)
    emit("stage", {"name": f"timing {len(paths)} candidates against fp32 (batch 1, 1 thread, blocks of "
                           f"{BLOCK_CALLS} calls)"})
    shipped = reference if reference is not None else fp32
    timed = blocked_latency({"fp32": shipped, **paths}, timing_feeds, calls) if paths else {}
    fp32_row = {"name": "fp32", "bytes": graph_bytes(shipped), "load_ms": load_ms(shipped), **timed.get("fp32", {})}
    for name, path in paths.items():
        rows[name].update(timed[name], load_ms=load_ms(path),
                          speedup_vs_fp32=fp32_row["cpu_p50_ms"] / timed[name]["cpu_p50_ms"],
                          wall_speedup_vs_fp32=fp32_row["p50_ms"] / timed[name]["p50_ms"],
                          size_vs_fp32=fp32_row["bytes"] / rows[name]["bytes"])
    eligible = [rows[n] for n in names if rows[n]["eligible"] and rows[n].get("passed")]
    winner = _choose(eligible, prefer)
    record = {
        "candidates": [rows[n] for n in names], "fp32": fp32_row, "winner": winner["name"] if winner else None,
        "forced": forced != "auto", "prefer": prefer, "thresholds": thresholds.to_dict(),
        **({"not_applicable": not_applicable} if not_applicable else {}),
        "timing": {"batch": 1, "threads": 1, "calls": calls, "block": BLOCK_CALLS, "rewarm": REWARM_CALLS,
                   "inputs": len(timing_feeds),
                   "how": f"each graph in blocks of {BLOCK_CALLS} consecutive calls (after {REWARM_CALLS} untimed "
                          "re-warm calls), as a device calls one model; one block of every graph per round, random "
                          "order per round, the same real inputs for every graph, after warm-up; p50 over the "
                          "timed calls of wall time (p50_ms) and of the calling thread's CPU time (cpu_p50_ms, "
                          "what the winner is chosen by; speedup_vs_fp32 is its ratio, wall_speedup_vs_fp32 the "
                          "wall-time one); load_ms = median of 3 session creations"},
    }
    if winner is not None:
        record["reason"] = _reason(winner, [rows[n] for n in names if rows[n]["eligible"]], forced != "auto", prefer)
    extra: dict[str, dict[str, Any]] = {}
    if "int4" in paths:
        extra["int4"] = {"path": paths["int4"], "scheme": schemes["int4"], "figures": figures["int4"],
                         "row": rows["int4"]}
    if winner is None and not only_int4:
        raise GateError("no int8 candidate passes the gates: " + "; ".join(
            f"{n}: {', '.join(rows[n].get('failures') or ['?'])}" for n in names if rows[n]["eligible"]))
    if "int4" in rows and not rows["int4"].get("passed"):
        raise GateError("int4 model: " + "; ".join(rows["int4"].get("failures") or ["?"]))
    if winner is None:
        return Selection(None, None, None, None, record, extra)
    w = winner["name"]
    return Selection(w, paths[w], schemes[w], figures[w], record, extra)


def try_transformer_fusion(fp32: Path, parity: Sequence[Batch], feeds: Sequence[Batch], calls: int,
                           atol: float, quantized: bool) -> dict[str, Any]:
    """Run onnxruntime's transformer optimizer (BERT fusions) on the fp32 graph at ``fp32`` — and where it fuses no
    attention (it does not match this exporter's pattern), ``attention_fusion.fuse_attention``; keep the fused graph
    (replacing the file) only where it measurably helps: p50 at least FASTER_MARGIN lower at batch 1 / 1 thread
    for fp32 or — when ``quantized`` — for its dynamic int8 graph, the other not slower, and outputs within
    ``atol`` / 4 of the unfused graph. The fusions are then saved in the shipped graph (a device does not redo
    them). Returns the record for the manifest (fusions, timings, load times, decision).
    """
    import collections
    import os
    import tempfile

    import onnx

    from .quantize import _quiet

    before = collections.Counter(n.op_type for n in onnx.load(str(fp32), load_external_data=False).graph.node)
    record: dict[str, Any] = {"tool": "onnxruntime.transformers.optimizer.optimize_model(model_type='bert', "
                                      "opt_level=0), then attention_fusion.fuse_attention where it fused no "
                                      "attention", "kept": False}
    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        fused = Path(tmp) / "fused.onnx"
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            with _quiet():
                opt = optimize_model(str(fp32), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
                opt.save_model_to_file(str(fused))
        except Exception as exc:  # an encoder the optimizer does not know: recorded, unfused graph kept
            record["reason"] = f"optimizer failed: {type(exc).__name__}: {_first_line(exc)}"
            return record
        model = onnx.load(str(fused))
        if not any(n.op_type in ("Attention", "MultiHeadAttention") for n in model.graph.node):
            from .attention_fusion import fuse_attention

            record["attention_fusion"] = fuse_attention(model)
            if record["attention_fusion"]:
                onnx.save_model(model, str(fused))
        del model
        after = collections.Counter(n.op_type for n in onnx.load(str(fused), load_external_data=False).graph.node)
        record["fused_ops"] = {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
        if not record["fused_ops"]:
            record["reason"] = "no fusion applied to this graph"
            return record
        a, b = session(fp32), session(fused)
        diff = max(float(np.abs(a.run(None, f)[0] - b.run(None, f)[0]).max()) for f in parity)
        record["max_abs_diff_to_unfused"] = diff
        paths, timed, ratios = time_rewrite(fp32, fused, "fused", Path(tmp), feeds, calls, quantized)
        record["p50_ms"] = {k: v["p50_ms"] for k, v in timed.items()}
        record["cpu_p50_ms"] = {k: v[SPEED_KEY] for k, v in timed.items()}
        record["load_ms"] = {k: load_ms(v) for k, v in paths.items()}
        record["fused_over_unfused_p50"] = ratios
        if diff > atol / 4:
            record["reason"] = f"fused outputs differ by {diff:.2g} from the unfused graph (> {atol / 4:g})"
        elif not measurably_faster(ratios):
            record["reason"] = ("no measurable gain: fused/unfused p50 " +
                                ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()) +
                                f" (needs <= {1 - FASTER_MARGIN:.2f} on one, <= {1 + FASTER_MARGIN:.2f} on all)")
        else:
            record["kept"] = True
            record["reason"] = "fused p50 / unfused " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
            del a, b
            os.replace(fused, fp32)
    return record


def time_rewrite(original: Path, rewritten: Path, label: str, work: Path, feeds: Sequence[Batch], calls: int,
                 quantized: bool = True) -> tuple[dict[str, Path], dict[str, dict], dict[str, float]]:
    """Time ``original`` and ``rewritten`` — and, when ``quantized``, the dynamic int8 graph of each, written to
    ``work`` — side by side (batch 1, one thread, blocks of calls). Return (the graphs by name, their timings,
    {"fp32_LABEL": ratio, "dynamic_LABEL": ratio}): each ratio the rewritten graph's CPU p50 over the original's."""
    from .quantize import quantize_dynamic_int8

    paths = {"fp32": original, f"fp32_{label}": rewritten}
    pairs = [("fp32", f"fp32_{label}")]
    if quantized:
        for name, src in (("dynamic", original), (f"dynamic_{label}", rewritten)):
            paths[name] = work / f"{name}.onnx"
            quantize_dynamic_int8(src, paths[name])
        pairs.append(("dynamic", f"dynamic_{label}"))
    timed = blocked_latency(paths, feeds, calls)
    return paths, timed, {new: timed[new][SPEED_KEY] / timed[old][SPEED_KEY] for old, new in pairs}


def measurably_faster(ratios: dict[str, float]) -> bool:
    """Return True when one ratio (rewritten / original p50) is at most 1 - FASTER_MARGIN and none above
    1 + FASTER_MARGIN."""
    return min(ratios.values()) <= 1 - FASTER_MARGIN and max(ratios.values()) <= 1 + FASTER_MARGIN


def _choose(rows: list[dict], prefer: str) -> dict | None:
    """Return the winner of the rows that pass every gate: ``_fastest_then_smallest`` (which also records each
    row's ratio to the fastest), or for ``prefer`` "size" the smallest file (the faster of equal sizes)."""
    winner = _fastest_then_smallest(rows)
    if prefer == "size" and rows:
        winner = min(rows, key=lambda r: (r["bytes"], r[SPEED_KEY]))
    return winner


def _fastest_then_smallest(rows: list[dict]) -> dict | None:
    """Return the row with the least SPEED_KEY; of the rows as fast as it at the resolution of the timing, the
    smallest file.

    "As fast": not measurably more than FASTER_MARGIN slower — the lower end of the 90 % interval of the row's
    per-round CPU-time ratio to the fastest (``latency.paired_ratio`` over ``cpu_block_ms``) is within the margin.
    Each row gets that ratio as ``vs_fastest``. Two exports of one run on a shared machine timed the same two graphs
    1.03x and 1.06x apart, so a fixed cut at 1.05 on the medians alone picked either one by chance. The interval
    takes out the noise within one export; between processes the cost itself can differ (six exports:
    bench/results/int8-text-slope0.3/export-repeats.txt), which ``--int8-prefer size`` does not depend on.
    """
    if not rows:
        return None
    fastest = min(rows, key=lambda r: r[SPEED_KEY])
    for r in rows:
        if r.get("cpu_block_ms") and fastest.get("cpu_block_ms"):
            ratio, low, high = paired_ratio(r["cpu_block_ms"], fastest["cpu_block_ms"])
        else:  # no per-round timings: the medians alone
            ratio = low = high = r[SPEED_KEY] / fastest[SPEED_KEY]
        r["vs_fastest"] = {"ratio": ratio, "low": low, "high": high}
    tied = [r for r in rows if r is fastest or r["vs_fastest"]["low"] <= 1 + FASTER_MARGIN]
    return min(tied, key=lambda r: (r["bytes"], r[SPEED_KEY]))


def _reason(winner: dict, rows: list[dict], forced: bool, prefer: str = "speed") -> str:
    if forced:
        return f"{winner['name']} was forced (--int8-scheme) and passes every gate"
    failed = [f"{r['name']} ({'; '.join(r.get('failures') or [])})" for r in rows if not r.get("passed")]
    others = [f"{r['name']} {r[SPEED_KEY]:.2f} ms" for r in rows if r.get("passed") and r is not winner]
    fastest = min((r for r in rows if r.get("passed")), key=lambda r: r[SPEED_KEY])
    if prefer == "size":
        text = (f"{winner['name']} is the smallest ({winner['bytes'] / 1e6:.1f} MB) of the candidates that pass "
                f"every gate (--int8-prefer size; the fastest: {fastest['name']} {fastest[SPEED_KEY]:.2f} ms, "
                f"{fastest['bytes'] / 1e6:.1f} MB): CPU time p50 ")
    elif fastest is not winner:
        vs = winner["vs_fastest"]
        text = (f"{winner['name']} is the smallest ({winner['bytes'] / 1e6:.1f} MB) of the candidates that pass "
                f"every gate and are not measurably more than {FASTER_MARGIN:.0%} slower than the fastest "
                f"({fastest['name']} {fastest[SPEED_KEY]:.2f} ms, {fastest['bytes'] / 1e6:.1f} MB; per-round ratio "
                f"{vs['ratio']:.3f}, 90 % interval {vs['low']:.3f}-{vs['high']:.3f}): CPU time p50 ")
    else:
        text = f"{winner['name']} is the fastest candidate that passes every gate: CPU time p50 "
    text += (f"{winner[SPEED_KEY]:.2f} ms per batch-1 call at 1 thread, {winner['speedup_vs_fp32']:.2f}x fp32 "
             f"(wall p50 {winner['p50_ms']:.2f} ms, {winner['wall_speedup_vs_fp32']:.2f}x)")
    if others:
        text += f"; other passing: {', '.join(others)}"
    if failed:
        text += f"; failed a gate: {', '.join(failed)}"
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""

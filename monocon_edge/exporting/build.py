"""``monocon-edge export``: run directory → gated artifact directory (fold, ONNX, int8, codes, manifest).

Everything is built in a temporary directory next to the target and renamed onto it at the very end, so a
failed gate (or any error) leaves nothing behind, and an existing target is never touched.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..device import embedding_codes
from ..device.artifact import (FORMAT_NAME, FORMAT_VERSION, FP32_FILE, INT4_FILE, INT8_FILE, MANIFEST, OUTPUT_NAME,
                               file_checksums)
from ..device.errors import MonoconError
from .gates import GateThresholds, embed_batches, measure_and_check
from ..files import staging_dir, write_json_atomic
from ..events import EventFn, ignore_events

FORMATS = ("onnx", "sentence-transformers")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@dataclass(frozen=True)
class ExportOptions:
    """What to export and the gates it must pass."""

    dims: int | str = "deff"  # an int in 1..d_enc, or "deff" for the run's d_eff
    int8: bool = False
    out: Path | None = None  # default: RUN_DIR/export-d{dims}[-int8]
    formats: tuple[str, ...] = ("onnx",)
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    parity_samples: int = 256
    calibration_samples: int = 256
    code_samples: int = 1024
    seed: int = 0
    # int8 scheme: "auto" builds every candidate of the modality (int8_select.candidates_for), times and gates
    # each, and keeps the fastest that passes; a scheme name (int8_schemes.SCHEMES) forces that one.
    int8_scheme: str = "auto"
    int8_prefer: str = "speed"  # auto: the fastest that passes ("speed") or the smallest that passes ("size")
    int4: bool = False  # also write model.int4.onnx (MatMulNBits 4-bit + 4-bit Gather), same gates
    # try onnxruntime's BERT fusions (transformers) and the residual Sum rewrite, keep them where they measurably help
    optimize: bool = True
    # fp32 weight MatMuls as Gemm(Wᵀ, x): "auto" keeps the rewrite where it measurably helps (weight_layout.py),
    # "transposed" forces it, "plain" leaves the graph as exported
    fp32_layout: str = "auto"
    timing_rounds: int = 200  # timed batch-1 calls per graph (fp32 and each int8 candidate), in blocks


@dataclass
class ExportResult:
    """The artifact that was written and its manifest."""

    path: Path
    manifest: dict[str, Any]


def resolve_dims(dims: int | str, d_eff: int) -> int:
    """Return the output dims for ``dims`` ("deff" → the run's d_eff, digits → int); range is checked at fold."""
    if isinstance(dims, str):
        text = dims.strip().lower()
        if text in ("deff", "d_eff"):
            return max(int(d_eff), 1)
        try:
            return int(text)
        except ValueError:
            raise MonoconError(f"--dims must be an integer or 'deff', got {dims!r}") from None
    return int(dims)


def _default_out(run_path: Path, dims: int, int8: bool) -> Path:
    return run_path / f"export-d{dims}{'-int8' if int8 else ''}"


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise MonoconError(f"{out} already exists: choose another --out (an artifact is never overwritten)")
    if not out.parent.is_dir():
        raise MonoconError(f"the folder for --out does not exist: {out.parent}")


def _check_options(opts: ExportOptions, modality: str) -> None:
    unknown = [f for f in opts.formats if f not in FORMATS]
    if unknown:
        raise MonoconError(f"unknown format {unknown[0]!r}: choose {', '.join(FORMATS)}")
    if "sentence-transformers" in opts.formats and modality != "text":
        raise MonoconError("--format sentence-transformers is for text runs only")
    t = opts.thresholds
    if not t.parity_atol > 0 or not -1 <= t.int8_min_cosine <= 1 or not t.int8_max_recall_drop_points >= 0:
        raise MonoconError("gate thresholds: --parity-atol > 0, --int8-min-cosine in [-1, 1], "
                           "--int8-max-recall-drop >= 0")
    if t.int8_cosine_floor is not None and not 0 <= t.int8_cosine_floor <= 1:
        raise MonoconError("--int8-cosine-floor must be between 0 and 1 (a floor on the minimum cosine of int8 to fp32 "
                           f"embeddings), got {t.int8_cosine_floor:g}")
    if min(opts.parity_samples, opts.calibration_samples, opts.code_samples, opts.timing_rounds) < 1:
        raise MonoconError("sample counts and --timing-rounds must be >= 1")
    if opts.int4 and modality != "text":
        raise MonoconError("--int4 (MatMulNBits 4-bit) is for transformer (text) runs")
    from .int8_select import check_prefer, check_scheme
    from .weight_layout import check_mode

    check_scheme(opts.int8_scheme, modality)
    check_prefer(opts.int8_prefer)
    check_mode(opts.fp32_layout)


def export_run(run_dir: str | Path, opts: ExportOptions, on_event: EventFn | None = None,
               loaded: Any = None) -> ExportResult:
    """Export the run at ``run_dir`` as an artifact directory; return where it went and its manifest.

    ``loaded``: the run already loaded with ``runs.load_run(run_dir)`` (saves loading it again when
    one caller exports several dims). Raises MonoconError for bad input and GateError when a measured figure
    misses its threshold; in both cases no artifact directory is left behind.
    """
    from ..runs import load_run
    from .fold import check_dims

    emit = on_event or ignore_events
    loaded = loaded if loaded is not None else load_run(run_dir)
    _check_options(opts, loaded.cfg.modality)
    dims = check_dims(resolve_dims(opts.dims, loaded.d_eff), loaded.pca, loaded.model.d_enc)
    out = Path(opts.out) if opts.out is not None else _default_out(loaded.run.path, dims, opts.int8)
    _check_out(out)
    tmp = staging_dir(out)
    try:
        manifest = _build(loaded, dims, opts, tmp, emit)
        if out.exists():
            raise MonoconError(f"{out} appeared while exporting: nothing was overwritten")
        _make_readable(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest)


def _build(loaded: Any, dims: int, opts: ExportOptions, tmp: Path, emit: EventFn) -> dict[str, Any]:
    """Write every artifact file into ``tmp`` and return the manifest (written last)."""
    import onnxruntime as ort

    from .gate_inputs import text_gate_inputs, vision_gate_inputs
    from .fold import fold
    from .onnx_export import OPSET, check_graph, example_inputs, export_onnx

    cfg, thr = loaded.cfg, opts.thresholds
    input_spec = _input_spec(loaded)
    max_tokens = input_spec["tokenizer"]["max_length"] if cfg.modality == "text" else None
    folded, spec = fold(loaded.model, loaded.pca, dims, max_positions=max_tokens)
    facts = _facts(loaded, dims, input_spec)
    metadata = _metadata(facts, "fp32")

    emit("stage", {"name": "export ONNX (fp32)"})
    shape = tuple(input_spec["shape"]) if cfg.modality == "vision" else None
    export_onnx(folded, cfg.modality, example_inputs(cfg.modality, shape), tmp / FP32_FILE, metadata, OPSET)

    if cfg.modality == "vision":
        gate_in = vision_gate_inputs(loaded.task, opts.seed, opts.parity_samples, opts.calibration_samples,
                                     opts.code_samples)
    else:
        gate_in = text_gate_inputs(loaded.task, opts.seed, artifact_tokenize(loaded), opts.parity_samples,
                                   opts.code_samples, opts.calibration_samples)

    graph_opt = None
    if cfg.modality == "text" and opts.optimize:
        emit("stage", {"name": "transformer optimizer (BERT fusions)"})
        from .int8_select import try_transformer_fusion

        graph_opt = try_transformer_fusion(tmp / FP32_FILE, gate_in.parity, gate_in.timing, opts.timing_rounds,
                                           thr.parity_atol, quantized=opts.int8 or opts.int4)
        from .quantize import stamp_metadata

        stamp_metadata(tmp / FP32_FILE, metadata)
        check_graph(tmp / FP32_FILE)

    residual = None
    if opts.optimize:
        from .residual_sum import try_residual_sum

        emit("stage", {"name": "residual Add as Sum (no SkipLayerNormalization)"})
        residual = try_residual_sum(tmp / FP32_FILE, gate_in.parity, gate_in.timing, opts.timing_rounds,
                                    thr.parity_atol)

    # The int8 candidates quantize the graph as exported (MatMuls), whatever layout the fp32 graph ships in.
    plain_dir = Path(tempfile.mkdtemp(prefix="plain.", dir=tmp))
    quantize_source = tmp / FP32_FILE
    emit("stage", {"name": "fp32 weight layout"})
    from .weight_layout import try_weight_layout

    layout = try_weight_layout(tmp / FP32_FILE, plain_dir / FP32_FILE, gate_in.parity, gate_in.timing,
                               opts.timing_rounds, thr.parity_atol, opts.fp32_layout)
    if layout["kept"]:
        quantize_source = plain_dir / FP32_FILE
        check_graph(tmp / FP32_FILE)

    fp32 = _runner(_session(ort, tmp / FP32_FILE))
    scales = embedding_codes.calibrate_scales(embed_batches(fp32, gate_in.code_calibration))
    models: dict[str, Any] = {"fp32": {"file": FP32_FILE, "precision": "fp32", "opset": OPSET}}
    if graph_opt is not None:
        models["fp32"]["graph_optimization"] = graph_opt
    if residual is not None:
        models["fp32"]["residual_sum"] = residual
    models["fp32"]["weight_layout"] = layout

    emit("stage", {"name": f"gates ({gate_in.parity_source})"})
    gates: dict[str, Any] = {"thresholds": thr.to_dict()}
    fp32_ret = gate_in.retrieval.embed(fp32)
    gates.update(measure_and_check(fp32, gate_in.parity, gate_in.retrieval, scales, thr,
                                   reference=_torch_runner(folded), fp32_retrieval=fp32_ret))
    gates["fp32_parity"]["source"] = gate_in.parity_source
    if gate_in.similarity is not None:
        fp32_spearman = gate_in.similarity.spearman(fp32)
        gates["fp32_spearman"] = {"spearman": fp32_spearman, "pairs": int(len(gate_in.similarity.scores)),
                                  "source": gate_in.similarity.source}

    if opts.int8 or opts.int4:
        from . import int8_select
        from .gates import compare_figures, spearman_figures
        from .quantize import stamp_metadata

        def evaluate(path: Path) -> dict[str, Any]:
            run = _runner(_session(ort, path))
            fig = compare_figures(fp32_ret, gate_in.retrieval.embed(run), gate_in.retrieval)
            if gate_in.similarity is not None:
                fig.update(spearman_figures(fp32_spearman, gate_in.similarity.spearman(run), gate_in.similarity))
            return fig

        with tempfile.TemporaryDirectory(prefix="candidates.", dir=tmp) as work:
            chosen = int8_select.select(quantize_source, Path(work), cfg.modality, gate_in.calibration,
                                        gate_in.timing, evaluate, thr, forced=opts.int8_scheme, int4=opts.int4,
                                        only_int4=not opts.int8, calls=opts.timing_rounds, emit=emit,
                                        prefer=opts.int8_prefer, reference=tmp / FP32_FILE)
            if opts.int8:
                os.replace(chosen.path, tmp / INT8_FILE)
                stamp_metadata(tmp / INT8_FILE, _metadata(facts, "int8"))
                check_graph(tmp / INT8_FILE)
                models["int8"] = {"file": INT8_FILE, "precision": "int8", "opset": OPSET,
                                  "quantization": chosen.scheme, "selection": chosen.record}
                gates["int8_model"] = chosen.figures
            if opts.int4:
                int4 = chosen.extra["int4"]
                os.replace(int4["path"], tmp / INT4_FILE)
                stamp_metadata(tmp / INT4_FILE, _metadata(facts, "int4"))
                check_graph(tmp / INT4_FILE)
                models["int4"] = {"file": INT4_FILE, "precision": "int4", "opset": OPSET,
                                  "quantization": int4["scheme"], "measured": int4["row"]}
                if not opts.int8:
                    models["int4"]["selection"] = chosen.record
                gates["int4_model"] = int4["figures"]

    shutil.rmtree(plain_dir)
    if cfg.modality == "text":
        _copy_tokenizer(Path(loaded.model.encoder.source_path), tmp)
    if "sentence-transformers" in opts.formats:
        emit("stage", {"name": "sentence-transformers folder"})
        from .st_format import write_sentence_transformer

        write_sentence_transformer(loaded.model, folded, tmp / "sentence-transformers", input_spec)

    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        **facts,
        "head_folded": {"kind": spec.head, "layers": [list(x) for x in spec.head_layers],
                        "negative_slope": spec.negative_slope,
                        "weights": "effective (W² for monotonic) stored as constants"},
        "models": models,
        "embedding_codes": {"dtype": "int8", "scheme": embedding_codes.SCHEME, "scales": scales.tolist(),
                            "calibration": f"max |x| per dimension over {embed_batches_rows(gate_in)} train "
                                           "embeddings of the fp32 graph"},
        "gates": gates,
        "formats": {"sentence-transformers": "sentence-transformers/"} if "sentence-transformers" in opts.formats
        else {},
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    from ..device.integrity import seal
    from .device_bundle import write_device_bundle

    # The artifact folder is all a device needs: runtime, device CLI, requirements.txt.
    write_device_bundle(tmp, cfg.modality, {"onnxruntime": manifest["versions"]["onnxruntime"]})
    manifest["files"] = file_checksums(tmp)
    manifest = json.loads(json.dumps(manifest))  # sealed exactly as it will be read back
    manifest["integrity"] = seal(manifest)
    write_json_atomic(tmp / MANIFEST, manifest)
    return manifest


def _make_readable(folder: Path) -> None:
    """Give the artifact ordinary permissions (mkdtemp / mkstemp create owner-only ones): it is meant to be copied."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def embed_batches_rows(gate_in: Any) -> int:
    """Return how many examples calibrated the embedding codes."""
    from .gates import batch_rows

    return batch_rows(gate_in.code_calibration)


def _session(ort: Any, path: Path) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _runner(session: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    return lambda feeds: session.run([OUTPUT_NAME], feeds)[0]


def _torch_runner(folded: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """Return a feed → output function running the folded PyTorch module (inputs in the graph's order)."""
    import torch

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return folded(*(torch.from_numpy(feeds[k]) for k in feeds)).numpy()

    return run


def artifact_tokenize(loaded: Any) -> Callable[[list[str]], dict[str, np.ndarray]]:
    """Return texts -> {input_ids, attention_mask}: a loaded text run's tokenizer as its artifact sets it up (the
    device runtime's, with the manifest's max length and padding), so gates and timings see the device's inputs."""
    from ..device.runtime import build_tokenizer, tokenize

    tok = _input_spec(loaded)["tokenizer"]
    tokenizer = build_tokenizer(Path(loaded.model.encoder.source_path) / tok["file"], tok["max_length"],
                                tok["pad_id"], tok["pad_token"])
    return lambda texts: tokenize(tokenizer, texts)


def _input_spec(loaded: Any) -> dict[str, Any]:
    """Return the manifest's input spec: shape and preprocessing (vision) or tokenizer settings (text)."""
    cfg, model = loaded.cfg, loaded.model
    if cfg.modality == "vision":
        norm = model.encoder.normalize
        spec = dict(loaded.summary["input"])
        spec.update({
            "names": ["pixels"],
            "preprocessing": {
                "from_uint8": "pixels = uint8 HWC image / 255, transposed to CHW (runtime.embed does this)",
                "resize": f"images must be {spec['shape'][1]}x{spec['shape'][2]} (the training size)",
                "normalisation_in_graph": {"mean": norm.mean.flatten().tolist(), "std": norm.std.flatten().tolist()},
            },
        })
        return spec
    enc = model.encoder
    return {
        "kind": "text", "names": ["input_ids", "attention_mask"], "dtype": "int64", "layout": "(batch, sequence)",
        "tokenizer": {"file": "tokenizer.json", "max_length": int(min(cfg.data.max_seq_len, enc.max_seq_length)),
                      "pad_id": int(enc.tokenizer.pad_token_id), "pad_token": str(enc.tokenizer.pad_token),
                      "padding": "longest in batch", "truncation": "longest first"},
        "pooling": "masked mean over tokens, in the graph",
    }


def _facts(loaded: Any, dims: int, input_spec: dict[str, Any]) -> dict[str, Any]:
    cfg = loaded.cfg
    return {
        "modality": cfg.modality,
        "encoder": cfg.model.encoder if cfg.modality == "vision" else f"{cfg.model.encoder} ({cfg.model.weights})",
        "head": cfg.model.head,
        "input": input_spec,
        "output": {"name": OUTPUT_NAME, "dims": dims, "d_enc": int(loaded.model.d_enc), "d_eff": int(loaded.d_eff),
                   "l2_normalised": True, "dtype": "float32", "truncation": loaded.truncation,
                   "computes": "normalise(P_d · (normalise(head(encoder(x))) − μ)), " + (
                       "P_d = the first d rows of the identity, μ = 0 (prefix truncation of a Matryoshka run)"
                       if loaded.truncation == "prefix" else
                       "P_d = top-d PCA axes of the normalised train embeddings")},
        "source_run": {"path": str(loaded.run.path.resolve()), "name": cfg.name, "preset": cfg.preset,
                       "best_epoch": loaded.summary.get("best_epoch"),
                       "checkpoint_sha256": loaded.checkpoint_sha256,
                       "metrics": {k: loaded.summary["final"].get(k) for k in ("recall@1", "knn5", "spearman", "d_eff")
                                   if k in loaded.summary.get("final", {})}},
    }


def _metadata(facts: dict[str, Any], precision: str) -> dict[str, str]:
    """Return the ONNX metadata_props: the key facts of the manifest, as strings."""
    return {
        "monocon_edge.format": FORMAT_NAME, "monocon_edge.format_version": str(FORMAT_VERSION),
        "monocon_edge.version": __version__, "monocon_edge.precision": precision,
        "monocon_edge.modality": facts["modality"], "monocon_edge.encoder": facts["encoder"],
        "monocon_edge.head": facts["head"], "monocon_edge.dims": str(facts["output"]["dims"]),
        "monocon_edge.d_eff": str(facts["output"]["d_eff"]), "monocon_edge.l2_normalised": "true",
        "monocon_edge.input": json.dumps(facts["input"], sort_keys=True),
        "monocon_edge.source_run": facts["source_run"]["name"],
    }


def _copy_tokenizer(source: Path, dest: Path) -> None:
    if not (source / "tokenizer.json").is_file():
        raise MonoconError(f"{source} has no tokenizer.json: the device runtime needs one")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {"monocon_edge": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__}

"""The whole benchmark: per model × dims × graph precision × index codes, one row of measured figures."""
from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..device.artifact import graph_bytes
from ..device.errors import MonoconError
from ..exporting.gates import GateThresholds
from .accuracy import CODE_KINDS, embed_eval_set, index_cost, quality
from .evaldata import recall_keys
from .targets import Target, artifact_target, classify, parse_dims, run_target
from ..events import EventFn, ignore_events

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def export_thresholds(parity_atol: float) -> GateThresholds:
    """Return the gates of bench's cached exports: the fp32 parity gate at ``parity_atol``, and int8 gates that
    refuse nothing (bench reports the int8 loss itself; the manifest records the figures)."""
    return GateThresholds(parity_atol=parity_atol, int8_min_cosine=-1.0, int8_max_recall_drop_points=100.0)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how long: dims labels, precisions, device, threads, timing iterations, batches."""

    dims: str = "128,64,16,deff"
    int8: bool = True
    device: str = "cpu"
    threads: int | None = None  # None: every CPU this process may use
    extra_threads: tuple[int, ...] = ()  # more intra-op thread counts to time each graph (and eager) at
    warmup: int = 10
    iterations: int = 100  # timed batch-1 calls (latency percentiles)
    batch: int = 64  # throughput batch
    batch_iterations: int = 10
    search_iterations: int = 50
    embed_batch: int = 64  # batch of the accuracy embedding passes
    max_queries: int | None = None  # cap the queries (seeded) to shorten accuracy passes
    memory_probe: bool = True
    torch_reference: bool = True
    parity_atol: float = GateThresholds.parity_atol  # fp32 parity gate of the exports bench makes
    suite: str = ""

    def check(self) -> None:
        """Raise MonoconError for values that cannot be benchmarked."""
        if self.device not in PROVIDERS:
            raise MonoconError(f"--device must be cpu or cuda, got {self.device!r}")
        if (self.threads is not None and self.threads < 1) or any(t < 1 for t in self.extra_threads):
            raise MonoconError("--threads and --also-threads must be >= 1")
        if min(self.iterations, self.batch, self.batch_iterations, self.search_iterations, self.embed_batch) < 1:
            raise MonoconError("iterations and batch sizes must be >= 1")
        if self.warmup < 0 or (self.max_queries is not None and self.max_queries < 1):
            raise MonoconError("--warmup must be >= 0 and --max-queries >= 1")
        if not self.parity_atol > 0:
            raise MonoconError("--parity-atol must be > 0")
        parse_dims(self.dims)


@dataclass
class BenchResult:
    """Header (machine, versions, options, date) and one row per (model, dims, precision, codes)."""

    header: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def available_threads() -> int:
    """Return how many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    """Return the CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy_machine_note(threads: int) -> str | None:
    """Return a warning when other processes already keep the CPUs busy (timings are then contention-bound)."""
    load = _load_average()
    if load is not None and load + threads > available_threads() + 0.5:
        return (f"the 1-min load average was {load:g} on {available_threads()} CPUs before this bench started: "
                f"with {threads} threads, timings include waiting for CPUs (PyTorch's OpenMP threads suffer most; "
                "compare on an idle machine or with --threads 1)")
    return None


def providers_for(device: str) -> list[str]:
    """Return the onnxruntime providers for ``device``; raise MonoconError when CUDA is asked for but absent."""
    import onnxruntime as ort

    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise MonoconError("--device cuda: this onnxruntime has no CUDAExecutionProvider (available: "
                           f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    return PROVIDERS[device]


def _header(opts: BenchOptions, threads: int, providers: list[str]) -> dict[str, Any]:
    import numpy
    import onnxruntime
    import torch

    from .. import __version__

    return {
        "suite": opts.suite, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
        "device": opts.device, "providers": providers, "platform": platform.platform(),
        "versions": {"python": platform.python_version(), "monocon_edge": __version__, "numpy": numpy.__version__,
                     "onnxruntime": onnxruntime.__version__, "torch": torch.__version__},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min_at_start": _load_average(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "latency": f"onnxruntime session.run on model-ready real inputs at batch 1: {opts.warmup} warm-up + "
                   f"{opts.iterations} timed calls; throughput at batch {opts.batch}: {opts.batch_iterations} calls",
        "side_by_side": "an artifact's graphs (and PyTorch eager, with the first artifact of a model) are timed in "
                        "one process at each thread count, their blocks of calls interleaved in a random order per "
                        f"round, each block after >= {SWITCH_REWARM_S} s of untimed calls; *_cpu_paired: the median "
                        "per-round CPU-time ratio (*_interval: its 90 % bootstrap interval)",
    }


EAGER = "torch eager"
# Untimed calls of at least this long before each block of a runner timed side by side: with several threads the
# previous runner's idle workers spin for tens of ms (a throw-away measurement here: PyTorch eager's first ~50 ms
# after an fp32 block ran 1.5-2.5x slower at two threads), which a device running one model never sees.
SWITCH_REWARM_S = 0.1


def side_by_side(runners: dict[str, Callable[[Any], Any]], one: Any, many: Any,
                 opts: BenchOptions) -> dict[str, dict[str, Any]]:
    """Return {name: {p50, p95, p99, cpu_p50, cpu_blocks, throughput}} of ``runners`` timed side by side.

    Batch 1 (``one``): after ``opts.warmup`` calls each, blocks of consecutive calls per runner, interleaved in a
    fresh random order per round (``exporting.latency.time_blocks``), so that the machine's drift falls on every
    runner alike and their ratio holds even when the machine's speed changes during the bench; each block after
    untimed calls for ``SWITCH_REWARM_S`` (and ``REWARM_CALLS``) so the previous runner's idle threads have
    stopped spinning; percentiles in ms over ``opts.iterations`` calls, ``cpu_blocks`` the calling thread's
    median CPU ms of each round (for ``paired_speedup``). Batch ``opts.batch`` (``many``): one call per runner per round (after one untimed call
    and the same ``SWITCH_REWARM_S``), interleaved the same way; throughput = examples / second over
    ``opts.batch_iterations`` calls.
    """
    from ..exporting.latency import BLOCK_CALLS, REWARM_CALLS, time_blocks

    for run in runners.values():
        for _ in range(opts.warmup):
            run(one)
    rewarm_s = SWITCH_REWARM_S if len(runners) > 1 else 0.0
    lat = time_blocks(runners, [one], opts.iterations, block=min(BLOCK_CALLS, opts.iterations),
                      rewarm=min(REWARM_CALLS, opts.warmup), rewarm_s=rewarm_s)
    for run in runners.values():
        for _ in range(min(opts.warmup, 3)):
            run(many)
    thr = time_blocks(runners, [many], opts.batch_iterations, block=1, rewarm=min(opts.warmup, 1),
                      rewarm_s=rewarm_s)
    return {name: {"p50": lat[name]["p50_ms"], "p95": lat[name]["p95_ms"], "p99": lat[name]["p99_ms"],
                   "cpu_p50": lat[name]["cpu_p50_ms"], "cpu_blocks": lat[name]["cpu_block_ms"],
                   "throughput": opts.batch / (thr[name]["mean_ms"] / 1e3)} for name in runners}


def paired_speedup(timing: dict[str, Any], reference: dict[str, Any] | None) -> list[float] | None:
    """Return [median, low, high] of the reference's CPU time over the graph's, paired by round (a 90 % bootstrap
    interval of the median; ``exporting.latency.paired_ratio``), or None without a reference."""
    from ..exporting.latency import paired_ratio

    if not reference:
        return None
    return list(paired_ratio(reference["cpu_blocks"], timing["cpu_blocks"]))


def _feeds(model: Any, inputs: Any) -> dict[str, Any]:
    """Return model-ready feeds of raw inputs (what ``embed`` would pass to the graph)."""
    from ..device.runtime import check_images

    if model.modality == "vision":
        return {"pixels": check_images(inputs, model.input_spec)}
    return model.tokenize(inputs)


class _Bench:
    """One benchmark invocation: shared state (loaded runs, eval sets, torch references) and the rows."""

    def __init__(self, opts: BenchOptions, emit: EventFn) -> None:
        opts.check()
        self.opts, self.emit = opts, emit
        self.providers = providers_for(opts.device)
        self.threads = opts.threads or available_threads()
        self.result = BenchResult(_header(opts, self.threads, self.providers))
        busy = busy_machine_note(self.threads)
        if busy:
            self.result.notes.append(busy)
        self.loaded: dict[Path, Any] = {}
        self.extra = [t for t in dict.fromkeys(opts.extra_threads) if t != self.threads]

    def load(self, run_path: Path) -> Any:
        from ..runs import load_run

        key = run_path.resolve()
        if key not in self.loaded:
            self.emit("load", {"name": f"loading run {run_path}"})
            self.loaded[key] = load_run(run_path)
        return self.loaded[key]

    def targets(self, paths: Sequence[str | Path]) -> list[Target]:
        labels = parse_dims(self.opts.dims)
        asked = [int(label) for label in labels if label.isdigit()]
        out = []
        for p in (Path(x) for x in paths):
            if classify(p) == "artifact":
                target = artifact_target(p)
                (dims,) = target.artifacts
                if dims not in asked:
                    self.result.notes.append(f"{target.name}: an artifact is measured at its own {dims} dims "
                                             "(--dims applies to run directories)")
            else:
                target = run_target(p, labels, self.opts.int8, self.load(p), export_thresholds(self.opts.parity_atol),
                                    self.emit)
                skipped = [d for d in asked if d not in target.artifacts]
                if skipped:
                    self.result.notes.append(f"{target.name}: --dims {', '.join(map(str, skipped))} skipped (not "
                                             f"below the embedding width {target.d_enc} or the PCA's axes)")
            out.append(target)
        return out

    def bench_target(self, target: Target) -> None:
        import torch

        from ..device.artifact import read_manifest
        from .evaldata import eval_set

        opts = self.opts
        loaded = self.load(target.run_path) if target.run_path is not None else None
        data = eval_set(loaded, opts.max_queries) if loaded is not None else None
        if data is None:
            self.result.notes.append(f"{target.name}: source run not found, so no accuracy, no PyTorch reference, "
                                     "and synthetic timing inputs")
        # PyTorch eager per thread count, timed side by side with the first artifact's graphs
        reference: dict[int, dict[str, Any]] = {}
        for dims, (label, folder) in target.artifacts.items():
            manifest = read_manifest(folder)
            precisions = [p for p in ("fp32", "int8", "int4")
                          if p in manifest["models"] and (opts.int8 or p == "fp32")]
            models = {p: self._session(folder, p, self.threads) for p in precisions}
            first = models[precisions[0]]
            one, many = data.timing_inputs(opts.batch) if data is not None else _synthetic(first, opts.batch)
            feed_one, feed_many = _feeds(first, one), _feeds(first, many)
            eager = None
            if not reference and loaded is not None and opts.torch_reference:
                from .reference import eager_runner

                # Once per model, projecting to the full PCA width (the d-dim projection costs the same to
                # within a tiny matmul).
                eager = eager_runner(loaded, min(target.d_enc, int(loaded.pca.components.shape[0])), opts.device)
            timings: dict[int, dict[str, dict[str, Any]]] = {}
            for t in [self.threads, *self.extra]:
                graphs = models if t == self.threads else {p: self._session(folder, p, t) for p in precisions}
                runners: dict[str, Callable[[Any], Any]] = {p: m.run for p, m in graphs.items()}
                if eager is not None:
                    runners[EAGER] = eager
                self.emit("model", {"name": f"{target.name} {label} ({dims}d): {', '.join(runners)} side by side, "
                                            f"{t} thread{'s' if t > 1 else ''}"})
                torch.set_num_threads(t)
                timings[t] = side_by_side(runners, feed_one, feed_many, opts)
                del graphs, runners
            torch.set_num_threads(self.threads)
            if eager is not None:
                reference = {t: timed.pop(EAGER) for t, timed in timings.items()}
            for precision, model in models.items():
                memory = None
                if opts.memory_probe:
                    from .memory import probe_peak_rss

                    self.emit("memory", {"name": f"{target.name} {label} {precision}: memory probe"})
                    memory = probe_peak_rss(folder, precision, self.threads, opts.batch, providers=self.providers)
                emb = embed_eval_set(model, data, opts.embed_batch) if data is not None else None
                base = _base_row(target, dims, label, precision, folder, manifest, model,
                                 timings[self.threads][precision], reference.get(self.threads), memory,
                                 self.threads, opts)
                base.update(_thread_fields({t: timings[t][precision] for t in self.extra}, reference))
                # eager's rounds pair only with the graphs timed in the same rounds (this artifact's, if it ran)
                base.update(_paired_fields(timings, reference if eager is not None else {}, precision,
                                           self.threads))
                for codes in CODE_KINDS:
                    row = dict(base, index_codes=codes)
                    row.update(_accuracy_fields(emb, data, codes, model.code_scales, opts, target.modality))
                    self.result.rows.append(row)

    def _session(self, folder: Path, precision: str, threads: int) -> Any:
        """Return the runtime model of one graph of ``folder`` at ``threads`` intra-op threads on the bench's
        providers; raise MonoconError when onnxruntime quietly fell back to another provider."""
        from ..device import runtime

        model = runtime.load(folder, precision, threads=threads, providers=self.providers)
        if model.session.get_providers()[0] != self.providers[0]:
            # onnxruntime falls back to CPU quietly when the CUDA libraries do not load.
            raise MonoconError(f"onnxruntime could not start {self.providers[0]} for {folder} "
                               f"(running on {model.session.get_providers()[0]})")
        return model


def _thread_fields(by_threads: dict[int, dict[str, float]], reference: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Return the row fields of the timings at the extra thread counts: ``latency_ms_p50_<t>t`` etc."""
    out: dict[str, Any] = {}
    for t, timing in by_threads.items():
        ref = reference.get(t)
        out.update({f"latency_ms_p50_{t}t": timing["p50"], f"latency_ms_p95_{t}t": timing["p95"],
                    f"latency_cpu_ms_p50_{t}t": timing["cpu_p50"],
                    f"torch_eager_latency_cpu_ms_p50_{t}t": ref["cpu_p50"] if ref else None,
                    f"throughput_per_s_{t}t": timing["throughput"],
                    f"torch_eager_latency_ms_p50_{t}t": ref["p50"] if ref else None,
                    f"torch_eager_throughput_per_s_{t}t": ref["throughput"] if ref else None,
                    f"speedup_latency_p50_{t}t": ref["p50"] / timing["p50"] if ref else None,
                    f"speedup_throughput_{t}t": timing["throughput"] / ref["throughput"] if ref else None})
    return out


def _paired_fields(timings: dict[int, dict[str, dict[str, Any]]], reference: dict[int, dict[str, Any]],
                   precision: str, threads: int) -> dict[str, Any]:
    """Return the per-round CPU-time medians (``latency_cpu_ms_blocks[_<t>t]``, PyTorch eager's beside them) and
    the paired CPU-time ratios of one graph at every thread count: over PyTorch eager
    (``speedup_cpu_paired[_<t>t]``) and, for a quantized graph, over the fp32 graph of the same artifact
    (``speedup_vs_fp32_cpu_paired[_<t>t]``): each the median ratio, with ``..._interval`` [low, high] beside it
    (``paired_speedup``); None where there is nothing to pair with (``reference`` empty: eager was not timed in
    these rounds)."""
    out: dict[str, Any] = {}
    for t, timed in timings.items():
        suffix = "" if t == threads else f"_{t}t"
        out[f"latency_cpu_ms_blocks{suffix}"] = timed[precision]["cpu_blocks"]
        out[f"torch_eager_latency_cpu_ms_blocks{suffix}"] = reference[t]["cpu_blocks"] if t in reference else None
        pairs = {"speedup_cpu_paired": reference.get(t),
                 "speedup_vs_fp32_cpu_paired": timed.get("fp32") if precision != "fp32" else None}
        for key, other in pairs.items():
            ratio = paired_speedup(timed[precision], other)
            out[f"{key}{suffix}"] = ratio[0] if ratio else None
            out[f"{key}{suffix}_interval"] = ratio[1:] if ratio else None
    return out


def _synthetic(model: Any, batch: int) -> tuple[Any, Any]:
    import numpy as np

    if model.modality == "vision":
        c, h, w = (int(v) for v in model.input_spec["shape"])
        images = np.random.default_rng(0).integers(0, 256, (batch, h, w, c), dtype=np.uint8)
        return images[:1], images
    texts = ["a man is playing a guitar on a small stage"] * batch
    return texts[:1], texts


def _base_row(target: Target, dims: int, label: str, precision: str, folder: Path, manifest: dict[str, Any],
              model: Any, timing: dict[str, float], reference: dict[str, float] | None, memory: Any, threads: int,
              opts: BenchOptions) -> dict[str, Any]:
    """Return the row fields shared by both index codes of one graph."""
    model_file = folder / manifest["models"][precision]["file"]
    ratio = (lambda a, b: a / b if a and b else None)
    return {
        "model": target.name, "head": target.head, "modality": target.modality, "truncation": target.truncation,
        "dims": dims, "dims_label": label, "d_enc": target.d_enc, "d_eff": target.d_eff, "precision": precision,
        "quantization": manifest["models"][precision].get("quantization"),
        "latency_ms_p50": timing["p50"], "latency_ms_p95": timing["p95"], "latency_ms_p99": timing["p99"],
        "latency_cpu_ms_p50": timing["cpu_p50"],
        "torch_eager_latency_cpu_ms_p50": reference["cpu_p50"] if reference else None,
        "latency_batch": 1, "throughput_per_s": timing["throughput"], "throughput_batch": opts.batch,
        "threads": threads, "providers": list(model.session.get_providers()),
        "torch_eager_latency_ms_p50": reference["p50"] if reference else None,
        "torch_eager_throughput_per_s": reference["throughput"] if reference else None,
        "speedup_latency_p50": ratio(reference["p50"], timing["p50"]) if reference else None,
        "speedup_throughput": ratio(timing["throughput"], reference["throughput"]) if reference else None,
        "peak_rss_mb": memory.peak_rss_mb if memory else None,
        "baseline_rss_mb": memory.baseline_rss_mb if memory else None,
        "rss_probe": f"{memory.source} of a child that imports only the runtime, batch {memory.batch}"
                     if memory else None,
        "rss_probe_imported_torch": memory.torch_imported if memory else None,
        "model_bytes": graph_bytes(model_file),
        "artifact": str(folder),
    }


def _accuracy_fields(emb: Any, data: Any, codes: str, scales: Any, opts: BenchOptions,
                     modality: str) -> dict[str, Any]:
    """Return the quality and index fields of one (graph, codes) pair (None where there is no data); the
    Recall@1/@5 keys are the modality's (``evaldata.recall_keys``)."""
    import numpy as np

    r1, r5 = recall_keys(modality)
    if emb is None:
        return {r1: None, r5: None, "knn5_accuracy": None, "sts_spearman": None,
                "queries": None, "gallery_size": None, "index_bytes_per_vector": None, "index_bytes": None,
                "search_ms_p50": None, "search_ms_p95": None, "protocol": None}
    qual = quality(emb, data, codes, scales)
    cost = index_cost(emb.gallery, emb.query, codes, np.asarray(scales), min(opts.warmup, 5), opts.search_iterations)
    return {r1: qual.recall_at_1, r5: qual.recall_at_5, "knn5_accuracy": qual.knn5_accuracy,
            "sts_spearman": qual.sts_spearman, "queries": data.num_queries, "gallery_size": data.num_gallery,
            "index_bytes_per_vector": cost.bytes_per_vector, "index_bytes": cost.total_bytes,
            "search_ms_p50": cost.search_ms_p50, "search_ms_p95": cost.search_ms_p95, "protocol": data.protocol}


def run_bench(paths: Sequence[str | Path], opts: BenchOptions, on_event: EventFn | None = None) -> BenchResult:
    """Return the BenchResult of every run / artifact in ``paths``; runs are exported (or reused) first.

    Raises MonoconError (ArtifactError for a bad artifact) before measuring anything when an input is wrong.
    """
    if not paths:
        raise MonoconError("give at least one run directory or artifact directory")
    emit = on_event or ignore_events
    bench = _Bench(opts, emit)
    targets = bench.targets(paths)
    for target in targets:
        bench.bench_target(target)
    return bench.result

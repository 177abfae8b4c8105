"""The `monocon-edge` command line: each command parses its options and calls one library function.

Errors caused by input (MonoconError, missing files, bad values) print one line on stderr and exit 1;
set MONOCON_DEBUG=1 to see the traceback of anything unexpected. Under torchrun only rank 0 prints (input
errors are found alike on every rank); the other ranks report only unexpected errors, with their rank.
"""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from ..exporting.int8_schemes import SCHEMES, TEXT_CANDIDATES, VISION_CANDIDATES

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train MonoCon embeddings, export them as one static ONNX graph, benchmark, ship.")
console = Console()
err_console = Console(stderr=True)


def _is_main_process() -> bool:
    """Return True unless this is a torchrun rank other than 0."""
    from ..training.distributed import env_rank

    return env_rank() == 0


def _run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn expected failures into one clear line on stderr and a non-zero exit."""
    from ..device.errors import MonoconError

    main = _is_main_process()
    try:
        return fn()
    except MonoconError as exc:
        if main:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if main:
            err_console.print("interrupted", highlight=False)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except OSError as exc:
        if exc.errno not in _NO_ROOM or os.environ.get("MONOCON_DEBUG"):
            _report_unexpected(exc, main)
        if main:
            where = f" {exc.filename}" if exc.filename else " a file"
            err_console.print(f"[bold red]error:[/] cannot write{where}: {exc.strerror} - make room, then run it "
                              "again", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # anything unexpected: still one line unless debugging
        _report_unexpected(exc, main)


# A full disk, a quota, a file-size limit: the machine's state, not a bug, so no "unexpected" wording.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _report_unexpected(exc: Exception, main: bool) -> None:
    """Print one line naming ``exc`` (re-raise it under MONOCON_DEBUG=1); always raises."""
    if os.environ.get("MONOCON_DEBUG"):
        raise exc
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = "" if main else f"(rank {os.environ.get('RANK')}) "
    err_console.print(f"[bold red]error:[/] {where}{type(exc).__name__}: {msg} "
                      "(MONOCON_DEBUG=1 shows the traceback)", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def _say(message: str) -> None:
    """Tell the user what a command chose for them (stderr, so that stdout keeps only results)."""
    err_console.print(message, highlight=False, markup=False, soft_wrap=True)


def _check_output_folders(*paths: Optional[Path]) -> None:
    """Return None when the folder of every given path (None: not asked for) exists and takes a new file; raise
    MonoconError naming the first path whose folder does not (checked before the work, not after it)."""
    import tempfile

    from ..device.atomic import write_error
    from ..device.errors import MonoconError

    for p in paths:
        if p is None:
            continue
        if not p.parent.is_dir():
            raise MonoconError(f"the folder for {p} does not exist")
        try:
            with tempfile.TemporaryFile(dir=p.parent):
                pass
        except OSError as exc:
            raise write_error(p, exc) from None


def _output_paths(json_path: Optional[Path], md: Optional[Path], plot: Optional[Path], results_dir: Optional[Path],
                  stem: str) -> dict[str, Optional[Path]]:
    """Return {"json", "md", "png": path or None}: the paths given, and with ``results_dir`` (created here)
    ``results_dir/<stem>.<kind>`` for each one not given."""
    outputs = {"json": json_path, "md": md, "png": plot}
    if results_dir is None:
        return outputs
    results_dir.mkdir(parents=True, exist_ok=True)
    return {k: v or results_dir / f"{stem}.{k}" for k, v in outputs.items()}


def _write_outputs(result: Any, outputs: dict[str, Optional[Path]], writers: dict[str, Callable[[Path, Any], None]]
                   ) -> list[str]:
    """Write ``result`` with the writer of each kind whose path is given; return the paths written."""
    written = []
    for kind, path in outputs.items():
        if path is not None:
            writers[kind](path, result)
            written.append(str(path))
    return written


# Output options that bench and bench-index share.
JSON_OPTION = typer.Option(None, "--json", help="write the rows + header as JSON")
MARKDOWN_OPTION = typer.Option(None, "--md", help="write the table(s) as Markdown")


@app.callback()
def _root() -> None:
    """Train MonoCon embeddings, export them as one static ONNX graph, benchmark, ship."""


@app.command()
def train(
    preset: str = typer.Option("default", help="default | cifar100 | cifar10 | snli | tiny-imagenet-100 | "
                                               "cifar10-subset | nli-pairs"),
    head: Optional[str] = typer.Option(None, help="monotonic (MonoCon) | mlp (ablation) | none (baseline); "
                                                  "default monotonic, or mlp with --loss matryoshka"),
    loss: Optional[str] = typer.Option(None, help="supcon | matryoshka (comparator: SupCon summed over nested "
                                                  "prefixes 16/32/64/128/full; truncation = first d coords)"),
    encoder: Optional[str] = typer.Option(None, help="smallcnn | resnet18 | resnet34 | minilm"),
    width: Optional[int] = typer.Option(None, help="smallcnn base width w (embedding = 8w dims)"),
    head_init: Optional[str] = typer.Option(None, help="default (PyTorch's) | identity (head starts as identity)"),
    negative_slope: Optional[float] = typer.Option(None, help="the head's LeakyReLU slope below 0, in [0, 1) "
                                                              "(default 0.01)"),
    weights: Optional[str] = typer.Option(None, help="vision: none | imagenet | FILE; text: default | FOLDER"),
    init_from: Optional[Path] = typer.Option(None, help="start the encoder from this run's best checkpoint"),
    data: Optional[str] = typer.Option(None, help="data file: .npz images, or pair .tsv files (comma-separated)"),
    data_dir: Optional[str] = typer.Option(None, help="folder holding CIFAR-10/100 (torchvision layout)"),
    val_data: Optional[str] = typer.Option(None, help="text: STS-B style TSV for selection (early stopping), or hf"),
    report_data: Optional[str] = typer.Option(None, help="text: STS-B style TSV scored only for the report"),
    report_fraction: Optional[float] = typer.Option(None, help="share of the held-out part kept for the report "
                                                               "(never used for a choice); 0: none"),
    split_seed: Optional[int] = typer.Option(None, help="seed of the train/selection/report split (default: --seed); "
                                                        "fix it to compare seeds on the same split"),
    head_standardize: Optional[bool] = typer.Option(None, "--head-standardize/--no-head-standardize",
                                                    help="monotone input standardisation before the head "
                                                         "(per-feature shift, positive scale)"),
    distill: Optional[float] = typer.Option(None, help="weight of the similarity-distillation term (head "
                                                       "cosines kept close to the starting encoder's); 0: off"),
    hard_negatives: Optional[bool] = typer.Option(None, "--hard-negatives/--no-hard-negatives",
                                                  help="text: each pair's contradiction hypothesis (same premise) "
                                                       "as an extra negative in its batch"),
    train_top_layers: Optional[int] = typer.Option(None, help="text, with --train-encoder: train only the top N "
                                                              "transformer layers with the head (0: all)"),
    download: bool = typer.Option(False, help="allow torchvision / HF downloads (needs internet)"),
    augment: Optional[str] = typer.Option(None, help="none | light | paper (TrivialAugmentWide + RandomErasing)"),
    max_train: Optional[int] = typer.Option(None, help="use a stratified subset of this many examples"),
    m_per_class: Optional[int] = typer.Option(None, help="vision: batches of groups of m same-class images"),
    epochs: Optional[int] = typer.Option(None, help="total epochs, warm-up included"),
    warmup_epochs: Optional[int] = typer.Option(None, help="head warm-up epochs with the encoder frozen"),
    batch_size: Optional[int] = typer.Option(None),
    lr_encoder: Optional[float] = typer.Option(None),
    lr_head: Optional[float] = typer.Option(None),
    lr_warmup: Optional[float] = typer.Option(None),
    temperature: Optional[float] = typer.Option(None, help="SupCon temperature tau"),
    eval_every: Optional[int] = typer.Option(None),
    patience: Optional[int] = typer.Option(None, help="early stopping: evaluations without improvement"),
    select_dims: Optional[int] = typer.Option(None, help="early stopping on the selection metric after truncation "
                                                         "to N dims (PCA; prefix for Matryoshka), the width you "
                                                         "will export; 0: full width"),
    freeze_encoder: Optional[bool] = typer.Option(None, "--freeze-encoder/--train-encoder"),
    seed: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="CUDA: bf16 autocast (fp16 + grad scaler "
                                                                   "where bf16 is unsupported)"),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="CUDA, vision: channels_last memory format"),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                                 help="torch.compile the training model"),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic",
                                                 help="deterministic kernels (off: cuDNN autotuning, faster)"),
    num_workers: Optional[int] = typer.Option(None, help="data-loader worker processes (vision, per GPU)"),
    distributed: bool = typer.Option(False, "--distributed", help="DDP over the processes torchrun started "
                                                                  "(implied when torchrun starts several); "
                                                                  "--batch-size is then per process"),
    gather_negatives: Optional[bool] = typer.Option(None, "--gather-negatives/--local-negatives",
                                                    help="DDP: SupCon over the embeddings of all processes"),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn",
                                           help="DDP on CUDA: BatchNorm statistics over the global batch"),
    name: Optional[str] = typer.Option(None, help="run name (directory prefix)"),
    out: Optional[Path] = typer.Option(None, help="run directory to create (default: RUNS_DIR/NAME-TIME)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where new run directories go"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
) -> None:
    """Train MonoCon (or a baseline / std-MLP ablation); with no option, the embedded default on digits."""

    def go() -> None:
        from ..training.config import override, preset as get_preset, with_loss
        from ..training.loop import train as run_training
        from .render import TrainProgress, print_summary

        cfg = None
        if resume is None:
            # The Matryoshka comparator defaults to the std-MLP head: same shape and budget as MonoCon's.
            cfg = with_loss(get_preset(preset, head or ("mlp" if loss == "matryoshka" else "monotonic")), loss)
            data_kind = None
            if data is not None:
                data_kind = "npz" if data.endswith(".npz") else "pairs" if ".tsv" in data else None
            cfg = override(cfg, "data", path=data or data_dir, kind=data_kind, val_path=val_data,
                           report_path=report_data, report_fraction=report_fraction, split_seed=split_seed,
                           hard_negatives=hard_negatives, download=download or None, augment=augment,
                           max_train=max_train, m_per_class=m_per_class)
            cfg = override(cfg, "model", encoder=encoder, width=width, weights=weights, head_init=head_init,
                           negative_slope=negative_slope, head_standardize=head_standardize)
            cfg = override(cfg, "optim", epochs=epochs, warmup_epochs=warmup_epochs, batch_size=batch_size,
                           lr_encoder=lr_encoder, lr_head=lr_head, lr_warmup=lr_warmup, temperature=temperature,
                           eval_every=eval_every, patience=patience, select_dims=select_dims,
                           freeze_encoder=freeze_encoder, seed=seed, device=device, num_workers=num_workers,
                           amp=amp, channels_last=channels_last,
                           compile=compile_model, deterministic=deterministic, gather_negatives=gather_negatives,
                           sync_bn=sync_bn, distill=distill, train_top_layers=train_top_layers)
            cfg = override(cfg, None, name=name, init_from=str(init_from) if init_from else None)
        if not _is_main_process():
            run_training(cfg, out, resume=resume, runs_root=runs_dir, distributed=distributed)
            return
        with TrainProgress(console) as progress:
            result = run_training(cfg, out, resume=resume, runs_root=runs_dir, on_event=progress.on_event,
                                  distributed=distributed)
        print_summary(console, result)

    _run_guarded(go)


@app.command()
def analyze(
    runs: list[Path] = typer.Argument(..., help="finished run directories to compare (one modality)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default: ./analysis-TIME)"),
    tsne: bool = typer.Option(False, "--tsne", help="also a 2-D t-SNE of each run's held-out embeddings"),
    device: str = typer.Option("cpu", help="where to recompute embeddings: cpu | cuda | auto"),
) -> None:
    """Compare runs side by side: tables, clustermaps, d_eff over training, Recall@k; writes index.html."""

    def go() -> None:
        from ..analysis import analyze as run_analysis
        from .render import print_analysis

        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "run":
                console.print(f"[{info['index']}/{info['total']}] {info['label']}: embedding {info['run']}",
                              highlight=False, markup=False)
            elif kind == "warning":
                err_console.print(f"warning: {info['message']}", highlight=False, markup=False)

        result = run_analysis(runs, out, tsne=tsne, device=device, on_event=on_event)
        print_analysis(console, result)

    _run_guarded(go)


# Built from int8_select's lists, so a new scheme shows up in --help without a second copy of its name.
_INT8_SCHEME_HELP = (f"auto (measure the candidates: {' and '.join(VISION_CANDIDATES)} (head layers int8 too) QDQ "
                     f"for CNNs; {', '.join(TEXT_CANDIDATES)} for transformers) | " + " | ".join(SCHEMES))


@app.command("export")
def export_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="a finished run directory (config.json, best.pt, pca.npz, "
                                                        "...); default: the most recent finished run under "
                                                        "--runs-dir"),
    dims: str = typer.Option("deff", help="output dims: 1..d_enc, or deff (the run's d_eff)"),
    int8: bool = typer.Option(False, "--int8", help="also write model.int8.onnx: the fastest candidate scheme that "
                                                     "passes every gate (measured here), gated against fp32"),
    int4: bool = typer.Option(False, "--int4", help="text: also write model.int4.onnx (MatMulNBits 4-bit + 4-bit "
                                                     "Gather), under the same gates"),
    out: Optional[Path] = typer.Option(None, help="artifact directory to create (default: RUN_DIR/export-dN[-int8]); "
                                                  "never overwritten"),
    fmt: list[str] = typer.Option(["onnx"], "--format", help="onnx (always) | sentence-transformers (text runs)"),
    parity_atol: float = typer.Option(1e-5, help="gate: max |fp32 ONNX - PyTorch| over real inputs"),
    int8_min_cosine: float = typer.Option(0.99, help="gate: mean cosine of int8 (graph or codes) to fp32"),
    int8_max_recall_drop: float = typer.Option(1.0, help="gate: Recall@1 drop of int8 vs fp32, in points"),
    int8_cosine_floor: Optional[float] = typer.Option(None, help="gate: floor on the minimum cosine of int8 (graph or "
                                                            "codes) to fp32 over the gate inputs; default: no "
                                                            "floor (the minimum is reported)"),
    parity_samples: int = typer.Option(256, help="real inputs for the parity gate"),
    calibration_samples: int = typer.Option(256, help="training inputs for int8 calibration (static ranges, "
                                                      "MatMul sensitivity)"),
    int8_scheme: str = typer.Option("auto", help=_INT8_SCHEME_HELP),
    int8_prefer: str = typer.Option("speed", help="auto: speed (the fastest candidate that passes every gate; of "
                                                  "those as fast, the smallest file) | size (the smallest that "
                                                  "passes)"),
    optimize: bool = typer.Option(True, "--optimize/--no-optimize", help="try onnxruntime's BERT fusions (text) "
                                                                        "and residual Adds as Sum, each kept where "
                                                                        "it measurably helps"),
    fp32_layout: str = typer.Option("auto", help="fp32 weight MatMuls as Gemm(Wᵀ, x), the weights as the GEMM's "
                                                 "left operand: auto (kept where it measurably helps at batch 1) | "
                                                 "transposed (always) | plain (as exported)"),
    timing_rounds: int = typer.Option(200, help="timed batch-1 calls per graph (fp32, each int8 candidate), "
                                                   "in blocks of consecutive calls"),
    runs_dir: Path = typer.Option(Path("runs"), help="where to look for runs when no RUN_DIR is given"),
) -> None:
    """Fold a run (W², normalise, PCA to N dims) into one ONNX graph, gate it, and write an artifact directory."""

    def go() -> None:
        from ..exporting.build import ExportOptions, export_run
        from ..exporting.gates import GateThresholds
        from .render import print_export

        from .defaults import default_run

        source = run_dir if run_dir is not None else default_run(runs_dir, _say)
        formats = tuple(dict.fromkeys(["onnx", *fmt]))
        opts = ExportOptions(dims=dims, int8=int8, out=out, formats=formats,
                             thresholds=GateThresholds(parity_atol, int8_min_cosine, int8_max_recall_drop,
                                                       int8_cosine_floor),
                             parity_samples=parity_samples, calibration_samples=calibration_samples,
                             int8_scheme=int8_scheme, int8_prefer=int8_prefer, int4=int4, optimize=optimize,
                             fp32_layout=fp32_layout, timing_rounds=timing_rounds)
        with console.status("exporting") as status:
            result = export_run(source, opts, on_event=lambda kind, info: status.update(info.get("name", kind)))
        print_export(console, result.path, result.manifest)

    _run_guarded(go)


@app.command()
def verify(
    artifact: Path = typer.Argument(..., help="an artifact directory written by monocon-edge export"),
    data: Optional[str] = typer.Option(None, help="re-measure on this data: .npz images+labels, or a pair .tsv"),
    run: Optional[Path] = typer.Option(None, help="the source run (default: the path in the manifest, if present)"),
    parity_atol: Optional[float] = typer.Option(None, help="override the recorded parity tolerance"),
    int8_min_cosine: Optional[float] = typer.Option(None, help="override the recorded int8 cosine threshold"),
    int8_max_recall_drop: Optional[float] = typer.Option(None, help="override the recorded Recall@1 drop (points)"),
) -> None:
    """Re-check an artifact: checksums, format version, a run of each graph, and its gates where data allows."""

    def go() -> None:
        import dataclasses

        from ..device.artifact import read_manifest
        from ..exporting.gates import GateThresholds
        from .render import print_verify
        from ..exporting.verify import verify_artifact

        thresholds = None
        given = {"parity_atol": parity_atol, "int8_min_cosine": int8_min_cosine,
                 "int8_max_recall_drop_points": int8_max_recall_drop}
        if any(v is not None for v in given.values()):
            recorded = GateThresholds(**read_manifest(artifact)["gates"]["thresholds"])
            thresholds = dataclasses.replace(recorded, **{k: v for k, v in given.items() if v is not None})
        with console.status("verifying"):
            report = verify_artifact(artifact, data=data, run=run, thresholds=thresholds)
        print_verify(console, report)

    _run_guarded(go)


@app.command()
def bench(
    paths: Optional[list[Path]] = typer.Argument(None, help="run directories (exported per dims into bench's "
                                                           "cache, reused while valid; the run is never written) and/or "
                                                           "artifact directories. Default: see above"),
    dims: Optional[str] = typer.Option(None, help="dims besides full: integers and/or deff (dims >= d_enc skipped); "
                                                  "default 128,64,16,deff, or the artifact's dims when no path is "
                                                  "given"),
    device: str = typer.Option("cpu", help="cpu | cuda (onnxruntime's CUDA provider)"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads for onnxruntime and torch "
                                                     "(default: every CPU available)"),
    also_threads: str = typer.Option("", help="more thread counts to time every graph and PyTorch eager at, "
                                               "comma-separated (e.g. 1)"),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="also bench the int8 graph (exported with --int8)"),
    json_path: Optional[Path] = JSON_OPTION,
    md: Optional[Path] = MARKDOWN_OPTION,
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG of Recall@1 against dims"),
    results_dir: Optional[Path] = typer.Option(None, help="write JSON, Markdown and PNG here, named "
                                                          "<suite>-<precisions>-<cpu>-<threads>t"),
    suite: str = typer.Option("", help="suite name (for the header and --results-dir file names)"),
    warmup: int = typer.Option(10, help="untimed calls of each graph before the timing"),
    iterations: int = typer.Option(100, help="timed batch-1 calls per graph (latency percentiles; blocks of 25)"),
    batch: int = typer.Option(64, help="throughput batch size"),
    batch_iterations: int = typer.Option(10, help="timed calls at the throughput batch"),
    search_iterations: int = typer.Option(50, help="timed single-query index searches"),
    max_queries: Optional[int] = typer.Option(None, help="cap the accuracy queries (seeded subset)"),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="peak RSS of a torch-free child process"),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="time the unfolded PyTorch model"),
    parity_atol: float = typer.Option(1e-5, help="fp32 parity gate of the exports bench makes (int8 is measured, "
                                                 "not gated)"),
    runs_dir: Path = typer.Option(Path("runs"), help="where to look when no path is given (new baseline runs go "
                                                     "here too)"),
) -> None:
    """Benchmark artifacts: Recall@k, 5-NN / STS, sizes, latency, throughput, peak RSS, search, vs PyTorch eager.

    With no path: the most recent artifact under --runs-dir and, side by side, the newest finished run of the
    same data with the other head (the baseline, --head none, for a MonoCon artifact). For the embedded default
    a missing baseline is trained first (about 10 s, into a new run under --runs-dir, and said so); for other
    presets bench says what to train. Run directories are only read: their exports go to bench's cache
    ($MONOCON_CACHE_DIR/bench-artifacts, else ~/.cache/monocon-edge/bench-artifacts). An artifact's graphs and
    PyTorch eager are timed side by side (their calls interleaved), so their ratios hold on a drifting machine.
    """

    def go() -> None:
        import dataclasses

        from ..bench.output import result_stem, write_json, write_markdown, write_plot
        from ..bench.runner import BenchOptions, run_bench
        from ..device.errors import MonoconError
        from .render import print_bench

        from .defaults import default_bench_paths

        try:
            extra = tuple(int(t) for t in also_threads.split(",") if t.strip())
        except ValueError:
            raise MonoconError(f"--also-threads takes comma-separated integers, got {also_threads!r}") from None
        opts = BenchOptions(dims=dims or "128,64,16,deff", int8=int8, device=device, threads=threads,
                            extra_threads=extra, warmup=warmup,
                            iterations=iterations, batch=batch, batch_iterations=batch_iterations,
                            search_iterations=search_iterations, max_queries=max_queries, memory_probe=memory,
                            torch_reference=reference, parity_atol=parity_atol, suite=suite)
        opts.check()  # before anything is trained or exported
        _check_output_folders(json_path, md, plot)
        targets = list(paths or [])
        if not targets:
            targets, art = default_bench_paths(runs_dir, _say)
            opts = dataclasses.replace(opts, dims=dims or str(art.manifest["output"]["dims"]))
        with console.status("benchmarking") as status:
            result = run_bench(targets, opts, on_event=lambda kind, info: status.update(info.get("name", kind)))
        outputs = _output_paths(json_path, md, plot, results_dir, result_stem(result))
        written = _write_outputs(result, outputs, {"json": write_json, "md": write_markdown, "png": write_plot})
        print_bench(console, result, written)
        from .compare import print_side_by_side

        print_side_by_side(console, result)

    _run_guarded(go)


@app.command("runs")
def runs_cmd(
    runs_dir: Path = typer.Argument(Path("runs"), help="the folder to list (default: ./runs)"),
) -> None:
    """List the finished runs and the artifacts under ./runs, newest first: what export and bench take by default."""

    def go() -> None:
        from .defaults import print_runs

        print_runs(console, runs_dir)

    _run_guarded(go)


@app.command("bench-index")
def bench_index(
    paths: Optional[list[Path]] = typer.Argument(None, help="run directories (exported per dims into bench's "
                                                            "export cache, reused while valid) and/or artifact "
                                                            "directories (benched at their dims)"),
    sizes: str = typer.Option("10k,100k,1m,10m", help="gallery sizes; beyond the real embeddings, synthetic "
                                                      "vectors from a Gaussian mixture fitted to them"),
    dims: str = typer.Option("128,64,16", help="dims besides full (dims >= d_enc skipped)"),
    codes: str = typer.Option("float32,int8", help="float32 and/or int8 (the artifact's codes)"),
    indexes: str = typer.Option("flat,ivf,hnsw", help="FAISS structures: flat, ivf, hnsw"),
    threads: str = typer.Option("1,all", help="search thread counts to time (all = every CPU)"),
    queries: int = typer.Option(500, help="real queries (seeded subset) for recall and timing"),
    warmup: int = typer.Option(2, help="untimed searches before each timing"),
    iterations: int = typer.Option(30, help="timed batch-1 searches"),
    batch: int = typer.Option(64, help="batch of the batched searches"),
    batch_iterations: int = typer.Option(3, help="timed batched searches"),
    memory_budget_mb: int = typer.Option(4096, help="configurations whose float32 gallery + index exceed this "
                                                    "are reported (fits: false, bytes needed), not built"),
    nlist: int = typer.Option(0, help="IVF lists (0: the power of two nearest sqrt(N))"),
    nprobe: str = typer.Option("4,16,64", help="IVF lists probed per query (one row each)"),
    hnsw_m: int = typer.Option(16, help="HNSW links per node (M)"),
    ef_construction: int = typer.Option(40, help="HNSW efConstruction"),
    ef_search: str = typer.Option("16,64,256", help="HNSW efSearch (one row each)"),
    hnsw_max_n: int = typer.Option(1_000_000, help="build HNSW only up to this N (its build time)"),
    flat_exact: str = typer.Option("1,0", help="int8 flat modes: 1 = the numpy index's exact cosine top-k "
                                               "(rescans), 0 = one scan, rescored (one row each)"),
    gmm_components: int = typer.Option(16, help="Gaussian-mixture components of the synthetic vectors"),
    seed: int = typer.Option(0, help="seed of the query subset, the mixture and its samples"),
    json_path: Optional[Path] = JSON_OPTION,
    md: Optional[Path] = MARKDOWN_OPTION,
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a log-log PNG of bytes and latency against N"),
    results_dir: Optional[Path] = typer.Option(None, help="write JSON, Markdown and PNG here, named "
                                                          "scale-<models>-<cpu>"),
    suite: str = typer.Option("scale", help="suite name (in the header)"),
    from_json: Optional[Path] = typer.Option(None, help="measure nothing: re-evaluate the targets of this "
                                                        "bench-index JSON and rewrite it with its Markdown and plot"),
) -> None:
    """Retrieval at scale on FAISS: index bytes, build time, latency, QPS and recall from 10k to 10M vectors."""

    def go() -> None:
        import time

        from ..bench.scale import ScaleOptions, run_scale_bench
        from ..bench.scale_output import result_stem, write_json, write_markdown, write_plot

        opts = ScaleOptions(sizes=sizes, dims=dims, codes=codes, indexes=indexes, threads=threads, queries=queries,
                            warmup=warmup, iterations=iterations, batch=batch, batch_iterations=batch_iterations,
                            memory_budget_mb=memory_budget_mb, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                            ef_construction=ef_construction, ef_search=ef_search, hnsw_max_n=hnsw_max_n, flat_exact=flat_exact,
                            gmm_components=gmm_components, seed=seed, suite=suite)
        opts.check()
        _check_output_folders(json_path, md, plot)
        writers = {"json": write_json, "md": write_markdown, "png": write_plot}

        def write(result, final: bool) -> None:
            if not result.rows:
                return
            outputs = _output_paths(json_path, md, plot, results_dir, result_stem(result))
            for path in _write_outputs(result, outputs, writers):
                if final:
                    console.print(f"wrote {path}", highlight=False)

        if from_json is not None:
            from ..bench.scale import evaluate_targets
            from ..bench.scale_output import read_json

            result = read_json(from_json)
            result.targets = evaluate_targets(result)
            # with_name, not with_suffix: "scale-v0.1.json" -> "scale-v0.1.md", not "scale-v0.md"
            for kind, path in {"json": json_path or from_json, "md": md or from_json.with_name(f"{from_json.stem}.md"),
                               "png": plot or from_json.with_name(f"{from_json.stem}.png")}.items():
                writers[kind](path, result)
                console.print(f"wrote {path}", highlight=False)
            return
        with console.status("benchmarking at scale") as status:
            result = run_scale_bench(paths or [], opts, on_event=lambda kind, info: (
                status.update(info.get("name", kind)),
                console.print(f"{time.strftime('%H:%M:%S')} {info.get('name', kind)}", highlight=False)),
                on_progress=lambda partial: write(partial, False))
        write(result, True)
        measured = sum(1 for r in result.rows if r["fits"])
        console.print(f"{len(result.rows)} rows ({measured} measured, {len(result.rows) - measured} over the "
                      "memory budget)", highlight=False)
        for t in result.targets:
            console.print(f"target {'met' if t['met'] else 'NOT met'}: {t['target']}: {t['measured']}",
                          highlight=False)

    _run_guarded(go)


def main() -> int:
    """Console-script entry point; return the exit status.

    Usage errors (an unknown option, a value of the wrong type, a missing argument) are one line on stderr and
    exit 2, like every other input error, instead of click's multi-line panel.
    """
    status = _main()
    if "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] not in ("", "0", "1"):
        # A torchrun rank: with its files written and its process group destroyed, gloo's threads can still
        # abort the interpreter's shutdown ("terminate called without an active exception", SIGABRT: 2 runs in
        # 12 on a loaded 2-core machine), which torchrun reports as a failed run. Nothing is left to finalise.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _main() -> int:
    """Run the typer app without its own exit handling; return the exit status."""
    try:
        status = app(prog_name="monocon-edge", standalone_mode=False)
    except typer.Abort:
        err_console.print("interrupted", highlight=False)
        return 130
    except typer.TyperException as exc:  # typer's own click: usage errors and other parse-time failures
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `monocon-edge`: the help was the answer
            return 0
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        err_console.print(f"[bold red]error:[/] {message}{hint}", markup=True, highlight=False, soft_wrap=True)
        return int(getattr(exc, "exit_code", 2))
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the CLI shows people: rich progress for training, tables of results."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..formatting import cell

# Metrics shown in tables, in this order, with their labels.
METRIC_LABELS = {
    "knn5": "5-NN acc", "val_knn5": "5-NN acc (held-out)", "spearman": "STS Spearman",
    "recall@1": "Recall@1", "recall@5": "Recall@5",
    "recall@1_pca128": "Recall@1 @128d", "recall@1_pca64": "Recall@1 @64d", "recall@1_pca16": "Recall@1 @16d",
    "spearman_pca128": "Spearman @128d", "spearman_pca64": "Spearman @64d", "spearman_pca16": "Spearman @16d",
    "recall@1_prefix128": "Recall@1 @128d prefix", "recall@1_prefix64": "Recall@1 @64d prefix",
    "recall@1_prefix16": "Recall@1 @16d prefix", "spearman_prefix128": "Spearman @128d prefix",
    "spearman_prefix64": "Spearman @64d prefix", "spearman_prefix16": "Spearman @16d prefix",
    "d_eff": "d_eff (99% var.)", "d_eff_encoder": "d_eff encoder", "recon_rmse": "PCA recon. RMSE @d_eff",
}


class TrainProgress:
    """A rich progress display fed by the trainer's events (the trainer itself never prints)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.epoch_task = None
        self.step_task = None
        self.steps_per_epoch = 0

    def __enter__(self) -> "TrainProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, kind: str, info: dict[str, Any]) -> None:
        """Render one trainer event."""
        p = self.progress
        if kind == "start":
            self.steps_per_epoch = info["steps_per_epoch"]
            self.epoch_task = p.add_task("epochs", total=max(info["epochs"], 1), completed=info["resumed_at"], info="")
            self.step_task = p.add_task("steps", total=max(self.steps_per_epoch, 1), info="")
        elif kind == "epoch_start":
            p.reset(self.step_task, total=max(self.steps_per_epoch, 1), info=info["phase"])
        elif kind == "step":
            p.update(self.step_task, advance=1, info=f"loss {info['loss']:.4f}")
        elif kind == "epoch_end":
            p.update(self.epoch_task, completed=info["epoch"])
            self.console.print(f"epoch {info['epoch']:>3} [{info['phase']}]  loss {cell(info['loss'])}  "
                               f"{info['examples_per_s']:.0f} {info['unit']}/s  {info['seconds']:.1f} s",
                               highlight=False, markup=False)
        elif kind == "eval":
            # Epochs > 0 already printed their loss and throughput (epoch_end): show the metrics under them.
            keys = ("loss", "val_knn5", "spearman", "recall@1", "d_eff") if info["epoch"] == 0 else (
                "val_knn5", "spearman", "recall@1", "d_eff")
            shown = {k: info[k] for k in keys if info.get(k) is not None}
            line = "  ".join(f"{k} {cell(v)}" for k, v in shown.items())
            head = f"epoch {info['epoch']:>3} [{info['phase']}]" if info["epoch"] == 0 else " " * 9 + "eval"
            self.console.print(f"{head}  {line}", highlight=False, markup=False)
        elif kind == "done":
            p.update(self.epoch_task, completed=p.tasks[self.epoch_task].total)


def print_summary(console: Console, result: Any) -> None:
    """Print the final metrics table of a run and where its directory is."""
    if not result.finished:
        console.print(f"stopped after epoch {result.history[-1]['epoch'] if result.history else 0}; "
                      f"continue with: monocon-edge train --resume {result.run_dir}")
        return
    table = Table(title=f"final metrics (best epoch {result.best_epoch})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in METRIC_LABELS.items():
        if key in result.final:
            table.add_row(label, cell(result.final[key]))
    console.print(table)
    if result.stopped_early:
        console.print("stopped early: the validation metric stopped improving")
    console.print(f"run directory: [bold]{result.run_dir}[/]")


def print_analysis(console: Console, result: Any) -> None:
    """Print an analysis' tables (rich) and where its files are."""
    for t in result.tables:
        table = Table(title=t.title, caption=t.note or None)
        for column, numeric in zip(t.columns, t.numeric_columns()):
            table.add_column(column, justify="right" if numeric else "left")
        for row in t.rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"{len(result.files)} files written; open [bold]{result.out_dir / 'index.html'}[/]")


def _gate_rows(table: Table, name: str, fig: dict[str, Any]) -> None:
    if "max_abs_diff" in fig:
        table.add_row(name, f"max |diff| {fig['max_abs_diff']:.2e} over {fig['samples']} inputs "
                            f"(batch {fig['batch_size']}), finite: {fig['finite_reference'] and fig['finite_onnx']}")
    elif "mean_cosine" in fig:
        extra = f", Spearman drop {fig['spearman_drop_points']:+.2f} pts" if "spearman_drop_points" in fig else ""
        table.add_row(name, f"mean cos {fig['mean_cosine']:.4f} (min {fig['min_cosine']:.4f}), Recall@1 "
                            f"{100 * fig['recall@1_fp32']:.2f} -> {100 * fig['recall@1']:.2f} "
                            f"({fig['recall_drop_points']:+.2f} pts drop, {fig['queries']} queries){extra}")
    elif "spearman" in fig:
        table.add_row(name, f"STS Spearman {fig['spearman']:.4f} ({fig['pairs']} pairs)")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_int8_selection(console: Console, record: dict[str, Any]) -> None:
    """Print the int8 candidates export measured (size, batch-1 latency, gate figures) and why the winner won."""
    t = record["timing"]
    limits = record["thresholds"]
    floor = limits.get("int8_cosine_floor")
    table = Table(title=f"int8 candidates (batch {t['batch']}, {t['threads']} thread, {t['calls']} calls each "
                        f"in blocks of {t['block']}); gates: mean cos >= {limits['int8_min_cosine']:g}"
                        + (f", min cos >= {floor:g}" if floor is not None else "")
                        + f", R@1 drop <= {limits['int8_max_recall_drop_points']:g}", title_justify="left")
    for column in ("scheme", "MB", "CPU p50 ms", "× fp32", "wall p50 ms", "load ms", "mean cos", "min cos",
                   "R@1 drop", "ρ drop", "gates"):
        table.add_column(column, justify="left" if column in ("scheme", "gates") else "right")
    fp = record["fp32"]
    mb = ".2f" if fp["bytes"] < 10e6 else ".1f"  # a CNN's graphs are a few MB: two decimals tell them apart
    table.add_row("fp32", format(fp["bytes"] / 1e6, mb), _fmt(fp.get("cpu_p50_ms"), ".2f"), "1.00",
                  _fmt(fp.get("p50_ms"), ".2f"), _fmt(fp.get("load_ms"), ".0f"), "1", "1", "0", "0", "reference")
    for row in record["candidates"]:
        mark = " ◀" if row["name"] == record.get("winner") else ""
        gates = "pass" if row.get("passed") else "FAIL: " + "; ".join(row.get("failures") or [])
        name = row["name"] + (f" ({row['kept_fp32']} fp32)" if "kept_fp32" in row else "") + (
            f" (α {row['alpha']:g})" if "alpha" in row else "")
        table.add_row(name + mark, _fmt(row.get("bytes") and row["bytes"] / 1e6, mb),
                      _fmt(row.get("cpu_p50_ms"), ".2f"), _fmt(row.get("speedup_vs_fp32"), ".2f"),
                      _fmt(row.get("p50_ms"), ".2f"), _fmt(row.get("load_ms"), ".0f"), _fmt(row.get("mean_cosine"), ".4f"),
                      _fmt(row.get("min_cosine"), ".4f"), _fmt(row.get("recall_drop_points"), "+.2f"),
                      _fmt(row.get("spearman_drop_points"), "+.2f"), gates)
    console.print(table)
    for name, why in record.get("not_applicable", {}).items():
        console.print(f"not built: {name} ({why})", highlight=False)
    if record.get("reason"):
        console.print(f"chosen: {record['reason']}", highlight=False)
    winner = next((r for r in record["candidates"] if r["name"] == record.get("winner")), None)
    if winner and winner.get("speedup_vs_fp32") is not None and winner["speedup_vs_fp32"] < 1:
        # Tiny graphs (the embedded digits default) spend their time in per-node overhead, which QDQ adds to.
        console.print(f"[yellow]note:[/] the int8 graph is slower than fp32 here ({winner['speedup_vs_fp32']:.2f}x at "
                      "batch 1, one thread): the model is too small for int8 kernels to pay off; the int8 file is "
                      "still the smaller one, and model.onnx in the same artifact is the faster", highlight=False)


def print_export(console: Console, path: Any, manifest: dict[str, Any]) -> None:
    """Print the exported artifact's gate figures, files and location."""
    out = manifest["output"]
    table = Table(title=f"export: {manifest['modality']} {manifest['encoder']}, head {manifest['head']}, "
                        f"{out['dims']} dims (d_eff {out['d_eff']}, d_enc {out['d_enc']})")
    table.add_column("gate")
    table.add_column("measured (all passed)")
    labels = {"fp32_parity": "fp32 ONNX vs PyTorch", "fp32_spearman": "fp32 STS", "int8_codes": "int8 codes vs fp32",
              "int8_model": "int8 graph vs fp32", "int4_model": "int4 graph vs fp32"}
    for key, label in labels.items():
        if key in manifest["gates"]:
            _gate_rows(table, label, manifest["gates"][key])
    console.print(table)
    fp32 = manifest["models"]["fp32"]
    # the measured graph rewrites; the last two are listed only where the graph had something to rewrite
    rewrites = (("transformer optimizer", fp32.get("graph_optimization"), True),
                ("residual Add as Sum", fp32.get("residual_sum"), bool((fp32.get("residual_sum") or {}).get("sums"))),
                ("fp32 weight layout (Gemm(Wᵀ, x))", fp32.get("weight_layout"),
                 bool((fp32.get("weight_layout") or {}).get("stats", {}).get("matmuls"))))
    for label, record, applies in rewrites:
        if record and applies:
            console.print(f"{label}: {'kept' if record['kept'] else 'not kept'} ({record.get('reason', '')})",
                          highlight=False)
    for precision in ("int8", "int4"):
        record = manifest["models"].get(precision, {}).get("selection")
        if record:
            print_int8_selection(console, record)
    for name in manifest["files"]:
        if name.endswith(".onnx"):
            console.print(f"  {name}")
    console.print(f"artifact: [bold]{path}[/]")


def print_verify(console: Console, report: Any) -> None:
    """Print what verify checked and measured."""
    table = Table(title=f"verify {report.path}")
    table.add_column("check")
    table.add_column("result")
    table.add_row("checksums", f"{len(report.manifest['files'])} files match the manifest")
    for precision, fig in report.smoke.items():
        table.add_row(f"{precision} graph runs", f"({fig['batch']}, {fig['dims']}) normalised, "
                                                f"max norm error {fig['max_norm_error']:.1e}")
    labels = {"fp32_parity": "fp32 ONNX vs PyTorch", "int8_codes": "int8 codes vs fp32", "int8_model": "int8 graph vs fp32"}
    for source, figures in report.gates.items():
        for key, fig in figures.items():
            _gate_rows(table, f"{labels.get(key, key)} ({source})", fig)
    console.print(table)
    for line in report.skipped:
        console.print(f"skipped: {line}")
    console.print("[bold green]verified[/]")



# Terminal bench table: (row key, heading, format); the model's name, head and sizes go in the title.
# The Recall@k columns go between the two (bench.output.recall_columns: each modality's own).
BENCH_LEADING_COLUMNS = (
    ("dims_label", "dims", "s"), ("dims", "d", "d"), ("precision", "graph", "s"), ("index_codes", "codes", "s"),
)
BENCH_TRAILING_COLUMNS = (
    ("knn5_accuracy", "5-NN", ".4f"),
    ("sts_spearman", "STS ρ", ".4f"), ("latency_ms_p50", "p50 ms", ".3f"), ("latency_ms_p95", "p95 ms", ".3f"),
    ("throughput_per_s", "/s", ".0f"), ("speedup_latency_p50", "×eager", ".1f"), ("peak_rss_mb", "RSS MiB", ".0f"),
    ("model_bytes", "model B", ","), ("index_bytes_per_vector", "B/vec", "d"), ("search_ms_p50", "search ms", ".3f"),
)


# --also-threads columns the terminal leaves to the JSON / Markdown files (the table is wide enough already)
TERMINAL_LEFT_OUT = ("throughput_", "speedup_throughput_", "speedup_cpu_paired_", "speedup_vs_fp32_cpu_paired_")


def print_bench(console: Console, result: Any, written: list[str]) -> None:
    """Print a bench result: one table per model, then the header facts, notes and the files written."""
    from ..bench.output import extra_thread_columns, recall_columns

    h = result.header
    for name in dict.fromkeys(r["model"] for r in result.rows):
        rows = [r for r in result.rows if r["model"] == name]
        first = rows[0]
        table = Table(title=f"{name}: head {first['head']}, {first['truncation']} truncation, d_enc {first['d_enc']}, "
                            f"d_eff {first['d_eff']}", title_justify="left")
        columns = (BENCH_LEADING_COLUMNS + recall_columns(r["modality"] for r in rows) + BENCH_TRAILING_COLUMNS
                   + tuple(c for c in extra_thread_columns(result) if not c[0].startswith(TERMINAL_LEFT_OUT)))
        shown = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
        for key, label, _ in shown:
            table.add_column(label, justify="left" if key in ("dims_label", "precision", "index_codes") else "right")
        for row in rows:
            table.add_row(*(cell(row.get(k), spec) for k, _, spec in shown))
        console.print(table)
    console.print(f"{h['cpu']}, {h['threads']} threads, {h['device']} ({', '.join(h['providers'])}); {h['latency']}; "
                  "×eager = PyTorch eager p50 / artifact p50", highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    for path in written:
        console.print(f"wrote [bold]{path}[/]")

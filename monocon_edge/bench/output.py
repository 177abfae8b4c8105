"""Bench results as files: JSON (header + rows), Markdown, a Recall@1-against-dims plot; all written atomically."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..files import atomic_path, write_json_atomic, write_text_atomic
from ..formatting import cell
from .evaldata import recall_keys
from .runner import BenchResult

# (row key, Markdown / table heading, format): the columns before and after the Recall@k ones.
LEADING_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "s"), ("head", "head", "s"), ("dims_label", "dims", "s"), ("dims", "d", "d"),
    ("precision", "graph", "s"), ("index_codes", "codes", "s"),
)
TRAILING_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("knn5_accuracy", "5-NN", ".4f"), ("sts_spearman", "STS ρ", ".4f"),
    ("latency_ms_p50", "p50 ms", ".3f"), ("latency_ms_p95", "p95 ms", ".3f"), ("latency_ms_p99", "p99 ms", ".3f"),
    ("throughput_per_s", "thr/s", ".1f"), ("speedup_latency_p50", "× eager p50", ".2f"),
    ("speedup_throughput", "× eager thr", ".2f"), ("speedup_cpu_paired", "× eager CPU", ".2f"),
    ("speedup_vs_fp32_cpu_paired", "× fp32 CPU", ".2f"), ("peak_rss_mb", "RSS MiB", ".1f"), ("model_bytes", "model B", ","),
    ("index_bytes_per_vector", "B/vec", "d"), ("index_bytes", "index B", ","), ("search_ms_p50", "search ms", ".3f"),
)
# What goes before "R@k" / "Recall@k" in each modality's headings (its row keys: evaldata.recall_keys); text's
# figure is the pair+STS protocol, not training's pair Recall@k.
RECALL_PREFIXES = {"vision": "", "text": "pair+STS "}


def recall_columns(modalities: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
    """Return the Recall@1 and Recall@5 columns of each of ``modalities`` present (vision first)."""
    present = set(modalities)
    out: tuple[tuple[str, str, str], ...] = ()
    for modality, prefix in RECALL_PREFIXES.items():
        if modality in present:
            at1, at5 = recall_keys(modality)
            out += ((at1, f"{prefix}R@1", ".4f"), (at5, f"{prefix}R@5", ".4f"))
    return out


def row_recall_at_1(row: dict) -> float | None:
    """Return a result row's Recall@1 under its modality's key (None when it was not measured)."""
    return row.get(recall_keys(row["modality"])[0])


def table_columns(result: BenchResult) -> tuple[tuple[str, str, str], ...]:
    """Return the Markdown columns of ``result``: the Recall@k ones of the modalities it has, and the
    ``--also-threads`` timings."""
    modalities = [r["modality"] for r in result.rows]
    return LEADING_COLUMNS + recall_columns(modalities) + TRAILING_COLUMNS + extra_thread_columns(result)


def extra_thread_columns(result: BenchResult) -> tuple[tuple[str, str, str], ...]:
    """Return the columns of the timings at ``--also-threads`` counts (batch-1 p50, throughput, × eager, and the
    paired CPU-time ratios over eager and over fp32)."""
    out: list[tuple[str, str, str]] = []
    for t in result.header["options"].get("extra_threads") or ():
        if t == result.header["threads"]:
            continue
        out += [(f"latency_ms_p50_{t}t", f"p50 ms {t}t", ".3f"), (f"latency_cpu_ms_p50_{t}t", f"CPU p50 ms {t}t", ".3f"),
                (f"throughput_per_s_{t}t", f"thr/s {t}t", ".1f"),
                (f"speedup_latency_p50_{t}t", f"× eager p50 {t}t", ".2f"),
                (f"speedup_throughput_{t}t", f"× eager thr {t}t", ".2f"),
                (f"speedup_cpu_paired_{t}t", f"× eager CPU {t}t", ".2f"),
                (f"speedup_vs_fp32_cpu_paired_{t}t", f"× fp32 CPU {t}t", ".2f")]
    return tuple(out)


def slug(text: str) -> str:
    """Return ``text`` as a lower-case file-name fragment (letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def result_stem(result: BenchResult) -> str:
    """Return ``<suite>-<precisions>-<cpu>-<threads>t`` (threads: ``--threads`` then each ``--also-threads``, e.g.
    ``2-1t``): how bench/results files are named."""
    h = result.header
    precisions = "fp32-int8" if h["options"]["int8"] else "fp32"
    device = slug(h["cpu"]) if h["device"] == "cpu" else f"cuda-{slug(h['cpu'])}"
    threads = "-".join(str(t) for t in dict.fromkeys([h["threads"], *(h["options"].get("extra_threads") or ())]))
    return f"{slug(h['suite'] or 'bench')}-{precisions}-{device}-{threads}t"


def write_json(path: str | Path, result: BenchResult) -> None:
    """Write {header, notes, rows} as JSON."""
    write_json_atomic(path, {"header": result.header, "notes": result.notes, "rows": result.rows})


def markdown_head(title: str, header: dict, threads: str, facts: list[str], notes: list[str]) -> list[str]:
    """Return the Markdown lines a result file opens with: ``# title``, then the CPU (with ``threads``),
    versions and date from ``header``, the other ``facts`` lines, and one line per note."""
    return [f"# {title}", "", f"- CPU: {header['cpu']} ({header['cpu_count']} CPUs), {threads}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()),
            f"- date: {header['date']}", *facts, "", *(f"- note: {n}" for n in notes)]


def markdown(result: BenchResult) -> str:
    """Return the result as Markdown: the header facts, then one table row per result row."""
    h = result.header
    lines = markdown_head(f"monocon-edge bench{': ' + h['suite'] if h['suite'] else ''}", h,
                          f"threads: {h['threads']}, device: {h['device']} ({', '.join(h['providers'])})",
                          [f"- timing: {h['latency']}"], result.notes)
    columns = table_columns(result)
    lines += ["", "| " + " | ".join(c[1] for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in result.rows:
        lines.append("| " + " | ".join(cell(row.get(k), spec) for k, _, spec in columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, result: BenchResult) -> None:
    """Write the Markdown of ``result``."""
    write_text_atomic(path, markdown(result))


def write_plot(path: str | Path, result: BenchResult) -> None:
    """Write a PNG of Recall@1 (each modality's: ``row_recall_at_1``) against dims, one line per model (solid:
    fp32 graph + float32 codes; dashed: int8 graph + int8 codes)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = list(dict.fromkeys(r["model"] for r in result.rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(models):
        for precision, codes, style in (("fp32", "float32", "-"), ("int8", "int8", "--")):
            pts = sorted((r["dims"], row_recall_at_1(r)) for r in result.rows if r["model"] == name
                         and r["precision"] == precision and r["index_codes"] == codes
                         and row_recall_at_1(r) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", color=colours[i % len(colours)],
                        label=f"{name} ({precision}, {codes} codes)")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["dims"] for r in result.rows})
    if ticks:
        from matplotlib.ticker import NullFormatter

        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("embedding dims (log scale)")
    modalities = {r["modality"] for r in result.rows}
    ylabel = " / ".join(f"{prefix}Recall@1" for m, prefix in RECALL_PREFIXES.items() if m in modalities) or "Recall@1"
    ax.set_ylabel(ylabel)
    h = result.header
    ax.set_title(f"{ylabel} vs dims{' — ' + h['suite'] if h['suite'] else ''} ({h['cpu']}, {h['threads']} threads)",
                 fontsize=9)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)

"""Scale-bench results as files: JSON (header, notes, targets, rows), Markdown, a log-log plot; written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..files import atomic_path, write_json_atomic, write_text_atomic
from ..formatting import cell
from .output import markdown_head, slug
from .scale import ScaleResult

# (row key, heading, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "s"), ("dims", "d", "d"), ("n", "N", ","), ("n_synthetic", "synthetic", ","),
    ("codes", "codes", "s"), ("index", "index", "s"), ("params", "params", "s"), ("fits", "fits", "s"),
    ("index_mb", "index MB", ",.1f"), ("bytes_per_vector", "B/vec", ".1f"), ("build_s", "build s", ".1f"),
    ("threads", "thr", "d"), ("p50_ms_batch1", "b1 p50 ms", ".3f"), ("p95_ms_batch1", "b1 p95 ms", ".3f"),
    ("cpu_ms_batch1_p50", "b1 CPU ms", ".3f"),
    ("qps_batch1", "b1 QPS", ",.0f"), ("p50_ms_batch64", "b64 p50 ms", ".2f"), ("p95_ms_batch64", "b64 p95 ms", ".2f"),
    ("qps_batch64", "b64 QPS", ",.0f"), ("recall_at_1", "R@1", ".3f"), ("recall_at_10", "R@10", ".3f"),
    ("task_recall_at_1", "task R@1", ".3f"), ("peak_rss_mb", "RSS MiB", ",.0f"),
)


def complete_rows(result: ScaleResult) -> list[dict[str, Any]]:
    """Return the rows with every key any row has (None where a row has no value: refused configurations)."""
    keys: dict[str, None] = {}
    for row in result.rows:
        keys.update(dict.fromkeys(row))
    return [{k: row.get(k) for k in keys} for row in result.rows]


def result_stem(result: ScaleResult) -> str:
    """Return ``scale-<models>-<cpu>``: how bench/results files are named."""
    models = "-".join(dict.fromkeys(slug(r["model"]) for r in result.rows)) or "none"
    return f"scale-{models}-{slug(result.header['cpu'])}"


def write_json(path: str | Path, result: ScaleResult) -> None:
    """Write {header, notes, targets, rows} as JSON."""
    write_json_atomic(path, {"header": result.header, "notes": result.notes, "targets": result.targets,
                             "rows": complete_rows(result)})


def _params(row: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in (row.get("index_params") or {}).items()) or "-"


def markdown(result: ScaleResult) -> str:
    """Return the result as Markdown: header facts, notes, targets, then one table row per result row."""
    h = result.header
    lines = markdown_head(f"monocon-edge bench-index: {h['suite']}", h,
                          f"threads timed: {', '.join(map(str, h['threads']))}; 1-min load average at start: "
                          f"{h['load_average_1min_at_start']}",
                          [f"- timing: {h['timing']}", f"- recall: {h['recall']}",
                           f"- memory: {h['memory']}; budget {h['options']['memory_budget_mb']:,} MiB"], result.notes)
    if result.targets:
        lines += ["", "## Targets (16 dims, int8, largest size)", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in result.targets]
    lines += ["", "## Rows", "", "| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in complete_rows(result):
        view = dict(row, params=_params(row), fits="yes" if row["fits"] else "**no**",
                    index_mb=(row.get("index_bytes") or 0) / 1e6)
        lines.append("| " + " | ".join(cell(view.get(k), spec) for k, _, spec in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, result: ScaleResult) -> None:
    """Write the Markdown of ``result``."""
    write_text_atomic(path, markdown(result))


def _default_search(row: dict[str, Any]) -> bool:
    p = row.get("index_params") or {}
    return p.get("nprobe", 16) == 16 and p.get("ef_search", 64) == 64 and p.get("exact", 1) == 1


def write_plot(path: str | Path, result: ScaleResult) -> None:
    """Write a log-log PNG against N: index bytes (left, refused configurations' estimates hollow) and batch-1
    p50 latency at 1 thread (right); colour = dims, line = codes, marker = index (ivf nprobe 16, hnsw ef 64)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in result.rows if _default_search(r) and r["threads"] == min(result.header["threads"])]
    dims = sorted({r["dims"] for r in rows}, reverse=True)
    colours = {d: plt.cm.viridis(i / max(len(dims) - 1, 1)) for i, d in enumerate(dims)}
    styles = {"float32": "-", "int8": "--"}
    markers = {"flat": "o", "ivf": "s", "hnsw": "^"}
    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(13, 5.5))
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["dims"], r["codes"], r["index"]), []).append(r)
    for (model, d, codes, index), grp in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2:])):
        grp = sorted(grp, key=lambda r: r["n"])
        style = dict(color=colours[d], linestyle=styles[codes], marker=markers[index])
        label = f"{d}d {codes} {index}" + (f" ({model})" if len(result.header.get("models", [])) > 1 else "")
        ax_b.plot([r["n"] for r in grp], [r["index_bytes"] for r in grp], label=label, mfc="none", **style)
        measured = [r for r in grp if r["fits"]]
        ax_b.plot([r["n"] for r in measured], [r["index_bytes"] for r in measured], linestyle="none",
                  marker=markers[index], color=colours[d])
        if measured:
            ax_t.plot([r["n"] for r in measured], [r["p50_ms_batch1"] for r in measured], label=label, **style)
    for ax, what in ((ax_b, "index bytes (hollow: estimate, did not fit the budget)"),
                     (ax_t, "batch-1 search p50, ms (1 thread)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery size N")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_b.axhline(200e6, color="red", lw=0.8, ls=":")
    ax_t.axhline(2.0, color="red", lw=0.8, ls=":")
    ax_t.axhline(50.0, color="red", lw=0.8, ls=":")
    ax_t.legend(fontsize=7, ncol=2)
    fig.suptitle(f"monocon-edge bench-index ({result.header['cpu']}); red: issue-15 targets")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def read_json(path: str | Path) -> ScaleResult:
    """Return the ScaleResult stored in a bench-index JSON file (for re-rendering its Markdown and plot)."""
    import json

    from ..device.errors import MonoconError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return ScaleResult(data["header"], data["rows"], data.get("notes", []), data.get("targets", []))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MonoconError(f"{path} is not a bench-index JSON file: {type(exc).__name__}") from None

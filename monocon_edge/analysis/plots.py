"""Matplotlib figures for `monocon-edge analyze` (paper Figs. 2/7, 4, 6 and a t-SNE), saved as modest PNGs.

Figures are built on ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot state), so nothing
here opens a window or depends on the user's backend.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..files import atomic_path

MAX_PNG_BYTES = 300_000
_DPIS = (100, 85, 70, 55)


def save_png(fig: Figure, path: str | Path, max_bytes: int = MAX_PNG_BYTES) -> Path:
    """Write ``fig`` to ``path`` atomically as a PNG of at most ``max_bytes`` (lowering the dpi if needed);
    return the path."""
    data = b""
    for dpi in _DPIS:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        data = buf.getvalue()
        if len(data) <= max_bytes:
            break
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def clustermap_figure(corr_ordered: np.ndarray, linkage: np.ndarray, title: str) -> Figure:
    """Return a clustermap: the feature correlation matrix in dendrogram order, with the dendrogram on the
    top and the left (paper Figs. 2 and 7)."""
    from scipy.cluster.hierarchy import dendrogram

    d = corr_ordered.shape[0]
    fig = Figure(figsize=(7.2, 6.6))
    gs = fig.add_gridspec(2, 3, width_ratios=[1.1, 6, 0.25], height_ratios=[1.1, 6], wspace=0.03, hspace=0.03)
    ax_top, ax_left = fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 0])
    ax, cax = fig.add_subplot(gs[1, 1]), fig.add_subplot(gs[1, 2])
    style = {"no_labels": True, "color_threshold": 0, "above_threshold_color": "0.25"}
    # Hundreds of leaves: thin lines, or the dendrograms turn into solid blocks.
    with matplotlib.rc_context({"lines.linewidth": 1.0 if d <= 64 else 0.4}):
        dendrogram(linkage, ax=ax_top, orientation="top", **style)
        dendrogram(linkage, ax=ax_left, orientation="left", **style)
    ax_top.set_xlim(0, 10 * d)
    ax_left.set_ylim(10 * d, 0)  # first leaf at the top, as the heatmap's first row
    for a in (ax_top, ax_left):
        a.set_xticks([])
        a.set_yticks([])
        for spine in a.spines.values():
            spine.set_visible(False)
    # Sharp cells while they are bigger than a pixel; smoothed beyond (also keeps the PNG small).
    im = ax.imshow(corr_ordered, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto",
                   interpolation="nearest" if d <= 128 else "antialiased")
    ax.set_xlabel(f"feature, in dendrogram order ({d} dims; rows likewise)")
    ax.set_yticks([])
    ax.tick_params(labelsize=8)
    fig.colorbar(im, cax=cax, label="Pearson correlation")
    fig.suptitle(title, fontsize=11)
    return fig


@dataclass(frozen=True)
class DeffSeries:
    """One run's d_eff history (``compute.deff_history``) with its plot label."""

    label: str
    history: dict[str, list]
    d_enc: int
    best_epoch: int


# (key, legend, colour, marker, line style, width): the raw line is dashed and drawn last so that it stays
# visible where it coincides with the normalised one.
_DEFF_LINES = (("d_eff_encoder", "encoder output (normalised)", "tab:gray", "s", "-", 1.5),
               ("d_eff", "head output (normalised)", "tab:blue", "o", "-", 2.5),
               ("d_eff_head_raw", "head output (raw)", "tab:orange", "^", "--", 1.5))


def deff_figure(series: list[DeffSeries]) -> Figure:
    """Return d_eff (99 % PCA variance) over training, one panel per run, for the encoder output and the
    head output, raw and normalised (paper Fig. 4)."""
    n = max(len(series), 1)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(5.4 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for i, s in enumerate(series):
        ax = axes[i // cols][i % cols]
        epochs = s.history["epoch"]
        for key, name, color, marker, style, width in _DEFF_LINES:
            pts = [(e, v) for e, v in zip(epochs, s.history.get(key, [])) if v is not None]
            if pts:
                ax.plot(*zip(*pts), label=name, color=color, marker=marker, markersize=4, linestyle=style,
                        linewidth=width)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if s.best_epoch >= 0:
            ax.axvline(s.best_epoch, color="0.5", linestyle=":", label="best epoch")
        ax.set_title(f"{s.label} (d_enc = {s.d_enc})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("d_eff (99 % variance)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for j in range(len(series), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.suptitle("Effective dimension over training", fontsize=12)
    fig.tight_layout()
    return fig


def recall_figure(curves: list[tuple[str, dict[int, float]]], protocol: str) -> Figure:
    """Return Recall@k against k, one line per run (paper Fig. 6)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for label, curve in curves:
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", markersize=4, label=label)
    ax.set_xlabel("k")
    ax.set_ylabel("Recall@k")
    ax.set_xticks(range(1, 11))
    ax.set_title(f"Recall@k of the best models ({protocol})", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def tsne_figure(points: np.ndarray, labels: np.ndarray, paired: bool, title: str) -> Figure:
    """Return a 2-D t-SNE scatter of held-out embeddings: coloured by class (vision), or the two sides of
    each held-out pair with a line between partners (text)."""
    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.subplots()
    if paired:
        from matplotlib.collections import LineCollection

        half = len(points) // 2
        a, b = points[:half], points[half:]
        shown = min(half, 300)
        ax.add_collection(LineCollection(np.stack([a[:shown], b[:shown]], axis=1), colors="0.7",
                                         linewidths=0.6, label=f"partners ({shown} pairs)"))
        ax.scatter(a[:, 0], a[:, 1], s=7, color="tab:blue", label="first sentence")
        ax.scatter(b[:, 0], b[:, 1], s=7, color="tab:orange", label="second sentence")
        ax.legend(fontsize=8, markerscale=2)
    else:
        classes = np.unique(labels)
        cmap = "tab10" if len(classes) <= 10 else "tab20"
        sc = ax.scatter(points[:, 0], points[:, 1], c=np.searchsorted(classes, labels), cmap=cmap, s=7,
                        vmin=0, vmax=max(len(classes) - 1, 1))
        if len(classes) <= 20:
            handles = sc.legend_elements(num=None)[0]
            ax.legend(handles, [str(c) for c in classes], title="class", fontsize=7, title_fontsize=8,
                      loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            ax.text(0.01, 0.01, f"colour: class ({len(classes)} classes, colours repeat)",
                    transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig

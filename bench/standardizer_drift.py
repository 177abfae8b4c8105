"""Does the monotone input standardisation go stale while the encoder fine-tunes? (issue 11, vision)

Usage: python bench/standardizer_drift.py RUN [RUN ...]

The standardisation's shift and scale are fitted once, on the starting encoder's train features. For each run
(with ``--head-standardize``) this applies them to the *fine-tuned* encoder's train features of its best
checkpoint and prints the per-feature means and standard deviations that result: near 0 and 1 means the
statistics still fit after fine-tuning.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monocon_edge.runs import embed_run, load_run  # noqa: E402


def main() -> None:
    """Print one line per run: mean and mean |.| of the per-feature means, and the per-feature stds' range."""
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for run in sys.argv[1:]:
        loaded = load_run(run)
        st = getattr(loaded.model.head, "standardizer", None)
        if st is None:
            print(f"{run}: no standardisation")
            continue
        z = (embed_run(loaded).features["train"] - st.shift.numpy()) * st.scale.numpy()
        means, stds = z.mean(0), z.std(0)
        print(f"{run}: per-feature mean {means.mean():.3f} (mean |.| {np.abs(means).mean():.3f}), "
              f"std mean {stds.mean():.3f} (min {stds.min():.3f}, max {stds.max():.3f})")


if __name__ == "__main__":
    main()

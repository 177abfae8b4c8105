"""Child process of the memory probe: load an artifact with the torch-free runtime, embed, report peak RSS.

Run as ``python -m monocon_edge.bench.probe ARTIFACT PRECISION THREADS BATCH REPEATS PROVIDERS``; prints one
JSON line. Imports only the runtime (numpy, onnxruntime, tokenizers), never torch: the peak is what a device
process that embeds with this artifact needs.
"""
from __future__ import annotations

import json
import resource
import sys


def peak_rss_kb() -> tuple[int, str]:
    """Return (this process' peak resident set size in KiB, where it was read)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]), "/proc/self/status VmHWM"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return (peak // 1024 if sys.platform == "darwin" else peak), "getrusage ru_maxrss"


def _inputs(model, batch: int):
    import numpy as np

    if model.modality == "vision":
        c, h, w = (int(v) for v in model.input_spec["shape"])
        return np.random.default_rng(0).integers(0, 256, (batch, h, w, c), dtype=np.uint8)
    words = "a person on a bicycle rides along the busy street past the old market near the river".split()
    return [" ".join(words[: 4 + i % (len(words) - 4)]) for i in range(batch)]


def main(argv: list[str]) -> int:
    """Probe once; print {peak_rss_kb, baseline_rss_kb, source, torch_imported, dims} as JSON; return the exit code."""
    folder, precision, threads, batch, repeats, providers = argv
    before, source = peak_rss_kb()
    try:
        from monocon_edge.device import runtime

        model = runtime.load(folder, precision, threads=int(threads) or None,
                             providers=providers.split(",") if providers else None)
        inputs = _inputs(model, int(batch))
        for _ in range(int(repeats)):
            out = model.embed(inputs, batch_size=int(batch))
    except Exception as exc:  # reported to the parent, which raises a clear error
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 2
    peak, source = peak_rss_kb()
    print(json.dumps({"peak_rss_kb": peak, "baseline_rss_kb": before, "source": source,
                      "torch_imported": "torch" in sys.modules, "dims": int(out.shape[1])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

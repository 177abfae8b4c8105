"""The reference point: the unfolded PyTorch model, eager, on the same inputs and threads as the artifact.

"Unfolded" means the trained MonoConModel as training runs it (the monotonic head squares its weights on
every call), then normalise and the PCA projection, as three separate torch steps.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

Feeds = dict[str, np.ndarray]


def eager_runner(loaded: Any, dims: int, device: str = "cpu") -> Callable[[Feeds], Any]:
    """Return a function running the unfolded model on model-ready feeds (same names/order as the graph)."""
    import torch
    from torch.nn import functional as F

    dev = torch.device(device)
    model = loaded.model.to(dev).eval()
    mean = torch.from_numpy(np.asarray(loaded.pca.mean, dtype=np.float32)).to(dev)
    comps = torch.from_numpy(np.ascontiguousarray(loaded.pca.components[:dims], dtype=np.float32)).to(dev)

    def run(feeds: Feeds) -> Any:
        with torch.inference_mode():
            inputs = [torch.from_numpy(v).to(dev) for v in feeds.values()]
            z = F.normalize(model(*inputs), dim=-1)
            out = F.normalize((z - mean) @ comps.T, dim=-1)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out

    return run

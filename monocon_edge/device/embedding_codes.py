"""int8 embedding codes: symmetric per-dimension scales calibrated on train embeddings. Torch-free.

A code is ``clip(round(x / scale), -127, 127)`` per dimension; ``scale_d = max |x_d|`` over the calibration
embeddings / 127, so no calibration value clips. The scales ship in the manifest, so that a vector embedded on a
device is quantized exactly as the index was.
"""
from __future__ import annotations

import numpy as np

CODE_MAX = 127
SCHEME = "int8 symmetric per-dimension, code = clip(round(x / scale), -127, 127), x ≈ code * scale"


def calibrate_scales(embeddings: np.ndarray) -> np.ndarray:
    """Return float32 per-dimension scales (D,) from calibration embeddings (N, D), N ≥ 1."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError("calibration needs a non-empty (N, D) array")
    peak = np.abs(x).max(axis=0)
    # A dimension that is always 0 still gets a usable scale (1/127 of the unit norm bound).
    return np.where(peak > 0, peak / CODE_MAX, 1.0 / CODE_MAX).astype(np.float32)


def encode(embeddings: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Return the int8 codes (N, D) of float embeddings (N, D) under ``scales`` (D,)."""
    x = np.asarray(embeddings, dtype=np.float32)
    return np.clip(np.rint(x / scales), -CODE_MAX, CODE_MAX).astype(np.int8)


def decode(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Return float32 approximations (N, D) of the embeddings behind int8 ``codes``."""
    return codes.astype(np.float32) * np.asarray(scales, dtype=np.float32)

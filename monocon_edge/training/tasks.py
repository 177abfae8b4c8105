"""A run's task, whichever the modality: ``build_task`` picks it (``vision_task`` / ``text_task``) and
``encode_eval_sets`` computes the encoder features it evaluates on.

A task owns its data and splits, yields training batches (raw inputs, or cached encoder features when the
encoder is frozen), computes the encoder features of its evaluation sets, and turns embeddings into metrics.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .config import RunConfig
from .text_task import TextTask
from .vision_task import VisionTask


def build_task(cfg: RunConfig, model) -> VisionTask | TextTask:
    """Return the task (data, splits, evaluation) for ``cfg``; text tasks tokenize with ``model``'s encoder."""
    if cfg.modality == "vision":
        return VisionTask(cfg)
    return TextTask(cfg, lambda texts: model.encoder.tokenize(texts, cfg.data.max_seq_len))


def encode_eval_sets(task: VisionTask | TextTask, encode_fn: Callable[..., np.ndarray],
                     encoder: torch.nn.Module, with_batch_rows: bool = False) -> dict[str, np.ndarray]:
    """Return the encoder features of ``task``'s evaluation sets computed with ``encode_fn``; with
    ``with_batch_rows``, also those of the rows only training batches use (a text task's hard negatives).

    Text features go through the feature cache, keyed by ``encoder``'s weights (a frozen MiniLM re-encodes the
    same sentences in every run, analysis and export otherwise).
    """
    if isinstance(task, TextTask):
        from .feature_cache import fingerprint

        return task.encode(encode_fn, encoder_fingerprint=fingerprint(encoder), with_batch_rows=with_batch_rows)
    return task.encode(encode_fn)

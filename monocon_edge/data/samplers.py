"""Batch orders: for contrastive training, and by length for encoding variable-length inputs."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Return the full batches of a seeded random permutation of range(n) (the last partial batch dropped)."""
    order = torch.randperm(n, generator=generator)
    return [order[s:s + batch_size] for s in range(0, n - batch_size + 1, batch_size)]


def m_per_class_batches(labels: torch.Tensor, batch_size: int, m: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Return full batches built from groups of ``m`` same-label examples (as pytorch-metric-learning's
    MPerClassSampler): every example with a positive in its batch, so SupCon has signal even when classes
    far outnumber the batch's room for them. Each example appears at most once per epoch.
    """
    if m < 2 or batch_size % m:
        raise ValueError("m must be >= 2 and divide the batch size")
    groups: list[torch.Tensor] = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        groups += [members[s:s + m] for s in range(0, len(members) - m + 1, m)]
    order = torch.randperm(len(groups), generator=generator).tolist()
    per_batch = batch_size // m
    return [torch.cat([groups[g] for g in order[s:s + per_batch]])
            for s in range(0, len(order) - per_batch + 1, per_batch)]


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Return the item indices sorted by length (stable), cut into batches of ``batch_size``: items of similar
    length share a batch, so padding (and time) stays small."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def in_length_order(lengths: Sequence[int], batch_size: int,
                    embed: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Return the rows ``embed(indices)`` computes on ``length_batches``, as float32 in the items' own order."""
    batches = length_batches(lengths, batch_size)
    chunks = [embed(idx) for idx in batches]
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    out = np.empty((len(lengths), chunks[0].shape[1]), dtype=np.float32)
    out[np.concatenate(batches)] = np.concatenate(chunks)
    return out

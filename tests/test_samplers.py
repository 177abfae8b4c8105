"""Batch orders: full batches, no repeats, m same-class examples per group."""
from __future__ import annotations

import pytest
import numpy as np
import torch

from monocon_edge.data.samplers import m_per_class_batches, random_batches


def test_random_batches_are_a_seeded_permutation() -> None:
    a = random_batches(10, 3, torch.Generator().manual_seed(1))
    b = random_batches(10, 3, torch.Generator().manual_seed(1))
    assert [len(x) for x in a] == [3, 3, 3]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(set(torch.cat(a).tolist())) == 9


def test_m_per_class_groups() -> None:
    labels = torch.tensor([0] * 7 + [1] * 4 + [2] * 9 + [3] * 2)
    batches = m_per_class_batches(labels, batch_size=4, m=2, generator=torch.Generator().manual_seed(0))
    # 3 + 2 + 4 + 1 = 10 groups of 2 -> 5 batches of 4
    assert len(batches) == 5
    seen = torch.cat(batches).tolist()
    assert len(seen) == len(set(seen)) == 20
    for batch in batches:
        for group in batch.view(-1, 2):
            assert labels[group[0]] == labels[group[1]]
    with pytest.raises(ValueError):
        m_per_class_batches(labels, 5, 2, torch.Generator())


def test_length_batches_group_by_length_and_in_length_order_restores_the_items_order() -> None:
    from monocon_edge.data.samplers import in_length_order, length_batches

    lengths = [5, 1, 4, 1, 9, 2]
    batches = length_batches(lengths, 4)
    assert [b.tolist() for b in batches] == [[1, 3, 5, 2], [0, 4]]
    seen: list[list[int]] = []

    def embed(idx):
        seen.append(idx.tolist())
        return np.array([[lengths[i], i] for i in idx], dtype=np.float64)

    out = in_length_order(lengths, 4, embed)
    assert out.dtype == np.float32 and seen == [[1, 3, 5, 2], [0, 4]]
    assert out.tolist() == [[lengths[i], i] for i in range(len(lengths))]

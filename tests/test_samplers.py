"""Batch orders: full batches, no repeats, m same-class examples per group."""
from __future__ import annotations

import pytest
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

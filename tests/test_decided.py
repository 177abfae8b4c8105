"""The int8 Recall@1 gates compare only the queries that fp32 itself decides beyond its precision (1e-5)."""
from __future__ import annotations

import numpy as np

from monocon_edge.exporting.decided import decided_queries, fp32_margins
from monocon_edge.exporting.gates import Retrieval, compare_figures


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_margins_by_hand() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    g = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    margins = fp32_margins(q, g, np.array([0, 1]), np.array([0, 1, 1]))
    np.testing.assert_allclose(margins, [1.0 - 0.6, 1.0 - 0.0])
    assert decided_queries(q, g, np.array([0, 1]), np.array([0, 1, 1])).all()


def test_flips_below_fp32_precision_are_not_counted_real_losses_are() -> None:
    gallery = _unit(np.array([[1.0, 0.0], [0.0, 1.0]]))
    labels_g = np.array([0, 1])
    # Query 0 sits exactly between the classes (margin ~1e-7: undecided); query 1 is clearly class 1.
    query = _unit(np.array([[1.0, 1.0 - 2e-7], [0.1, 1.0]]))
    labels_q = np.array([0, 1])
    r = Retrieval([], [], labels_q, labels_g, "test")
    flipped = query.copy()
    flipped[0] = _unit(np.array([[1.0 - 1e-3, 1.0]]))[0]  # rounding moves the undecided query to class 1
    fig = compare_figures((query, gallery), (flipped, gallery), r)
    assert fig["undecided_queries"] == 1 and fig["queries"] == 1 and fig["recall_drop_points"] == 0.0
    lost = query.copy()
    lost[1] = _unit(np.array([[1.0, 0.1]]))[0]  # a decided query moved to the wrong class: counted
    fig = compare_figures((query, gallery), (lost, gallery), r)
    assert fig["recall_drop_points"] == 100.0

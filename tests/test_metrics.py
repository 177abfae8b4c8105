"""Metrics on hand-made inputs whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from monocon_edge import metrics as M


def test_effective_dim_counts_components_to_99_percent() -> None:
    assert M.effective_dim(np.array([0.5, 0.3, 0.15, 0.04, 0.01])) == 4
    assert M.effective_dim(np.array([0.995, 0.005])) == 1
    assert M.effective_dim(np.array([0.25, 0.25, 0.25, 0.25])) == 4


def test_d_eff_of_points_on_a_circle_in_a_plane_is_two() -> None:
    angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    x = np.zeros((200, 10))
    x[:, 3], x[:, 7] = np.cos(angles), np.sin(angles)
    pca = M.fit_pca(x)
    assert M.effective_dim(pca.explained_variance_ratio) == 2
    # Two components rebuild a planar set exactly; one does not.
    assert M.pca_reconstruction_rmse(x, pca, 2) < 1e-6
    # One axis of the plane keeps one coordinate; the other, whose mean square over equally spaced angles is
    # exactly 1/2, is lost: over 10 coordinates per point the RMS error is sqrt(0.5 / 10).
    assert M.pca_reconstruction_rmse(x, pca, 1) == pytest.approx(np.sqrt(0.5 / 10), abs=1e-6)


def test_pca_is_fitted_on_normalised_vectors() -> None:
    x = np.array([[3.0, 0.0], [0.0, 5.0], [4.0, 0.0], [0.0, 0.5]])
    pca = M.fit_pca(x)
    assert np.allclose(pca.mean, [0.5, 0.5])


def test_pca_project_renormalises() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)) * np.array([5, 4, 3, 2, 1, 0.5, 0.2, 0.1])  # distinct variances: unique axes
    pca = M.fit_pca(x)
    z = M.pca_project(x, pca, 3)
    assert z.shape == (50, 3)
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    # The same projection computed here: SVD of the centred unit vectors, first 3 right singular vectors.
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = unit - unit.mean(axis=0)
    vt = np.linalg.svd(centred, full_matrices=False)[2][:3]
    raw = centred @ vt.T
    signs = np.sign(np.sum(raw * M.pca_project(x, pca, 3, renormalize=False), axis=0))  # an axis' sign is free
    np.testing.assert_allclose(M.pca_project(x, pca, 3, renormalize=False), raw * signs, atol=1e-5)
    np.testing.assert_allclose(z, raw * signs / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(pca.mean, unit.mean(axis=0), atol=1e-6)
    with pytest.raises(ValueError):
        M.pca_project(x, pca, 0)


def test_knn_accuracy_and_recall_on_hand_made_points() -> None:
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32)
    g_labels = np.array([0, 0, 1, 1, 2])
    query = np.array([[1, 0.05], [0.05, 1], [-1, 0.2]], dtype=np.float32)
    q_labels = np.array([0, 1, 0])  # the last query is nearest to a label-2 point
    assert M.knn_accuracy(query, q_labels, gallery, g_labels, k=1) == pytest.approx(2 / 3)
    rec = M.recall_at_k(query, q_labels, gallery, g_labels, ks=(1, 3, 5))
    # The 3 nearest of (-1, 0.2) are labels 2, 1, 1: its label-0 points are only reached at k = 5.
    assert rec[1] == pytest.approx(2 / 3)
    assert rec[3] == pytest.approx(2 / 3)
    assert rec[5] == pytest.approx(1.0)


def test_knn_majority_vote() -> None:
    gallery = np.array([[1, 0], [0.99, 0.14], [0.98, 0.2], [0.97, -0.24], [0.0, 1.0]], dtype=np.float32)
    g_labels = np.array([1, 0, 0, 0, 2])
    # Nearest is label 1, but 3 of the 5 nearest are label 0.
    assert M.knn_accuracy(np.array([[1.0, 0.0]]), np.array([0]), gallery, g_labels, k=5) == 1.0
    assert M.knn_accuracy(np.array([[1.0, 0.0]]), np.array([1]), gallery, g_labels, k=1) == 1.0


def test_pair_recall() -> None:
    a = np.eye(4, dtype=np.float32)
    b = np.eye(4, dtype=np.float32)[[0, 1, 3, 2]]
    rec = M.pair_recall_at_k(a, b, ks=(1, 2))
    assert rec[1] == pytest.approx(0.5)


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=40).astype(float)
    y = x + rng.normal(size=40)
    assert M.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert M.spearman(np.arange(5.0), -np.arange(5.0)) == pytest.approx(-1.0)


def test_cosine_scores() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0]])
    assert np.allclose(M.cosine_scores(a, b), [1.0, -1.0])

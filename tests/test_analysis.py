"""`monocon-edge analyze` on tiny runs (baseline, MonoCon, std-MLP, Matryoshka), and its pure pieces."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import tree_state

from monocon_edge import metrics as M
from monocon_edge.analysis import analyze
from monocon_edge.analysis.compute import RECALL_KS, cluster_features, deff_history, feature_correlation, truncate
from monocon_edge.cli import app
from monocon_edge.analysis.plots import MAX_PNG_BYTES
from monocon_edge.training.run_dir import RunDir

runner = CliRunner()


@pytest.fixture(scope="module")
def analysis(tiny_runs, tmp_path_factory):
    """Return (AnalysisResult, analysis.json) of the four tiny runs, with t-SNE."""
    out = tmp_path_factory.mktemp("analysis")
    runs = [tiny_runs[k] for k in tiny_runs.KINDS]
    before = [tree_state(r) for r in runs]
    result = analyze(runs, out, tsne=True)
    assert [tree_state(r) for r in runs] == before, "analyze modified a run directory"
    return result, json.loads((out / "analysis.json").read_text())


def test_writes_every_file(analysis) -> None:
    result, data = analysis
    out = result.out_dir
    expected = {"analysis.json", "analysis.md", "index.html", "deff-training.png", "recall-at-k.png"}
    for run in data["runs"]:
        expected |= {f"clustermap-{run['slug']}.png", f"tsne-{run['slug']}.png"}
    assert {p.name for p in out.iterdir()} == expected
    assert {p.name for p in result.files} == expected
    index = (out / "index.html").read_text()
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size <= MAX_PNG_BYTES, png.name
        assert f"src='{png.name}'" in index
    markdown = (out / "analysis.md").read_text()
    for title in ("Compression", "Retrieval, full and truncated", "Recall@k"):
        assert title in markdown and title in index


def test_runs_side_by_side_with_their_truncation(analysis, tiny_runs) -> None:
    _, data = analysis
    runs = {r["name"]: r for r in data["runs"]}
    assert {r["method"] for r in runs.values()} == {"baseline", "MonoCon", "std-MLP", "Matryoshka"}
    assert runs["matryoshka"]["truncation"] == "prefix"
    assert {runs[k]["truncation"] for k in ("none", "monotonic", "mlp")} == {"pca"}
    for name, run in runs.items():
        final = RunDir(tiny_runs[name]).read_summary()["final"]
        # d_enc = 32: the table holds the full embedding and the 16-dim truncation, with the run's method.
        assert list(run["retrieval"]) == ["full", "16"]
        assert run["retrieval"]["full"]["recall@1"] == pytest.approx(final["recall@1"], abs=1e-9)
        assert run["retrieval"]["16"]["recall@1"] == pytest.approx(final[f"recall@1_{run['truncation']}16"],
                                                                   abs=1e-9)
        assert run["d_eff"] == final["d_eff"] and run["summary_max_abs_diff"] < 1e-6
        assert set(run["retrieval"]["full"]) == {"knn5", "recall@1", "recall@5"}


def test_recall_at_k_is_non_decreasing_and_matches_the_table(analysis) -> None:
    _, data = analysis
    for run in data["runs"]:
        curve = [run["recall_at_k"][str(k)] for k in RECALL_KS]
        assert all(0.0 <= v <= 1.0 for v in curve)
        assert all(a <= b for a, b in zip(curve, curve[1:])), curve
        assert curve[0] == run["retrieval"]["full"]["recall@1"] and curve[4] == run["retrieval"]["full"]["recall@5"]


def test_clustermap_order_is_a_permutation(analysis) -> None:
    _, data = analysis
    for run in data["runs"]:
        assert sorted(run["clustermap_order"]) == list(range(run["d_enc"]))


def test_deff_history_is_the_logged_one(analysis, tiny_runs) -> None:
    _, data = analysis
    for run in data["runs"]:
        rows = RunDir(tiny_runs[run["name"]]).metrics()
        hist = run["deff_history"]
        assert hist["epoch"] == [r["epoch"] for r in rows]
        for key in ("d_eff", "d_eff_encoder", "d_eff_head_raw"):
            assert hist[key] == [r[key] for r in rows]


def test_cluster_features_groups_correlated_features() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 1)), rng.normal(size=(200, 1))
    # Features 0, 2, 4 follow a; 1, 3, 5 follow b; 6 is constant.
    x = np.hstack([a, b, 2 * a, b + 0.01 * rng.normal(size=(200, 1)), a - 1, -0.5 * b * -1, np.ones((200, 1))])
    c = cluster_features(x)
    assert sorted(c.order.tolist()) == list(range(7))
    assert np.isfinite(c.corr).all() and np.allclose(np.diag(c.corr), 1.0)
    pos = {f: i for i, f in enumerate(c.order.tolist())}
    for group in ({0, 2, 4}, {1, 3, 5}):
        spots = sorted(pos[f] for f in group)
        assert spots[-1] - spots[0] == 2, c.order  # each group is contiguous in the leaf order
    assert np.allclose(c.ordered(), c.corr[np.ix_(c.order, c.order)])


def test_feature_correlation_matches_numpy() -> None:
    x = np.random.default_rng(1).normal(size=(50, 4))
    assert np.allclose(feature_correlation(x), np.corrcoef(x.T))


def test_truncate_prefix_and_pca() -> None:
    rng = np.random.default_rng(2)
    emb = {"train": rng.normal(size=(30, 8)), "val": rng.normal(size=(5, 8))}
    pre = truncate(emb, "prefix", 3)
    assert np.allclose(pre["val"], M.l2_normalize(emb["val"][:, :3]))
    pca = M.fit_pca(emb["train"])
    assert np.allclose(truncate(emb, "pca", 3, pca)["val"], M.pca_project(emb["val"], pca, 3))
    with pytest.raises(ValueError):
        truncate(emb, "random", 3)


def test_recall_at_k_is_monotone_in_k_on_random_data() -> None:
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(40, 6)), rng.normal(size=(80, 6))
    rec = M.recall_at_k(q, rng.integers(0, 5, 40), g, rng.integers(0, 5, 80), ks=RECALL_KS)
    assert all(rec[k] <= rec[k + 1] for k in RECALL_KS[:-1])


def test_deff_history_tolerates_missing_keys() -> None:
    hist = deff_history([{"epoch": 0, "d_eff": 3}, {"epoch": 2, "d_eff": 2, "d_eff_encoder": 5}])
    assert hist == {"epoch": [0, 2], "d_eff_encoder": [None, 5], "d_eff_head_raw": [None, None], "d_eff": [3, 2]}


# ----- the command ---------------------------------------------------------------------------------------

def _fails_cleanly(args: list[str], expected: str) -> None:
    result = runner.invoke(app, ["analyze", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and expected in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_prints_tables_and_replaces_an_earlier_analysis(tiny_runs, tmp_path) -> None:
    out = tmp_path / "a"
    out.mkdir()
    # An earlier analysis of other runs: its figures go, anything else stays.
    (out / "analysis.json").write_text(json.dumps({"figures": [{"file": "clustermap-01-old.png"}]}))
    (out / "clustermap-01-old.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["analyze", str(tiny_runs["monotonic"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Compression" in result.output and "MonoCon" in result.output and "index.html" in result.output
    assert (out / "index.html").is_file() and (out / "notes.txt").is_file()
    assert not (out / "clustermap-01-old.png").exists()


def test_cli_bad_input(tiny_runs, tmp_path) -> None:
    (tmp_path / "plain").mkdir()
    _fails_cleanly([str(tmp_path / "plain")], "not a monocon-edge run directory")
    _fails_cleanly([str(tmp_path / "nowhere")], "run directory not found")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(tiny_runs["none"] / "config.json", unfinished)
    _fails_cleanly([str(unfinished)], "did not finish")
    text = tmp_path / "text"
    shutil.copytree(tiny_runs["none"], text)
    cfg = json.loads((text / "config.json").read_text())
    (text / "config.json").write_text(json.dumps({**cfg, "modality": "text"}))
    _fails_cleanly([str(tiny_runs["none"]), str(text)], "cannot compare vision and text runs")
    _fails_cleanly([str(tiny_runs["none"]), str(tiny_runs["none"])], "given twice")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _fails_cleanly([str(tiny_runs["none"]), "--out", str(busy)], "not empty")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


# ----- the analysis against numbers computed here, independently of the code that wrote summary.json ---------
def _hand_recall(q, q_labels, g, g_labels, k, eps=3e-7):
    """Return (lowest, highest) fraction of queries with a same-label gallery item among their k nearest (cosine,
    float64) over every order of near-ties: the collapsed tiny monotonic run has top-1/top-2 gaps of 1e-9, where
    float32 rounding decides (``eps`` is above float32 error). Where no tie is that close to the k-th nearest,
    lowest == highest."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    sims = q @ g.T
    kth = -np.sort(-sims, axis=1)[:, k - 1:k]
    match = g_labels[None, :] == q_labels[:, None]
    sure = (match & (sims > kth + eps)).any(axis=1)  # in the top k in any order of the near-ties
    possible = (match & (sims >= kth - eps)).any(axis=1)
    # Near-ties at the k-th place with the same label as the query and every slot above taken: counted as sure
    # only when every tied candidate matches.
    tied = np.abs(sims - kth) <= eps
    all_tied_match = ~(tied & ~match).any(axis=1) & tied.any(axis=1)
    return float(np.mean(sure | all_tied_match)), float(np.mean(possible))


def test_numbers_equal_an_independent_computation(analysis, tiny_runs) -> None:
    import torch

    from monocon_edge.data.vision import to_float_batch
    from monocon_edge.models.monocon import build_model
    from monocon_edge.training.vision_task import VisionTask

    _, data = analysis
    exact = 0
    for run in data["runs"]:
        run_dir = tiny_runs[run["name"]]
        cfg = RunDir(run_dir).read_config()
        model = build_model(cfg)
        model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True)["model"])
        model.eval()
        task_data = VisionTask(cfg).data  # the run's 400 digits (data loading is not what is checked here)
        images, labels = task_data.images, task_data.labels
        with np.load(run_dir / "splits.npz") as s:
            train, gallery, query = s["train"], s["gallery"], s["query"]
        with torch.no_grad():
            emb = model(to_float_batch(images)).double().numpy()
        ql, gl = labels[query], labels[gallery]
        for k in (1, 5):
            lo, hi = _hand_recall(emb[query], ql, emb[gallery], gl, k)
            assert lo <= run["retrieval"]["full"][f"recall@{k}"] <= hi, (run["name"], k, lo, hi)
            exact += lo == hi
        # d_eff: components of the normalised train embeddings' covariance up to 99 % of the variance.
        unit = emb[train] / np.linalg.norm(emb[train], axis=1, keepdims=True)
        mean = unit.mean(axis=0)
        _, sv, vt = np.linalg.svd(unit - mean, full_matrices=False)
        ratio = np.cumsum(sv ** 2) / np.sum(sv ** 2)
        assert run["d_eff"] == int(np.searchsorted(ratio, 0.99 - 1e-12) + 1), run["name"]
        # The 16-dim truncation, each run's own: PCA of the normalised train embeddings, or the first 16 coords
        # (a PCA axis' sign does not change cosines).
        if run["truncation"] == "pca":
            def cut(e):
                return (e / np.linalg.norm(e, axis=1, keepdims=True) - mean) @ vt[:16].T
        else:
            def cut(e):
                return e[:, :16]
        lo, hi = _hand_recall(cut(emb[query]), ql, cut(emb[gallery]), gl, 1)
        assert lo <= run["retrieval"]["16"]["recall@1"] <= hi, (run["name"], lo, hi)
    assert exact >= 3  # most figures are pinned to one value (not the collapsed monotonic run's)

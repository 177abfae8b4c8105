"""The server-side FAISS index: same results and errors as the numpy device index, the artifact's int8 codes."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from monocon_edge.device import embedding_codes as codes, runtime
from monocon_edge.device.errors import MonoconError, RuntimeInputError
from monocon_edge.serving.faiss_index import FaissIndex, sq_ranges

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("float32", "int8")


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def digits_embeddings(digits_artifact):
    """(embedder, gallery embeddings, query embeddings) of the tiny digits artifact (real model outputs)."""
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    model = runtime.load(digits_artifact)
    emb = model.embed(images[:600])
    return model, emb[:500], emb[500:]


@pytest.mark.parametrize("kind", KINDS)
def test_flat_returns_what_the_numpy_index_returns(digits_embeddings, kind) -> None:
    model, gallery, queries = digits_embeddings
    names = [f"img{i}" for i in range(len(gallery))]
    ref = runtime.Index.for_model(model, codes=kind)
    ref.add(gallery, ids=names)
    ours = FaissIndex.for_model(model, codes=kind)
    ours.add(gallery, ids=names)
    ref_ids, ref_scores = ref.search(queries, top_k=7)
    ids, scores = ours.search(queries, top_k=7)
    assert ids == ref_ids
    np.testing.assert_allclose(scores, ref_scores, atol=2e-6)
    assert scores.dtype == np.float32 and len(ours) == len(ref) and ours.nbytes == ref.nbytes


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_stored_int8_codes_are_the_artifacts_codes(digits_embeddings, digits_artifact, index) -> None:
    model, gallery, _ = digits_embeddings
    params = {"nlist": 8, "nprobe": 8} if index == "ivf" else None
    ours = FaissIndex.build(digits_artifact, gallery, codes="int8", index=index, params=params)
    device = codes.encode(gallery, model.code_scales)  # what a device stores (manifest scales)
    np.testing.assert_array_equal(ours.stored_codes(), device)
    ref = runtime.Index.for_model(model, codes="int8")
    ref.add(gallery)
    np.testing.assert_array_equal(ours.stored_codes(), ref._data)


def test_every_code_value_and_clipping_survive_faiss() -> None:
    scales = np.array([0.01, 0.003, 0.5, 1e-4], dtype=np.float32)
    steps = np.arange(-140, 141, dtype=np.float32)  # every code, plus values beyond the calibrated range
    x = np.stack([steps * s for s in scales], axis=1)
    x = np.concatenate([x, x + 0.49 * scales, x - 0.49 * scales, x + 0.5001 * scales])
    ours = FaissIndex(4, "int8", scales)
    ours.add(x)
    np.testing.assert_array_equal(ours.stored_codes(), codes.encode(x, scales))
    trained = np.asarray(sq_ranges(scales))
    np.testing.assert_allclose(trained[:4], -127.5 * scales) and np.testing.assert_allclose(trained[4:], 255 * scales)


def test_int8_scores_are_cosines_of_normalised_decoded_codes() -> None:
    # Coarse codes: decoded norms spread widely, so ranking by FAISS's raw inner product would pick other vectors.
    scales = np.full(3, 0.08, dtype=np.float32)
    gallery, queries = _unit(3000, 3, 1), _unit(40, 3, 2)
    ref = runtime.Index(3, "int8", scales)
    ref.add(gallery)
    ours = FaissIndex(3, "int8", scales)
    ours.add(gallery)
    _, ref_scores = ref.search(queries, top_k=10)
    _, scores = ours.search(queries, top_k=10)
    np.testing.assert_allclose(scores, ref_scores, atol=2e-6)


@pytest.mark.parametrize("index,params", [("hnsw", {"M": 8, "ef_search": 200}), ("ivf", {"nlist": 16, "nprobe": 16})])
@pytest.mark.parametrize("kind", KINDS)
def test_sublinear_indexes_find_the_exact_neighbours_when_searched_wide(kind, index, params) -> None:
    gallery, queries = _unit(2000, 8, 3), _unit(30, 8, 4)
    scales = codes.calibrate_scales(gallery) if kind == "int8" else None
    exact = FaissIndex(8, kind, scales)
    exact.add(gallery)
    approx = FaissIndex(8, kind, scales, index=index, params=params)
    approx.add(gallery)
    want, _ = exact.search(queries, top_k=10)
    got, _ = approx.search(queries, top_k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got)])
    assert recall >= 0.97
    assert approx.params == dict(approx.params, **params)
    assert approx.structure_bytes > approx.nbytes


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(tmp_path, kind, index) -> None:
    gallery, queries = _unit(600, 8, 5), _unit(9, 8, 6)
    scales = codes.calibrate_scales(gallery) if kind == "int8" else None
    params = {"nlist": 8, "nprobe": 3} if index == "ivf" else None
    ours = FaissIndex(8, kind, scales, fingerprint="abc", index=index, params=params)
    ours.add(gallery[:300], ids=[f"a{i}" for i in range(300)])
    ours.add(gallery[300:])  # running numbers continue after explicit ids
    path = tmp_path / "index.npz"
    ours.save(path)
    back = FaissIndex.load(path)
    assert (back.kind, back.dims, back.index_type, back.params, back.fingerprint, len(back)) == \
        (kind, 8, index, ours.params, "abc", 600)
    assert back.ids == ours.ids and back.ids[299] == "a299" and back.ids[300] == "300"
    assert back.search(queries, top_k=5)[0] == ours.search(queries, top_k=5)[0]
    np.testing.assert_array_equal(back.search(queries, 5)[1], ours.search(queries, 5)[1])
    if kind == "int8":
        np.testing.assert_array_equal(back.stored_codes(), codes.encode(gallery, scales))
        np.testing.assert_array_equal(back.scales, scales)


def test_bad_input_raises_the_numpy_indexs_errors(tmp_path) -> None:
    ours, ref = FaissIndex(4), runtime.Index(4)
    for index in (ours, ref):
        with pytest.raises(RuntimeInputError, match="empty"):
            index.search(_unit(1, 4), top_k=1)
    good = _unit(20, 4)
    for bad, match in [(good[:, :3], r"\(N, 4\)"), (good[0], r"\(N, 4\)"), (good[:0], "empty"),
                       (np.full((2, 4), np.nan, np.float32), "finite"), ([[1, 2, 3, 4]], r"\(N, 4\)")]:
        for index in (ours, ref):
            with pytest.raises(RuntimeInputError, match=match):
                index.add(bad)
    ours.add(good)
    with pytest.raises(RuntimeInputError, match="ids"):
        ours.add(good, ids=["x"])
    for k in (0, -1, 1.5, "3", True):
        with pytest.raises(RuntimeInputError, match="top_k"):
            ours.search(good[:1], top_k=k)
    with pytest.raises(RuntimeInputError, match="finite"):
        ours.search(np.full((1, 4), np.inf, np.float32))
    assert ours.search(good[:2], top_k=50)[1].shape == (2, 20)  # k is capped at the index size, as in numpy


def test_bad_construction_and_files_are_clear(tmp_path) -> None:
    with pytest.raises(RuntimeInputError, match="float32 or int8"):
        FaissIndex(4, "int4")
    with pytest.raises(RuntimeInputError, match="scales"):
        FaissIndex(4, "int8")
    with pytest.raises(RuntimeInputError, match="> 0"):
        FaissIndex(2, "int8", np.array([0.1, 0.0], np.float32))
    with pytest.raises(RuntimeInputError, match="flat, hnsw, ivf"):
        FaissIndex(4, index="lsh")
    with pytest.raises(RuntimeInputError, match="unknown hnsw parameter"):
        FaissIndex(4, index="hnsw", params={"nprobe": 3})
    with pytest.raises(RuntimeInputError, match="M must be an integer >= 1"):
        FaissIndex(4, index="hnsw", params={"M": 0})
    with pytest.raises(RuntimeInputError, match="needs at least 64 vectors"):
        FaissIndex(4, index="ivf", params={"nlist": 64}).add(_unit(10, 4))
    with pytest.raises(RuntimeInputError, match="no search parameter"):
        FaissIndex(4, index="ivf").set_search_params(ef_search=3)
    with pytest.raises(RuntimeInputError, match="exact must be an integer >= 0"):
        FaissIndex(4).set_search_params(exact=-1)
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    with pytest.raises(RuntimeInputError, match="cannot read FAISS index"):
        FaissIndex.load(tmp_path / "junk.npz")
    numpy_index = runtime.Index(4)
    numpy_index.add(_unit(3, 4))
    numpy_index.save(tmp_path / "numpy.npz")
    with pytest.raises(RuntimeInputError, match="cannot read FAISS index"):
        FaissIndex.load(tmp_path / "numpy.npz")
    with pytest.raises(RuntimeInputError, match="float32 vectors, not int8"):
        FaissIndex(4).stored_codes()


def test_device_runtime_never_needs_faiss(digits_artifact, tmp_path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _NoFaiss:
            def find_spec(self, name, path=None, target=None):
                if name == "faiss" or name.startswith("faiss."):
                    raise ImportError("faiss is blocked in this test")
        sys.meta_path.insert(0, _NoFaiss())
    """))
    script = textwrap.dedent(f"""
        import numpy as np
        from monocon_edge.device import runtime
        model = runtime.load({str(digits_artifact)!r})
        index = runtime.Index.for_model(model, codes="int8")
        index.add(np.eye(model.dims, dtype=np.float32))
        assert index.search(np.eye(model.dims, dtype=np.float32)[:1], 1)[0] == [["0"]]
        from monocon_edge.serving.faiss_index import FaissIndex
        try:
            FaissIndex(4)
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "MonoconError" in done.stdout and "pip install 'monocon-edge[server]'" in done.stdout
    assert isinstance(MonoconError("x"), Exception)

"""Tiny configs for fast tests."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from monocon_edge.training.config import RunConfig, override, preset


def tiny_digits(head: str = "monotonic", **optim) -> RunConfig:
    """Return the embedded default shrunk to a few seconds: 400 digits, width-4 CNN, 3 epochs."""
    cfg = preset("default", head)
    cfg = override(cfg, "data", max_train=400)
    cfg = override(cfg, "model", width=4)
    return override(cfg, "optim", **{"epochs": 3, "warmup_epochs": 1, "batch_size": 64, **optim})


def tiny_text_graph(path: Path, vocab: int = 8192, hidden: int = 32) -> Path:
    """Write the fp32 ONNX graph of a 2-layer BERT + monotonic-style head + PCA tail (8 dims) at ``path``; return
    it."""
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    from monocon_edge.exporting.fold import FoldedHead, FoldedTail, FoldedTextModel
    from monocon_edge.exporting.onnx_export import example_inputs, export_onnx

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    rng = np.random.default_rng(0)
    head = FoldedHead([torch.rand(hidden, hidden) * 0.1], [torch.zeros(hidden)], 0.01)
    components = np.linalg.qr(rng.standard_normal((hidden, 8)))[0].T.astype(np.float32)
    tail = FoldedTail(head, components, rng.standard_normal(hidden).astype(np.float32) * 0.01)
    export_onnx(FoldedTextModel(bert, tail).eval(), "text", example_inputs("text"), path, {})
    return path


def graph_copy(src: Path, folder: Path) -> tuple[Path, str]:
    """Copy the graph ``src`` to ``folder``/model.onnx; return (the copy, its sha256) — to tell later whether a
    measured rewrite replaced it."""
    import shutil

    from monocon_edge.device.artifact import sha256_file

    dst = folder / "model.onnx"
    shutil.copyfile(src, dst)
    return dst, sha256_file(dst)


def token_batches(seed: int, n: int, batch: int, length: int, vocab: int) -> list[dict]:
    """Return ``n`` text feeds of random token ids in [1000, vocab) (101 first); the first half of each batch's rows
    padded from the middle on (mask 0, id 0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(1000, vocab, (batch, length)).astype(np.int64)
        ids[:, 0] = 101
        mask = np.ones_like(ids)
        mask[: batch // 2, length // 2:] = 0
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


def with_name(cfg: RunConfig, name: str) -> RunConfig:
    """Return ``cfg`` renamed."""
    return dataclasses.replace(cfg, name=name)


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Return {relative path: (size, mtime_ns)} of every file and folder under ``folder`` (to prove it untouched)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def bench_script(name: str) -> ModuleType:
    """Return the module of ``bench/<name>.py`` (a script, not a package), loaded afresh."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

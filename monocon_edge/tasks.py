"""Tasks: what a modality trains on and how it is evaluated.

A task owns its data and splits, yields training batches (raw inputs, or cached encoder features when the
encoder is frozen), computes the encoder features of its evaluation sets, and turns embeddings into metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from . import metrics as M
from .config import RunConfig
from .data.splits import Splits, make_splits, stratified_subset
from .distributed import shard_indices
from .errors import MonoconError
from .losses import pair_labels

PCA_DIMS = (128, 64, 16)


@dataclass
class Batch:
    """One training step's inputs (tensors for the encoder, or one feature tensor) and SupCon labels."""

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    size: int  # examples (images or sentences) in the batch
    # True when labels only identify examples within this batch (text pairs: 0..B-1), so batches gathered
    # from other processes need their labels offset; False for class labels, which mean the same everywhere.
    batch_local_labels: bool = False


def _feature_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     generator: torch.Generator, rank: int, world_size: int) -> Iterator[Batch]:
    order = torch.randperm(features.shape[0], generator=generator)
    for idx in shard_indices(order, batch_size, rank, world_size):
        yield Batch((features[idx],), labels[idx], len(idx))


def _pca_metrics(train: np.ndarray, held: np.ndarray) -> tuple[M.PCAStats, dict[str, float]]:
    """Return the PCA of normalised ``train`` and {d_eff, recon_rmse of ``held`` at d_eff}."""
    pca = M.fit_pca(train)
    d_eff = M.effective_dim(pca.explained_variance_ratio)
    return pca, {"d_eff": d_eff, "recon_rmse": M.pca_reconstruction_rmse(held, pca, max(d_eff, 1))}


def _d_eff(x: np.ndarray, normalize: bool = True) -> int:
    """Return d_eff of ``x`` (normalised first unless ``normalize`` is False)."""
    if normalize:
        return M.effective_dim(M.fit_pca(x).explained_variance_ratio)
    centered = x - x.mean(axis=0)
    s = np.linalg.svd(centered.astype(np.float64), compute_uv=False)
    return M.effective_dim(s ** 2)


class VisionTask:
    """Image classification data used for SupCon training and kNN / Recall@k evaluation."""

    validation_metric = "val_knn5"

    def __init__(self, cfg: RunConfig) -> None:
        from .data.vision import load_image_set

        self.cfg = cfg
        data = load_image_set(cfg.data)
        if cfg.data.max_train is not None:
            keep = stratified_subset(data.labels, cfg.data.max_train, cfg.optim.seed)
            data = type(data)(data.images[keep], data.labels[keep], data.class_names, data.source)
        if data.channels != cfg.model.in_channels:
            raise MonoconError(
                f"the data has {data.channels} channel(s) but the encoder expects {cfg.model.in_channels}"
            )
        self.data = data
        self.splits: Splits = make_splits(data.labels, len(data.labels), cfg.data.val_fraction,
                                          cfg.data.query_fraction, cfg.optim.seed)
        self.train_labels = torch.from_numpy(data.labels[self.splits.train])

    @property
    def num_train(self) -> int:
        """Return the number of training examples."""
        return len(self.splits.train)

    def input_spec(self) -> dict:
        """Return the model input description (shape without batch, value range, channel order)."""
        h, w, c = self.data.images.shape[1:]
        return {"kind": "image", "shape": [c, h, w], "dtype": "float32", "range": [0.0, 1.0],
                "channels": "RGB" if c == 3 else "grey", "layout": "NCHW"}

    def train_batches(self, epoch_seed: int, batch_size: int, features: torch.Tensor | None,
                      num_workers: int = 0, pin_memory: bool = False, rank: int = 0,
                      world_size: int = 1) -> Iterator[Batch]:
        """Yield this rank's shuffled training batches for one epoch (augmented images, or cached features).

        All ranks draw the same permutation from ``epoch_seed``; each takes its slice of every global batch
        of ``batch_size * world_size`` examples (see ``shard_indices``).
        """
        generator = torch.Generator().manual_seed(epoch_seed)
        if features is not None:
            yield from _feature_batches(features, self.train_labels, batch_size, generator, rank, world_size)
            return
        from .data.vision import AugmentedImages, build_train_transform

        idx = self.splits.train
        size = self.data.images.shape[1]
        dataset = AugmentedImages(self.data.images[idx], self.data.labels[idx],
                                  build_train_transform(self.cfg.data.augment, size))
        order = torch.randperm(len(idx), generator=generator)
        batches = [b.tolist() for b in shard_indices(order, batch_size, rank, world_size)]
        # The loader's generator only seeds worker processes (their augmentation RNG): different per rank.
        worker_seed = torch.Generator().manual_seed(epoch_seed + 1_000_003 * rank)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, generator=worker_seed,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
        )
        for images, labels in loader:
            yield Batch((images,), labels, images.shape[0])

    def encode(self, encode_fn: Callable[..., torch.Tensor], batch_size: int = 512) -> dict[str, np.ndarray]:
        """Return encoder features (un-augmented) of the train and val images: {"train", "val"}."""
        from .data.vision import to_float_batch

        out = {}
        for name, idx in (("train", self.splits.train), ("val", self.splits.val)):
            chunks = [encode_fn(to_float_batch(self.data.images[idx[s:s + batch_size]]))
                      for s in range(0, len(idx), batch_size)]
            out[name] = np.concatenate(chunks)
        return out

    def evaluate(self, emb: dict[str, np.ndarray], full: bool = True) -> tuple[dict[str, float], M.PCAStats]:
        """Return the metrics of embeddings {"train", "val"} and the train PCA.

        5-NN and Recall@1/5 are query -> gallery on the un-augmented train set (the paper's protocol);
        ``val_knn5`` is held-out val -> whole train set (the early-stopping metric); d_eff and the
        PCA-truncated Recall@1 use a PCA fitted on the normalised train embeddings; the reconstruction
        RMSE is measured on the held-out val embeddings.
        """
        s, labels = self.splits, self.data.labels
        pos = {int(i): n for n, i in enumerate(s.train)}
        gi = np.array([pos[int(i)] for i in s.gallery])
        qi = np.array([pos[int(i)] for i in s.query])
        train = emb["train"]
        g, q = train[gi], train[qi]
        out: dict[str, float] = {}
        out["knn5"] = M.knn_accuracy(q, labels[s.query], g, labels[s.gallery], k=5)
        rec = M.recall_at_k(q, labels[s.query], g, labels[s.gallery], ks=(1, 5))
        out["recall@1"], out["recall@5"] = rec[1], rec[5]
        out["val_knn5"] = M.knn_accuracy(emb["val"], labels[s.val], train, labels[s.train], k=5)
        pca, pm = _pca_metrics(train, emb["val"])
        out.update(pm)
        if full:
            for d in PCA_DIMS:
                if d < train.shape[1]:
                    out[f"recall@1_pca{d}"] = M.recall_at_k(
                        M.pca_project(q, pca, d), labels[s.query], M.pca_project(g, pca, d), labels[s.gallery], ks=(1,)
                    )[1]
        return out, pca


class TextTask:
    """Sentence pairs for SupCon (each pair its own class) and STS-B Spearman / pair retrieval evaluation."""

    validation_metric = "spearman"

    def __init__(self, cfg: RunConfig, tokenize: Callable[[list[str]], dict[str, torch.Tensor]]) -> None:
        from .data.text import load_pairs, load_sts

        self.cfg = cfg
        self.tokenize = tokenize
        pairs = load_pairs(cfg.data)
        if cfg.data.max_train is not None and cfg.data.max_train < len(pairs):
            rng = np.random.default_rng(cfg.optim.seed)
            pairs = [pairs[i] for i in np.sort(rng.choice(len(pairs), cfg.data.max_train, replace=False))]
        self.sts = load_sts(cfg.data.val_path, cfg.data.download)
        self.splits = make_splits(None, len(pairs), cfg.data.val_fraction, cfg.data.query_fraction, cfg.optim.seed)
        self.train_pairs = [pairs[i] for i in self.splits.train]
        self.val_pairs = [pairs[i] for i in self.splits.val]
        # Unique sentences of the training pairs: the rows of the feature cache and of the train PCA.
        self.sentences: list[str] = list(dict.fromkeys(s for p in self.train_pairs for s in p))
        where = {s: i for i, s in enumerate(self.sentences)}
        self.pair_index = torch.tensor([[where[a], where[b]] for a, b in self.train_pairs], dtype=torch.long)

    @property
    def num_train(self) -> int:
        """Return the number of training pairs."""
        return len(self.train_pairs)

    def input_spec(self) -> dict:
        """Return the model input description (token ids and mask, dynamic batch and sequence)."""
        return {"kind": "text", "inputs": ["input_ids", "attention_mask"], "dtype": "int64",
                "max_seq_len": self.cfg.data.max_seq_len}

    def train_batches(self, epoch_seed: int, batch_size: int, features: torch.Tensor | None,
                      num_workers: int = 0, pin_memory: bool = False, rank: int = 0,
                      world_size: int = 1) -> Iterator[Batch]:
        """Yield this rank's shuffled batches of B pairs as 2B examples [anchors; positives], labels [0..B-1]*2.

        Sharded across ranks like ``VisionTask.train_batches``.
        """
        generator = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(len(self.train_pairs), generator=generator)
        labels = pair_labels(batch_size)
        for idx in shard_indices(order, batch_size, rank, world_size):
            pi = self.pair_index[idx]
            if features is not None:
                yield Batch((torch.cat([features[pi[:, 0]], features[pi[:, 1]]]),), labels, 2 * batch_size, True)
            else:
                texts = [self.sentences[i] for i in pi[:, 0].tolist()] + [self.sentences[i] for i in pi[:, 1].tolist()]
                tok = self.tokenize(texts)
                yield Batch((tok["input_ids"], tok["attention_mask"]), labels, 2 * batch_size, True)

    def encode(self, encode_fn: Callable[..., torch.Tensor], batch_size: int = 256) -> dict[str, np.ndarray]:
        """Return encoder features of the train sentences, held-out pairs and STS pairs."""
        def run(texts: list[str]) -> np.ndarray:
            # Sorting by length keeps padding (and time) small; the order is restored afterwards.
            order = np.argsort([len(t) for t in texts], kind="stable")
            chunks = []
            for s in range(0, len(texts), batch_size):
                tok = self.tokenize([texts[i] for i in order[s:s + batch_size]])
                chunks.append(encode_fn(tok["input_ids"], tok["attention_mask"]))
            out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
            out[order] = np.concatenate(chunks)
            return out

        return {
            "train": run(self.sentences),
            "val_a": run([a for a, _ in self.val_pairs]), "val_b": run([b for _, b in self.val_pairs]),
            "sts_a": run(self.sts.first), "sts_b": run(self.sts.second),
        }

    def evaluate(self, emb: dict[str, np.ndarray], full: bool = True) -> tuple[dict[str, float], M.PCAStats]:
        """Return STS Spearman of cosine, held-out pair Recall@1/5, d_eff, recon RMSE (on STS sentences)."""
        out: dict[str, float] = {}
        out["spearman"] = M.spearman(M.cosine_scores(emb["sts_a"], emb["sts_b"]), self.sts.scores)
        rec = M.pair_recall_at_k(emb["val_a"], emb["val_b"], ks=(1, 5))
        out["recall@1"], out["recall@5"] = rec[1], rec[5]
        sts_all = np.concatenate([emb["sts_a"], emb["sts_b"]])
        pca, pm = _pca_metrics(emb["train"], sts_all)
        out.update(pm)
        if full:
            for d in PCA_DIMS:
                if d < emb["train"].shape[1]:
                    a, b = M.pca_project(emb["sts_a"], pca, d), M.pca_project(emb["sts_b"], pca, d)
                    out[f"spearman_pca{d}"] = M.spearman(M.cosine_scores(a, b), self.sts.scores)
                    out[f"recall@1_pca{d}"] = M.pair_recall_at_k(
                        M.pca_project(emb["val_a"], pca, d), M.pca_project(emb["val_b"], pca, d), ks=(1,))[1]
        return out, pca


def effective_dims_of(features: np.ndarray, head_raw: np.ndarray) -> dict[str, int]:
    """Return d_eff of the normalised encoder output and of the raw (un-normalised) head output."""
    return {"d_eff_encoder": _d_eff(features), "d_eff_head_raw": _d_eff(head_raw, normalize=False)}

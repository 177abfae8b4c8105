"""The vision task: an image classification set, its splits, SupCon batches (augmented images or cached
features), encoder features of the evaluation images, and kNN / Recall@k evaluation."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .. import metrics as M
from ..data.samplers import m_per_class_batches, random_batches
from ..data.splits import Splits, make_splits, stratified_subset
from ..device.errors import MonoconError
from .config import RunConfig
from .distributed import shard_batches
from .train_batch import TrainBatch
from .dimension_metrics import PCA_DIMS, fit_pca_figures, report_figures, truncate


class VisionTask:
    """Image classification data used for SupCon training and kNN / Recall@k evaluation."""

    validation_metric = "val_knn5"

    def __init__(self, cfg: RunConfig) -> None:
        from ..data.vision import load_image_set

        self.cfg = cfg
        data = load_image_set(cfg.data)
        if cfg.data.max_train is not None:
            keep = stratified_subset(data.labels, cfg.data.max_train, cfg.data_seed)
            data = type(data)(data.images[keep], data.labels[keep], data.class_names, data.source)
        if data.channels != cfg.model.in_channels:
            raise MonoconError(
                f"the data has {data.channels} channel(s) but the encoder expects {cfg.model.in_channels}"
            )
        self.data = data
        self.splits: Splits = make_splits(data.labels, len(data.labels), cfg.data.val_fraction,
                                          cfg.data.query_fraction, cfg.data_seed, cfg.data.report_fraction)
        self.train_labels = torch.from_numpy(data.labels[self.splits.train])

    @property
    def num_train(self) -> int:
        """Return the number of training examples."""
        return len(self.splits.train)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Return the number of (full) training batches per epoch."""
        m = self.cfg.data.m_per_class
        if not m:
            return self.num_train // batch_size
        _, counts = np.unique(self.data.labels[self.splits.train], return_counts=True)
        return int((counts // m).sum()) // (batch_size // m)

    def input_spec(self) -> dict:
        """Return the model input description (shape without batch, value range, channel order)."""
        h, w, c = self.data.images.shape[1:]
        return {"kind": "image", "shape": [c, h, w], "dtype": "float32", "range": [0.0, 1.0],
                "channels": "RGB" if c == 3 else "grey", "layout": "NCHW"}

    def train_batches(self, epoch_seed: int, batch_size: int, features: torch.Tensor | None,
                      num_workers: int = 0, pin_memory: bool = False, rank: int = 0,
                      world_size: int = 1) -> Iterator[TrainBatch]:
        """Yield this rank's shuffled training batches for one epoch (augmented images, or cached features).

        All ranks build the same global batches of ``batch_size * world_size`` examples from ``epoch_seed``;
        each takes its own slice of every one (see ``distributed.shard_batches``).
        """
        generator = torch.Generator().manual_seed(epoch_seed)
        m = self.cfg.data.m_per_class
        if m:
            batches = m_per_class_batches(self.train_labels, batch_size * world_size, m, generator)
        else:
            batches = random_batches(self.num_train, batch_size * world_size, generator)
        batches = shard_batches(batches, rank, world_size)
        if features is not None:
            for idx in batches:
                yield TrainBatch((features[idx],), self.train_labels[idx], len(idx), rows=idx)
            return
        from ..data.vision import AugmentedImages, build_train_transform

        idx = self.splits.train
        size = self.data.images.shape[1]
        dataset = AugmentedImages(self.data.images[idx], self.data.labels[idx],
                                  build_train_transform(self.cfg.data.augment, size))
        # The loader's generator only seeds worker processes (their augmentation RNG): different per rank.
        worker_seed = torch.Generator().manual_seed(epoch_seed + 1_000_003 * rank)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=[b.tolist() for b in batches], generator=worker_seed,
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
        )
        for (images, labels), idx in zip(loader, batches):
            yield TrainBatch((images,), labels, images.shape[0], rows=idx)

    def encode(self, encode_fn: Callable[..., torch.Tensor], batch_size: int = 512) -> dict[str, np.ndarray]:
        """Return encoder features (un-augmented) of the train, selection and report images:
        {"train", "val"} and "report" where the run has a report part."""
        from ..data.vision import to_float_batch

        out = {}
        parts = [("train", self.splits.train), ("val", self.splits.val)]
        if len(self.splits.report):
            parts.append(("report", self.splits.report))
        for name, idx in parts:
            chunks = [encode_fn(to_float_batch(self.data.images[idx[s:s + batch_size]]))
                      for s in range(0, len(idx), batch_size)]
            out[name] = np.concatenate(chunks)
        return out

    def _query_gallery(self, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (query, gallery) rows of the train-set embeddings ``train``."""
        pos = {int(i): n for n, i in enumerate(self.splits.train)}
        qi = np.array([pos[int(i)] for i in self.splits.query])
        gi = np.array([pos[int(i)] for i in self.splits.gallery])
        return train[qi], train[gi]

    def recall_curve(self, emb: dict[str, np.ndarray], ks: tuple[int, ...]) -> dict[int, float]:
        """Return {k: Recall@k} of query -> gallery retrieval (the protocol of ``evaluate``)."""
        q, g = self._query_gallery(emb["train"])
        labels = self.data.labels
        return M.recall_at_k(q, labels[self.splits.query], g, labels[self.splits.gallery], ks=ks)

    def evaluate(self, emb: dict[str, np.ndarray], full: bool = True,
                 truncation: str = "pca") -> tuple[dict[str, float], M.PCAStats]:
        """Return the metrics of embeddings {"train", "val"} and the train PCA.

        5-NN and Recall@1/5 are query -> gallery on the un-augmented train set (the paper's protocol);
        ``val_knn5`` is held-out val -> whole train set (the early-stopping metric); d_eff and the
        PCA-truncated Recall@1 use a PCA fitted on the normalised train embeddings; the reconstruction
        RMSE is measured on the held-out val embeddings. ``truncation="prefix"`` (Matryoshka runs) adds
        Recall@1 of the first d coordinates, re-normalised (``recall@1_prefix{d}``). With ``full`` and a report
        part, ``report_*`` are held-out report images as queries against the whole train set as gallery.
        """
        s, labels = self.splits, self.data.labels
        train = emb["train"]
        q, g = self._query_gallery(train)
        out: dict[str, float] = {}
        out["knn5"] = M.knn_accuracy(q, labels[s.query], g, labels[s.gallery], k=5)
        rec = M.recall_at_k(q, labels[s.query], g, labels[s.gallery], ks=(1, 5))
        out["recall@1"], out["recall@5"] = rec[1], rec[5]
        out["val_knn5"] = M.knn_accuracy(emb["val"], labels[s.val], train, labels[s.train], k=5)
        pca, pm = fit_pca_figures(train, emb["val"])
        out.update(pm)
        if full:
            # Selection-split retrieval (held-out selection images -> train gallery): what recipes are chosen on.
            vq, vl, tl = emb["val"], labels[s.val], labels[s.train]
            out["val_recall@1"] = M.recall_at_k(vq, vl, train, tl, ks=(1,))[1]
            for d in PCA_DIMS:
                if d < train.shape[1] and d <= pca.components.shape[0]:
                    out[f"val_recall@1_{truncation}{d}"] = M.recall_at_k(
                        truncate(vq, pca, d, truncation), vl, truncate(train, pca, d, truncation), tl, ks=(1,))[1]
                    out[f"recall@1_pca{d}"] = M.recall_at_k(
                        M.pca_project(q, pca, d), labels[s.query], M.pca_project(g, pca, d), labels[s.gallery], ks=(1,)
                    )[1]
                    if truncation == "prefix":
                        out[f"recall@1_prefix{d}"] = M.recall_at_k(
                            M.prefix_truncate(q, d), labels[s.query], M.prefix_truncate(g, d), labels[s.gallery],
                            ks=(1,))[1]
            out.update(report_figures(self, emb, pca, truncation))
        return out, pca

    def validation_at(self, emb: dict[str, np.ndarray], pca: M.PCAStats, dims: int, truncation: str) -> float:
        """Return the early-stopping metric (held-out selection images' 5-NN accuracy against the train split)
        of the embeddings cut to ``dims``."""
        labels = self.data.labels
        return M.knn_accuracy(truncate(emb["val"], pca, dims, truncation), labels[self.splits.val],
                              truncate(emb["train"], pca, dims, truncation), labels[self.splits.train], k=5)

    def report_metrics(self, emb: dict[str, np.ndarray]) -> dict[str, float]:
        """Return report_knn5 / report_recall@1 / report_recall@5 of the embeddings as given: held-out report
        images as queries against the whole train split as gallery (empty when the run has no report part)."""
        if "report" not in emb:
            return {}
        s, labels = self.splits, self.data.labels
        q, ql, g, gl = emb["report"], labels[s.report], emb["train"], labels[s.train]
        rec = M.recall_at_k(q, ql, g, gl, ks=(1, 5))
        return {"report_knn5": M.knn_accuracy(q, ql, g, gl, k=5), "report_recall@1": rec[1],
                "report_recall@5": rec[5]}

    def split_notes(self) -> dict[str, str]:
        """Return which data each metric family comes from (for the run's summary)."""
        return {
            "recall@k, knn5, recall@1_pca*": "paper protocol: query -> gallery, both inside the train split",
            "val_knn5 (early stopping), d_eff": "selection split (held out from training) / train embeddings",
            "report_*": "report split: held-out images never trained on or used for a choice, "
                        "queried against the train split as gallery",
        }

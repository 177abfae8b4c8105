"""Tasks: what a modality trains on and how it is evaluated.

A task owns its data and splits, yields training batches (raw inputs, or cached encoder features when the
encoder is frozen), computes the encoder features of its evaluation sets, and turns embeddings into metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .. import metrics as M
from .config import RunConfig
from ..data.samplers import m_per_class_batches, random_batches
from ..data.splits import Splits, make_splits, stratified_subset
from .distributed import shard_batches
from ..device.errors import MonoconError
from ..losses import pair_labels

PCA_DIMS = (128, 64, 16)


@dataclass
class TrainBatch:
    """One training step's inputs (tensors for the encoder, or one feature tensor) and SupCon labels."""

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    size: int  # examples (images or sentences) in the batch
    # True when labels only identify examples within this batch (text pairs: 0..B-1), so batches gathered
    # from other processes need their labels offset; False for class labels, which mean the same everywhere.
    batch_local_labels: bool = False
    # Rows of the task's train feature matrix (``encode()["train"]``) that the examples come from, in order:
    # what the similarity-distillation term looks the starting encoder's features up by.
    rows: torch.Tensor | None = None


def _pca_metrics(train: np.ndarray, held: np.ndarray) -> tuple[M.PCAStats, dict[str, float]]:
    """Return the PCA of normalised ``train`` and {d_eff, recon_rmse of ``held`` at d_eff}."""
    pca = M.fit_pca(train)
    d_eff = M.effective_dim(pca.explained_variance_ratio)
    return pca, {"d_eff": d_eff, "recon_rmse": M.pca_reconstruction_rmse(held, pca, max(d_eff, 1))}


def _d_eff(x: np.ndarray, normalize: bool = True) -> int:
    """Return d_eff of ``x`` (normalised first unless ``normalize`` is False)."""
    if normalize:
        return M.effective_dim(M.fit_pca(x).explained_variance_ratio)
    x = x.astype(np.float64)
    variances, _ = M.principal_axes(x - x.mean(axis=0))
    return M.effective_dim(variances)


class VisionTask:
    """Image classification data used for SupCon training and kNN / Recall@k evaluation."""

    validation_metric = "val_knn5"

    def __init__(self, cfg: RunConfig) -> None:
        from ..data.vision import load_image_set

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
                                          cfg.data.query_fraction, cfg.optim.seed, cfg.data.report_fraction)
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
        pca, pm = _pca_metrics(train, emb["val"])
        out.update(pm)
        if full:
            # Selection-split retrieval (held-out selection images -> train gallery): what recipes are chosen on.
            vq, vl, tl = emb["val"], labels[s.val], labels[s.train]
            out["val_recall@1"] = M.recall_at_k(vq, vl, train, tl, ks=(1,))[1]
            val_cut = M.prefix_truncate if truncation == "prefix" else (lambda x, d: M.pca_project(x, pca, d))
            for d in PCA_DIMS:
                if d < train.shape[1] and d <= pca.components.shape[0]:
                    out[f"val_recall@1_{truncation}{d}"] = M.recall_at_k(val_cut(vq, d), vl, val_cut(train, d), tl,
                                                                         ks=(1,))[1]
                    out[f"recall@1_pca{d}"] = M.recall_at_k(
                        M.pca_project(q, pca, d), labels[s.query], M.pca_project(g, pca, d), labels[s.gallery], ks=(1,)
                    )[1]
                    if truncation == "prefix":
                        out[f"recall@1_prefix{d}"] = M.recall_at_k(
                            M.prefix_truncate(q, d), labels[s.query], M.prefix_truncate(g, d), labels[s.gallery],
                            ks=(1,))[1]
            out.update(report_figures(self, emb, pca, truncation))
        return out, pca

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


class TextTask:
    """Sentence pairs for SupCon (each pair its own class) and STS-B Spearman / pair retrieval evaluation."""

    validation_metric = "spearman"

    def __init__(self, cfg: RunConfig, tokenize: Callable[[list[str]], dict[str, torch.Tensor]]) -> None:
        from ..data.text import load_pairs, load_sts

        self.cfg = cfg
        self.tokenize = tokenize
        pairs = load_pairs(cfg.data)
        if cfg.data.max_train is not None and cfg.data.max_train < len(pairs):
            rng = np.random.default_rng(cfg.optim.seed)
            pairs = [pairs[i] for i in np.sort(rng.choice(len(pairs), cfg.data.max_train, replace=False))]
        self.sts = load_sts(cfg.data.val_path, cfg.data.download)  # selection
        self.report_sts = load_sts(cfg.data.report_path, cfg.data.download) if cfg.data.report_path else None
        self.splits = make_splits(None, len(pairs), cfg.data.val_fraction, cfg.data.query_fraction, cfg.optim.seed,
                                  cfg.data.report_fraction)
        self.train_pairs = [pairs[i] for i in self.splits.train]
        self.val_pairs = [pairs[i] for i in self.splits.val]
        self.report_pairs = [pairs[i] for i in self.splits.report]
        # Unique sentences of the training pairs: the rows of the feature cache and of the train PCA.
        self.sentences: list[str] = list(dict.fromkeys(s for p in self.train_pairs for s in p))
        where = {s: i for i, s in enumerate(self.sentences)}
        self.pair_index = torch.tensor([[where[a], where[b]] for a, b in self.train_pairs], dtype=torch.long)

    @property
    def num_train(self) -> int:
        """Return the number of training pairs."""
        return len(self.train_pairs)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Return the number of (full) training batches per epoch."""
        return self.num_train // batch_size

    def input_spec(self) -> dict:
        """Return the model input description (token ids and mask, dynamic batch and sequence)."""
        return {"kind": "text", "inputs": ["input_ids", "attention_mask"], "dtype": "int64",
                "max_seq_len": self.cfg.data.max_seq_len}

    def train_batches(self, epoch_seed: int, batch_size: int, features: torch.Tensor | None,
                      num_workers: int = 0, pin_memory: bool = False, rank: int = 0,
                      world_size: int = 1) -> Iterator[TrainBatch]:
        """Yield this rank's shuffled batches of B pairs as 2B examples [anchors; positives], labels [0..B-1]*2.

        Sharded across ranks like ``VisionTask.train_batches``.
        """
        generator = torch.Generator().manual_seed(epoch_seed)
        labels = pair_labels(batch_size)
        for idx in shard_batches(random_batches(len(self.train_pairs), batch_size * world_size, generator),
                                 rank, world_size):
            pi = self.pair_index[idx]
            rows = torch.cat([pi[:, 0], pi[:, 1]])
            if features is not None:
                yield TrainBatch((features[rows],), labels, 2 * batch_size, True, rows=rows)
            else:
                texts = [self.sentences[i] for i in pi[:, 0].tolist()] + [self.sentences[i] for i in pi[:, 1].tolist()]
                tok = self.tokenize(texts)
                yield TrainBatch((tok["input_ids"], tok["attention_mask"]), labels, 2 * batch_size, True, rows=rows)

    def encode(self, encode_fn: Callable[..., torch.Tensor], batch_size: int = 256,
               encoder_fingerprint: str | None = None) -> dict[str, np.ndarray]:
        """Return encoder features of the train sentences ("train"), the selection pairs ("val_a/b") and STS
        pairs ("sts_a/b"), and where the run has them the report pairs ("report_a/b") and report STS pairs
        ("rsts_a/b").

        With ``encoder_fingerprint`` (see feature_cache.fingerprint) each set's features are read from /
        written to the disk cache (one entry per sentence list, so a changed split re-encodes only what changed).
        """
        sets = {"train": self.sentences,
                "val_a": [a for a, _ in self.val_pairs], "val_b": [b for _, b in self.val_pairs],
                "sts_a": self.sts.first, "sts_b": self.sts.second}
        if self.report_pairs:
            sets["report_a"] = [a for a, _ in self.report_pairs]
            sets["report_b"] = [b for _, b in self.report_pairs]
        if self.report_sts is not None:
            sets["rsts_a"], sets["rsts_b"] = self.report_sts.first, self.report_sts.second

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

        if encoder_fingerprint is None:
            return {name: run(texts) for name, texts in sets.items()}
        from .feature_cache import key_for, load_or_compute

        out = {}
        for name, texts in sets.items():
            key = key_for(encoder_fingerprint, str(self.cfg.data.max_seq_len), texts)
            out[name] = load_or_compute(key, lambda t=texts: {"x": run(t)})["x"]
        return out

    def recall_curve(self, emb: dict[str, np.ndarray], ks: tuple[int, ...]) -> dict[int, float]:
        """Return {k: Recall@k} of held-out pair retrieval (the protocol of ``evaluate``)."""
        return M.pair_recall_at_k(emb["val_a"], emb["val_b"], ks=ks)

    def evaluate(self, emb: dict[str, np.ndarray], full: bool = True,
                 truncation: str = "pca") -> tuple[dict[str, float], M.PCAStats]:
        """Return STS Spearman of cosine, held-out pair Recall@1/5, d_eff, recon RMSE (on STS sentences), all on
        the selection data.

        With ``full``, also the same after PCA truncation to 128/64/16 dims, and, for
        ``truncation="prefix"`` (Matryoshka runs), after prefix truncation (``*_prefix{d}``); where the run has
        report data, the same figures on it as ``report_spearman*`` (report STS file) and ``report_recall@*``
        (report pairs).
        """
        out: dict[str, float] = {}
        out["spearman"] = M.spearman(M.cosine_scores(emb["sts_a"], emb["sts_b"]), self.sts.scores)
        rec = M.pair_recall_at_k(emb["val_a"], emb["val_b"], ks=(1, 5))
        out["recall@1"], out["recall@5"] = rec[1], rec[5]
        sts_all = np.concatenate([emb["sts_a"], emb["sts_b"]])
        pca, pm = _pca_metrics(emb["train"], sts_all)
        out.update(pm)
        if full:
            for d in PCA_DIMS:
                if d < emb["train"].shape[1] and d <= pca.components.shape[0]:
                    a, b = M.pca_project(emb["sts_a"], pca, d), M.pca_project(emb["sts_b"], pca, d)
                    out[f"spearman_pca{d}"] = M.spearman(M.cosine_scores(a, b), self.sts.scores)
                    out[f"recall@1_pca{d}"] = M.pair_recall_at_k(
                        M.pca_project(emb["val_a"], pca, d), M.pca_project(emb["val_b"], pca, d), ks=(1,))[1]
                    if truncation == "prefix":
                        a, b = M.prefix_truncate(emb["sts_a"], d), M.prefix_truncate(emb["sts_b"], d)
                        out[f"spearman_prefix{d}"] = M.spearman(M.cosine_scores(a, b), self.sts.scores)
                        out[f"recall@1_prefix{d}"] = M.pair_recall_at_k(
                            M.prefix_truncate(emb["val_a"], d), M.prefix_truncate(emb["val_b"], d), ks=(1,))[1]
            out.update(report_figures(self, emb, pca, truncation))
        return out, pca

    def report_metrics(self, emb: dict[str, np.ndarray]) -> dict[str, float]:
        """Return report_spearman (report STS file) and report_recall@1/5 (report pairs) of the embeddings as
        given (only what the run has report data for)."""
        out: dict[str, float] = {}
        if "rsts_a" in emb:
            out["report_spearman"] = M.spearman(M.cosine_scores(emb["rsts_a"], emb["rsts_b"]), self.report_sts.scores)
        if "report_a" in emb:
            rec = M.pair_recall_at_k(emb["report_a"], emb["report_b"], ks=(1, 5))
            out["report_recall@1"], out["report_recall@5"] = rec[1], rec[5]
        return out

    def split_notes(self) -> dict[str, str]:
        """Return which data each metric family comes from (for the run's summary)."""
        notes = {"spearman* (early stopping)": f"selection: {self.cfg.data.val_path}",
                 "recall@k*": "selection: held-out pairs (each premise's hypothesis among all held-out ones)",
                 "d_eff": "train sentences; recon_rmse on the selection STS sentences"}
        if self.report_sts is not None:
            notes["report_spearman*"] = f"report: {self.cfg.data.report_path} (never used for a choice)"
        if self.report_pairs:
            notes["report_recall@*"] = "report: held-out pairs never used for a choice"
        return notes


def report_figures(task, emb: dict[str, np.ndarray], pca: M.PCAStats, truncation: str) -> dict[str, float]:
    """Return ``task.report_metrics`` at full width and after truncation to 128/64/16 dims (PCA, and prefix for
    Matryoshka runs), the truncated ones suffixed ``_pca{d}`` / ``_prefix{d}`` (Recall@5 only at full width)."""
    out = task.report_metrics(emb)
    if not out:
        return out
    width = emb["train"].shape[1]
    for d in PCA_DIMS:
        cuts = []
        if d < width and d <= pca.components.shape[0]:
            cuts.append((f"_pca{d}", {k: M.pca_project(v, pca, d) for k, v in emb.items()}))
        if truncation == "prefix" and d < width:
            cuts.append((f"_prefix{d}", {k: M.prefix_truncate(v, d) for k, v in emb.items()}))
        for suffix, small in cuts:
            out.update({f"{k}{suffix}": v for k, v in task.report_metrics(small).items() if "@5" not in k})
    return out


def effective_dims_of(features: np.ndarray, head_raw: np.ndarray) -> dict[str, int]:
    """Return d_eff of the normalised encoder output and of the raw (un-normalised) head output."""
    return {"d_eff_encoder": _d_eff(features), "d_eff_head_raw": _d_eff(head_raw, normalize=False)}


def build_task(cfg: RunConfig, model) -> VisionTask | TextTask:
    """Return the task (data, splits, evaluation) for ``cfg``; text tasks tokenize with ``model``'s encoder."""
    if cfg.modality == "vision":
        return VisionTask(cfg)
    return TextTask(cfg, lambda texts: model.encoder.tokenize(texts, cfg.data.max_seq_len))


def encode_eval_sets(task: VisionTask | TextTask, encode_fn: Callable[..., np.ndarray],
                     encoder: torch.nn.Module) -> dict[str, np.ndarray]:
    """Return the encoder features of ``task``'s evaluation sets computed with ``encode_fn``.

    Text features go through the feature cache, keyed by ``encoder``'s weights (a frozen MiniLM re-encodes the
    same sentences in every run, analysis and export otherwise).
    """
    if isinstance(task, TextTask):
        from .feature_cache import fingerprint

        return task.encode(encode_fn, encoder_fingerprint=fingerprint(encoder))
    return task.encode(encode_fn)

"""The text task: sentence pairs (each pair its own SupCon class), their splits and STS files, batches of
pairs (tokenised or cached features), encoder features of the evaluation sentences (through the feature
cache), and STS Spearman / pair Recall@k evaluation."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .. import metrics as M
from ..data.samplers import in_length_order, random_batches
from ..data.splits import make_splits
from ..losses import pair_labels
from .config import RunConfig
from .distributed import shard_batches
from .token_states import TokenStates, compute_token_states
from .train_batch import TrainBatch
from .dimension_metrics import PCA_DIMS, fit_pca_figures, report_figures, truncate

# The hard negatives' features (``--hard-negatives``): rows of training batches, not an evaluation set.
NEGATIVES_SET = "train_negatives"


class TextTask:
    """Sentence pairs for SupCon (each pair its own class) and STS-B Spearman / pair retrieval evaluation."""

    validation_metric = "spearman"

    def __init__(self, cfg: RunConfig, tokenize: Callable[[list[str]], dict[str, torch.Tensor]]) -> None:
        from ..data.text import load_pairs, load_sts

        self.cfg = cfg
        self.tokenize = tokenize
        rows = load_pairs(cfg.data)
        if cfg.data.max_train is not None and cfg.data.max_train < len(rows):
            rng = np.random.default_rng(cfg.data_seed)
            rows = [rows[i] for i in np.sort(rng.choice(len(rows), cfg.data.max_train, replace=False))]
        self.sts = load_sts(cfg.data.val_path, cfg.data.download)  # selection
        self.report_sts = load_sts(cfg.data.report_path, cfg.data.download) if cfg.data.report_path else None
        self.splits = make_splits(None, len(rows), cfg.data.val_fraction, cfg.data.query_fraction, cfg.data_seed,
                                  cfg.data.report_fraction)
        self.train_pairs = [rows[i][:2] for i in self.splits.train]
        self.val_pairs = [rows[i][:2] for i in self.splits.val]
        self.report_pairs = [rows[i][:2] for i in self.splits.report]
        # Unique sentences of the training pairs: the rows of the feature cache and of the train PCA.
        self.sentences: list[str] = list(dict.fromkeys(s for p in self.train_pairs for s in p))
        where = {s: i for i, s in enumerate(self.sentences)}
        self.pair_index = torch.tensor([[where[a], where[b]] for a, b in self.train_pairs], dtype=torch.long)
        # Hard negatives (--hard-negatives): sentences not among the pairs' get batch rows after them; -1: none.
        self.negative_sentences: list[str] = []
        self.negative_index: torch.Tensor | None = None
        if cfg.data.hard_negatives:
            negatives = [rows[i][2] for i in self.splits.train]
            self.negative_sentences = list(dict.fromkeys(n for n in negatives if n is not None and n not in where))
            where.update({s: len(self.sentences) + i for i, s in enumerate(self.negative_sentences)})
            self.negative_index = torch.tensor([-1 if n is None else where[n] for n in negatives], dtype=torch.long)

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
                      world_size: int = 1, token_states: TokenStates | None = None) -> Iterator[TrainBatch]:
        """Yield this rank's shuffled batches of B pairs as 2B examples [anchors; positives], labels [0..B-1]*2;
        with hard negatives, the pairs' negatives follow as further examples, labels B, B+1, ...

        Inputs are cached ``features`` rows (the train sentences, then ``negative_sentences``), else
        ``token_states`` of the train sentences (states, mask), else token ids and mask. Sharded across ranks like
        ``VisionTask.train_batches``.
        """
        generator = torch.Generator().manual_seed(epoch_seed)
        pair_lab = pair_labels(batch_size)
        texts_of = self.sentences + self.negative_sentences
        for idx in shard_batches(random_batches(len(self.train_pairs), batch_size * world_size, generator),
                                 rank, world_size):
            pi = self.pair_index[idx]
            rows, labels = torch.cat([pi[:, 0], pi[:, 1]]), pair_lab
            if self.negative_index is not None:
                # Each hard negative is a class of its own: a candidate for every anchor, never a positive.
                neg = self.negative_index[idx]
                neg = neg[neg >= 0]
                rows = torch.cat([rows, neg])
                labels = torch.cat([pair_lab, batch_size + torch.arange(len(neg))])
            if features is not None:
                yield TrainBatch((features[rows],), labels, len(rows), True, rows=rows)
            elif token_states is not None:
                yield TrainBatch(token_states.batch(rows), labels, len(rows), True, rows=rows)
            else:
                tok = self.tokenize([texts_of[i] for i in rows.tolist()])
                yield TrainBatch((tok["input_ids"], tok["attention_mask"]), labels, len(rows), True, rows=rows)

    def encode(self, encode_fn: Callable[..., torch.Tensor], batch_size: int = 256,
               encoder_fingerprint: str | None = None, with_batch_rows: bool = False) -> dict[str, np.ndarray]:
        """Return encoder features of the train sentences ("train"), the selection pairs ("val_a/b") and STS
        pairs ("sts_a/b"), and where the run has them the report pairs ("report_a/b") and report STS pairs
        ("rsts_a/b"); with ``with_batch_rows`` also the hard negatives of the train pairs (``NEGATIVES_SET``:
        rows of training batches only, never evaluated).

        With ``encoder_fingerprint`` (see feature_cache.fingerprint) each set's features are read from /
        written to the disk cache (one entry per sentence list, so a changed split re-encodes only what changed).
        """
        def run(texts: list[str]) -> np.ndarray:
            def embed(idx: np.ndarray) -> np.ndarray:
                tok = self.tokenize([texts[i] for i in idx])
                return encode_fn(tok["input_ids"], tok["attention_mask"])

            return in_length_order([len(t) for t in texts], batch_size, embed)

        sets = self.eval_sets()
        if with_batch_rows and self.negative_sentences:
            sets[NEGATIVES_SET] = self.negative_sentences
        if encoder_fingerprint is None:
            return {name: run(texts) for name, texts in sets.items()}
        return {name: arrays["x"] for name, arrays in
                self._cached_sets(sets, encoder_fingerprint, (), lambda texts: {"x": run(texts)}).items()}

    def eval_sets(self) -> dict[str, list[str]]:
        """Return the sentence lists that ``evaluate`` scores, by name (see ``encode``)."""
        sets = {"train": self.sentences,
                "val_a": [a for a, _ in self.val_pairs], "val_b": [b for _, b in self.val_pairs],
                "sts_a": self.sts.first, "sts_b": self.sts.second}
        if self.report_pairs:
            sets["report_a"] = [a for a, _ in self.report_pairs]
            sets["report_b"] = [b for _, b in self.report_pairs]
        if self.report_sts is not None:
            sets["rsts_a"], sets["rsts_b"] = self.report_sts.first, self.report_sts.second
        return sets

    def token_states(self, lower: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], upto: int,
                     encoder_fingerprint: str) -> dict[str, TokenStates]:
        """Return the token states after the encoder's first ``upto`` layers (``lower``) of every set of
        ``eval_sets``, read from / written to the feature cache like ``encode``'s features."""
        cached = self._cached_sets(self.eval_sets(), encoder_fingerprint, (f"token-states-{upto}",),
                                   lambda texts: compute_token_states(texts, self.tokenize, lower))
        return {name: TokenStates.from_arrays(arrays) for name, arrays in cached.items()}

    def _cached_sets(self, sets: dict[str, list[str]], encoder_fingerprint: str, tag: tuple[str, ...],
                     compute: Callable[[list[str]], dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
        """Return {set name: the arrays ``compute`` returns for its sentences} of ``sets``, each read from / written
        to the feature cache under the encoder, the sequence length, ``tag`` and the sentences themselves."""
        from .feature_cache import key_for, load_or_compute

        out = {}
        for name, texts in sets.items():
            key = key_for(encoder_fingerprint, str(self.cfg.data.max_seq_len), *tag, texts)
            out[name] = load_or_compute(key, lambda t=texts: compute(t))
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
        pca, pm = fit_pca_figures(emb["train"], sts_all)
        out.update(pm)
        if full:
            for d in PCA_DIMS:
                if d < emb["train"].shape[1] and d <= pca.components.shape[0]:
                    # Matryoshka runs: the PCA figures too, beside the prefix ones
                    for cut in ("pca", "prefix") if truncation == "prefix" else ("pca",):
                        out[f"spearman_{cut}{d}"] = self.validation_at(emb, pca, d, cut)
                        out[f"recall@1_{cut}{d}"] = M.pair_recall_at_k(
                            truncate(emb["val_a"], pca, d, cut), truncate(emb["val_b"], pca, d, cut), ks=(1,))[1]
            out.update(report_figures(self, emb, pca, truncation))
        return out, pca

    def validation_at(self, emb: dict[str, np.ndarray], pca: M.PCAStats, dims: int, truncation: str) -> float:
        """Return the early-stopping metric (selection STS Spearman) of the embeddings cut to ``dims``."""
        a, b = truncate(emb["sts_a"], pca, dims, truncation), truncate(emb["sts_b"], pca, dims, truncation)
        return M.spearman(M.cosine_scores(a, b), self.sts.scores)

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

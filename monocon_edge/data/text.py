"""Sentence data: (anchor, positive) pairs from NLI-style TSV files or Hugging Face SNLI; STS-B for validation."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..training.config import DataConfig
from ..device.errors import MonoconError
from ..files import existing_file


@dataclass(frozen=True)
class StsSet:
    """Sentence pairs with a graded similarity score."""

    first: list[str]
    second: list[str]
    scores: np.ndarray


def _read_tsv(path: str) -> tuple[list[str], list[list[str]]]:
    p = existing_file(path)
    try:
        with open(p, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MonoconError(f"cannot read {path} as a UTF-8 TSV file: {type(exc).__name__}") from None
    if not rows:
        raise MonoconError(f"{path} is empty")
    return [h.strip().lower() for h in rows[0]], rows[1:]


_FIRST = ("premise", "sentence1", "sentence_a", "anchor", "s1")
_SECOND = ("hypothesis", "sentence2", "sentence_b", "positive", "s2")


def _column(header: list[str], names: tuple[str, ...], path: str) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise MonoconError(f"{path}: no column named any of {', '.join(names)} (header: {', '.join(header)})")


# One training example of a pair file: (anchor, positive, hard negative or None).
PairRow = tuple[str, str, Optional[str]]


def _with_hard_negatives(labelled: list[tuple[str, str, str]]) -> list[PairRow]:
    """Return the (anchor, positive, hard negative or None) rows of ``labelled`` (anchor, other, label) triples: the
    ``entailment`` ones, each with the first ``contradiction`` partner of its anchor."""
    contradiction: dict[str, str] = {}
    for anchor, other, label in labelled:
        if label == "contradiction":
            contradiction.setdefault(anchor, other)
    return [(anchor, pos, contradiction.get(anchor)) for anchor, pos, label in labelled if label == "entailment"]


def read_pair_rows(path: str) -> list[PairRow]:
    """Return the (anchor, positive, hard negative) rows of a TSV file with a header.

    Recognised: SNLI (premise/hypothesis + label), SICK (sentence1/sentence2 + label) and plain two-column
    pair files. Where a ``label`` column exists, only ``entailment`` rows are pairs, and a pair's hard negative
    is the first ``contradiction`` partner of the same anchor in the file (SNLI writes three hypotheses per
    premise); None where there is none, and always for files without labels.
    """
    header, rows = _read_tsv(path)
    a, b = _column(header, _FIRST, path), _column(header, _SECOND, path)
    lab = header.index("label") if "label" in header else None
    width = max(a, b, lab or 0) + 1
    labelled = [(r[a].strip(), r[b].strip(), r[lab].strip().lower() if lab is not None else "entailment")
                for r in rows if len(r) >= width and r[a].strip() and r[b].strip()]
    pairs = _with_hard_negatives(labelled)
    if not pairs:
        raise MonoconError(f"{path} holds no usable (entailment) sentence pair")
    return pairs


def read_pair_tsv(path: str) -> list[tuple[str, str]]:
    """Return the (anchor, positive) pairs of a TSV file with a header (see ``read_pair_rows``)."""
    return [(anchor, pos) for anchor, pos, _ in read_pair_rows(path)]


def load_pairs(cfg: DataConfig) -> list[PairRow]:
    """Return the training rows (anchor, positive, hard negative or None) ``cfg`` names: comma-separated TSV
    files (kind=pairs) or HF SNLI (kind=hf-snli; label 0 entailment, 2 contradiction)."""
    if cfg.kind == "pairs":
        if not cfg.path:
            raise MonoconError("a pair data set needs --data FILE.tsv[,FILE2.tsv...]")
        pairs: list[PairRow] = []
        for path in cfg.path.split(","):
            pairs += read_pair_rows(path.strip())
        return pairs
    if cfg.kind == "hf-snli":
        ds = _hf_load("stanfordnlp/snli", "train", cfg.download)
        names = {0: "entailment", 2: "contradiction"}
        return _with_hard_negatives([(r["premise"], r["hypothesis"], names.get(r["label"], "")) for r in ds])
    raise MonoconError(f"{cfg.kind!r} is not a sentence-pair data set")


def load_sts(path: str | None, download: bool = False) -> StsSet:
    """Return an STS set from an STS-B style TSV (sentence1, sentence2, score) or ``"hf"`` (GLUE STS-B validation)."""
    if path is None:
        raise MonoconError("text runs need a validation STS file: --val-data stsb_dev.tsv (or hf)")
    if path == "hf":
        ds = _hf_load("nyu-mll/glue", "validation", download, config="stsb")
        return StsSet([r["sentence1"] for r in ds], [r["sentence2"] for r in ds],
                      np.asarray([r["label"] for r in ds], dtype=np.float64))
    header, rows = _read_tsv(path)
    a, b = _column(header, ("sentence1",), path), _column(header, ("sentence2",), path)
    s = _column(header, ("score", "relatedness", "similarity"), path)
    first, second, scores = [], [], []
    for r in rows:
        if len(r) <= max(a, b, s):
            continue
        try:
            score = float(r[s])
        except ValueError:
            raise MonoconError(f"{path}: score {r[s]!r} is not a number") from None
        first.append(r[a].strip())
        second.append(r[b].strip())
        scores.append(score)
    if len(scores) < 2:
        raise MonoconError(f"{path} holds fewer than 2 scored pairs")
    return StsSet(first, second, np.asarray(scores, dtype=np.float64))


def _hf_load(name: str, split: str, download: bool, config: str | None = None):
    try:
        import datasets
    except ImportError:
        raise MonoconError("Hugging Face data sets need `pip install datasets` (and internet or a local cache)") from None
    try:
        return datasets.load_dataset(name, config, split=split,
                                     download_mode=None if download else "reuse_cache_if_exists")
    except Exception as exc:
        raise MonoconError(
            f"could not load {name} ({type(exc).__name__}): no network or local cache? "
            "Use TSV files with --data instead"
        ) from None

"""The run's real evaluation data, as raw inputs the runtime embeds (uint8 images or sentences).

Vision: query → gallery of the run's train split, labels = classes (the protocol of training's Recall@k and
5-NN), so its figures are called Recall@k as in training. Text: each held-out entailment pair and each STS-B
pair scored ≥ ``STS_PAIR_MIN_SCORE`` is a (anchor, partner) pair; an anchor must find its partner among all
distinct partners. That is not training's and the gates' pair Recall@k (held-out pairs only, one gallery item
per pair), so it has its own name: pair+STS Recall@k (``pair_sts_recall_at_k``). STS Spearman of cosine over
every pair of the STS file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.splits import seeded_subset
from ..data.text import StsSet

STS_PAIR_MIN_SCORE = 4.0
# What each modality's bench Recall@k is called in result rows (``<name>_at_1`` / ``<name>_at_5``).
RECALL_NAMES = {"vision": "recall", "text": "pair_sts_recall"}


def recall_keys(modality: str) -> tuple[str, str]:
    """Return the row keys of a ``modality``'s bench Recall@1 and Recall@5 (see RECALL_NAMES)."""
    name = RECALL_NAMES[modality]
    return f"{name}_at_1", f"{name}_at_5"


@dataclass
class EvalSet:
    """Queries and gallery with labels (a query hits a gallery item of its own label), plus STS for text."""

    modality: str
    protocol: str
    query: Any  # vision: uint8 (N, H, W, C); text: list[str]
    gallery: Any
    query_labels: np.ndarray
    gallery_labels: np.ndarray
    sts: StsSet | None = None

    @property
    def num_queries(self) -> int:
        """Return the number of queries."""
        return len(self.query_labels)

    @property
    def num_gallery(self) -> int:
        """Return the number of gallery items."""
        return len(self.gallery_labels)

    def timing_inputs(self, batch: int) -> tuple[Any, Any]:
        """Return (one example, ``batch`` examples) of real inputs for latency and throughput.

        Text: the single sentence has the median length of the queries (latency grows with tokens).
        """
        if self.modality == "vision":
            pool = np.concatenate([self.gallery[:batch], self.query[:batch]])
            reps = -(-batch // len(pool))
            return pool[:1], np.concatenate([pool] * reps)[:batch]
        pool = list(self.query) + list(self.gallery)
        median = sorted(self.query, key=len)[len(self.query) // 2]
        reps = -(-batch // len(pool))
        return [median], (pool * reps)[:batch]


def vision_eval_set(task: Any, max_queries: int | None = None) -> EvalSet:
    """Return the query → gallery split of a VisionTask (``max_queries`` caps the queries, seeded)."""
    images, labels, s = task.data.images, task.data.labels, task.splits
    if len(s.report):  # report split: held-out images no choice has seen, against the whole train split
        query = s.report[seeded_subset(len(s.report), max_queries)]
        return EvalSet("vision", "report split: held-out images -> the train split as gallery (class labels)",
                       images[query], images[s.train], labels[query], labels[s.train])
    query = s.query[seeded_subset(len(s.query), max_queries)]
    return EvalSet("vision", "query -> gallery of the run's train split (class labels)", images[query],
                   images[s.gallery], labels[query], labels[s.gallery])


def text_eval_set(task: Any, max_queries: int | None = None) -> EvalSet:
    """Return pair retrieval over held-out pairs + STS-B dev pairs scored ≥ 4, and STS-B dev, of a TextTask."""
    # Runs with a report part are benched on it (report pairs + the report STS file), never on selection data.
    report = getattr(task, "report_sts", None) is not None
    sts = task.report_sts if report else task.sts
    held = task.report_pairs if report and task.report_pairs else task.val_pairs
    pairs = list(held) + [(a, b) for a, b, score in zip(sts.first, sts.second, sts.scores)
                          if score >= STS_PAIR_MIN_SCORE]
    pairs = [pairs[i] for i in seeded_subset(len(pairs), max_queries)]
    partners = list(dict.fromkeys(b for _, b in pairs))
    where = {b: i for i, b in enumerate(partners)}
    # A repeated partner sentence is one gallery item: every anchor paired with it hits that item.
    query_labels = np.asarray([where[b] for _, b in pairs])
    where_from = "report split: " if report else ""
    return EvalSet("text", f"{where_from}anchor -> its partner among all partners (held-out pairs + STS pairs "
                           f"scored >= {STS_PAIR_MIN_SCORE:g})", [a for a, _ in pairs], partners, query_labels,
                   np.arange(len(partners)), StsSet(list(sts.first), list(sts.second), np.asarray(sts.scores)))


def eval_set(loaded: Any, max_queries: int | None = None) -> EvalSet:
    """Return the EvalSet of a loaded run (runs.LoadedRun)."""
    if loaded.cfg.modality == "vision":
        return vision_eval_set(loaded.task, max_queries)
    return text_eval_set(loaded.task, max_queries)

"""The numbers `analyze` reports for one run, measured on its best model's recomputed embeddings."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import metrics as M
from ..data.splits import seeded_subset
from ..formatting import method_label
from .compute import (RECALL_KS, RETRIEVAL_METRICS, CorrelationClustering, cluster_features, deff_history,
                      truncate, truncation_dims)
from ..runs import FinishedRun, RunEmbeddings

CLUSTER_SAMPLE = 1000


@dataclass
class RunAnalysis:
    """One run's row of the comparison: compression, retrieval at each size, Recall@k, d_eff over training.

    ``retrieval`` maps "full" and each truncation size ("128", "64", "16"; only sizes < d_enc) to the
    modality's metrics; truncated sizes use the run's ``truncation`` method. ``summary_max_abs_diff`` is the
    largest difference between a recomputed number and the same number in the run's summary.json.
    """

    label: str
    slug: str
    run: str
    name: str
    method: str
    head: str
    loss: str
    truncation: str
    modality: str
    d_enc: int
    best_epoch: int
    d_eff: int
    recon_rmse: float
    retrieval: dict[str, dict[str, float]]
    recall_at_k: dict[int, float]
    deff_history: dict[str, list]
    # The same sizes measured on the run's report split (held out from every choice); empty for runs without one.
    report: dict[str, dict[str, float]] = field(default_factory=dict)
    clustermap_order: list[int] = field(default_factory=list)
    summary_max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the analysis as JSON-able dicts (Recall@k keys as strings)."""
        out = asdict(self)
        out["recall_at_k"] = {str(k): v for k, v in self.recall_at_k.items()}
        return out


def measure_run(finished: FinishedRun, emb: RunEmbeddings, label: str, slug: str,
                ) -> tuple[RunAnalysis, CorrelationClustering]:
    """Return the run's RunAnalysis and the correlation clustering of its normalised output features on a
    fixed sample of train inputs (the clustermap)."""
    cfg, task, e = finished.cfg, emb.task, emb.embeddings
    names = RETRIEVAL_METRICS[cfg.modality]
    full, pca = task.evaluate(e, full=False)
    retrieval = {"full": {k: float(full[k]) for k in names}}
    full_report = task.report_metrics(e)
    report = {"full": full_report} if full_report else {}
    d_enc = e["train"].shape[1]
    for d in truncation_dims(d_enc):
        small_emb = truncate(e, cfg.truncation, d, pca)
        small, _ = task.evaluate(small_emb, full=False)
        retrieval[str(d)] = {k: float(small[k]) for k in names}
        if report:
            report[str(d)] = task.report_metrics(small_emb)
    clustering = cluster_features(M.l2_normalize(e["train"][seeded_subset(len(e["train"]), CLUSTER_SAMPLE)]))
    analysis = RunAnalysis(
        label=label, slug=slug, run=str(finished.run.path), name=finished.name,
        method=method_label(cfg.model.head, cfg.optim.loss), head=cfg.model.head, loss=cfg.optim.loss,
        truncation=cfg.truncation, modality=cfg.modality, d_enc=int(d_enc),
        best_epoch=int(finished.summary.get("best_epoch", -1)), d_eff=int(full["d_eff"]),
        recon_rmse=float(full["recon_rmse"]), retrieval=retrieval,
        recall_at_k=task.recall_curve(e, RECALL_KS), deff_history=deff_history(finished.history), report=report,
        clustermap_order=[int(i) for i in clustering.order],
    )
    analysis.summary_max_abs_diff = _summary_diff(analysis, finished.summary.get("final", {}))
    return analysis, clustering


def _summary_diff(a: RunAnalysis, final: dict[str, Any]) -> float | None:
    """Return the largest |recomputed - summary.json| over the numbers both have (None if none)."""
    pairs = [(a.d_eff, final.get("d_eff")), (a.recon_rmse, final.get("recon_rmse"))]
    pairs += [(v, final.get(k)) for k, v in a.retrieval["full"].items()]
    for size, values in a.retrieval.items():
        if size != "full":
            pairs += [(v, final.get(f"{k}_{a.truncation}{size}")) for k, v in values.items()]
    diffs = [abs(float(x) - float(y)) for x, y in pairs if y is not None]
    return max(diffs) if diffs else None

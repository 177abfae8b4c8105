"""Contrastive losses on L2-normalised embeddings: SupCon, and the Matryoshka comparator built on it."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .training.config import LOSSES


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, eq. 2).

    For each anchor i with at least one positive (another sample with the same label),

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

    where z are the L2-normalised embeddings; the loss is the mean over anchors that have a positive.
    A batch in which no anchor has a positive gives 0 (with a gradient of zeros, never NaN).

    Inputs: ``embeddings`` (N, D) raw (normalised here), ``labels`` (N,) integers. Optional
    ``ref_embeddings``/``ref_labels`` add further candidates (e.g. negatives gathered from other processes):
    they act as positives/negatives of the anchors but are not anchors themselves.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ref_embeddings: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        if embeddings.ndim != 2 or labels.ndim != 1 or embeddings.shape[0] != labels.shape[0]:
            raise ValueError("SupConLoss expects embeddings (N, D) and labels (N,)")
        z = F.normalize(embeddings.float(), dim=-1)
        n = z.shape[0]
        if ref_embeddings is None:
            ref, ref_lab = z, labels
        else:
            ref = torch.cat([z, F.normalize(ref_embeddings.float(), dim=-1)])
            ref_lab = torch.cat([labels, ref_labels])
        # The anchors are the first n candidates in both cases, so anchor i's own column is i.
        not_self = torch.ones(n, ref.shape[0], dtype=torch.bool, device=z.device)
        idx = torch.arange(n, device=z.device)
        not_self[idx, idx] = False
        positives = (labels[:, None] == ref_lab[None, :]) & not_self
        pos_count = positives.sum(dim=1)
        has_pos = pos_count > 0
        if not bool(has_pos.any()):
            return z.sum() * 0.0
        logits = (z @ ref.T / self.temperature).masked_fill(~not_self, float("-inf"))
        # Subtracting the (detached) row max leaves the loss unchanged and keeps exp() from overflowing.
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        log_prob = log_prob.masked_fill(~positives, 0.0)  # drop the -inf self terms before summing
        mean_log_prob_pos = log_prob.sum(dim=1)[has_pos] / pos_count[has_pos]
        return -mean_log_prob_pos.mean()


MATRYOSHKA_DIMS = (16, 32, 64, 128)


class MatryoshkaSupConLoss(nn.Module):
    """SupCon summed over nested prefixes of the embedding: the Matryoshka comparator.

    After Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022: for an embedding of D dims
    and nested sizes M = {m in ``dims`` : m < D} + {D},

        loss = sum_{m in M} SupCon(z[:, :m])

    where each prefix is L2-normalised on its own inside SupCon (``SupConLoss``, same temperature), and all
    sizes weigh 1 (the paper's default c_m = 1). Training this way makes "keep the first m coordinates and
    re-normalise" the compression, where MonoCon compresses by PCA.

    Inputs as for ``SupConLoss``: ``embeddings`` (N, D), ``labels`` (N,), optional reference candidates.
    """

    def __init__(self, temperature: float = 0.1, dims: tuple[int, ...] = MATRYOSHKA_DIMS) -> None:
        super().__init__()
        if not dims or min(dims) < 1:
            raise ValueError("Matryoshka prefix sizes must be >= 1")
        self.supcon = SupConLoss(temperature)
        self.dims = tuple(sorted(set(int(d) for d in dims)))

    def prefixes(self, width: int) -> list[int]:
        """Return the nested prefix sizes used for an embedding of ``width`` dims, smallest first."""
        return [d for d in self.dims if d < width] + [width]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                ref_embeddings: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise ValueError("MatryoshkaSupConLoss expects embeddings (N, D) and labels (N,)")
        total = embeddings.new_zeros((), dtype=torch.float32)
        for m in self.prefixes(embeddings.shape[1]):
            ref = ref_embeddings[:, :m] if ref_embeddings is not None else None
            total = total + self.supcon(embeddings[:, :m], labels, ref, ref_labels)
        return total


def similarity_distillation(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Return the mean squared difference between the pairwise cosine similarities of ``embeddings`` (N, D) and
    those of ``reference`` (N, D_ref) over all pairs i != j: 0 exactly when the embeddings keep the reference's
    geometry (e.g. a head that is a rotation or a positive scaling of its input).

    MonoCon's head compresses the encoder's embedding; this term (weighted by ``--distill``) pulls the head's
    similarity structure towards the starting encoder's so that the compression does not cost full-width quality
    (a relational form of knowledge distillation: Park et al., "Relational Knowledge Distillation", CVPR 2019).
    """
    if embeddings.ndim != 2 or reference.ndim != 2 or embeddings.shape[0] != reference.shape[0]:
        raise ValueError("similarity_distillation expects (N, D) embeddings and (N, D_ref) reference features")
    n = embeddings.shape[0]
    if n < 2:
        return embeddings.sum() * 0.0
    z = F.normalize(embeddings.float(), dim=-1)
    r = F.normalize(reference.float(), dim=-1)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    diff = (z @ z.T - r @ r.T)[off_diagonal]
    return (diff * diff).mean()


def build_loss(name: str, temperature: float) -> nn.Module:
    """Return the training loss named ``name`` (supcon | matryoshka) at ``temperature``."""
    if name == "supcon":
        return SupConLoss(temperature)
    if name == "matryoshka":
        return MatryoshkaSupConLoss(temperature)
    raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")


def pair_labels(batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return labels [0..B-1, 0..B-1] for a batch of B (anchor, positive) pairs stacked as [anchors; positives]."""
    idx = torch.arange(batch_size, device=device)
    return torch.cat([idx, idx])

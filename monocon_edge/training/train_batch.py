"""One training step's inputs, as both tasks yield them (``VisionTask`` / ``TextTask.train_batches``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainBatch:
    """One training step's inputs (tensors for the encoder, or one feature tensor) and SupCon labels."""

    inputs: tuple[torch.Tensor, ...]
    labels: torch.Tensor
    size: int  # examples (images or sentences) in the batch
    # True when labels only identify examples within this batch (text pairs: 0..B-1), so batches gathered
    # from other processes need their labels offset; False for class labels, which mean the same everywhere.
    batch_local_labels: bool = False
    # Rows of the task's batch feature matrix (``encode()["train"]``, then the hard negatives'
    # ``NEGATIVES_SET`` where the text task has them) that the examples come from, in order:
    # what the similarity-distillation term looks the starting encoder's features up by.
    rows: torch.Tensor | None = None

"""Token states of a text encoder's frozen lower layers, computed once, for runs that train only its top layers.

``--train-top-layers K`` co-adapts the top K MiniLM layers with the head. The layers below never change, so
their output for every sentence is computed once (through the feature cache, keyed by the encoder's weights)
and each training step runs only the top K layers: on two CPU cores that is what makes the co-adaptation
affordable. States are stored flat — sentence i owns rows ``offsets[i]:offsets[i + 1]`` (its real tokens, no
padding) — in float32, so that the top layers on them reproduce the full encoder to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.samplers import in_length_order, length_batches


@dataclass(frozen=True)
class TokenStates:
    """Per-sentence token states (the real tokens of sentence i are rows ``offsets[i]:offsets[i + 1]``)."""

    states: torch.Tensor  # (total tokens, hidden) float32
    offsets: torch.Tensor  # (sentences + 1,) int64

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> "TokenStates":
        """Return the TokenStates stored as {"states", "offsets"} arrays (the feature cache's format)."""
        return TokenStates(torch.from_numpy(arrays["states"]), torch.from_numpy(arrays["offsets"]))

    def batch(self, rows: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (states (B, L, hidden), attention mask (B, L)) of sentences ``rows``, right-padded with zeros
        to the longest of them (the tokenizer's own padding side)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        width = int(lengths.max()) if len(rows) else 0
        out = self.states.new_zeros((len(rows), width, self.states.shape[1]))
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
            out[i, :n] = self.states[s:s + n]
            mask[i, :n] = 1
        return out, mask

    def pooled(self, top: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int = 256) -> np.ndarray:
        """Return ``top(states, mask)`` (N, d) for every sentence, ``batch_size`` at a time, as float32, in order.

        Sentences are batched by length (little padding); the caller sets the module's mode and grad context.
        """
        def embed(idx: np.ndarray) -> np.ndarray:
            return top(*self.batch(idx.tolist())).float().cpu().numpy()

        return in_length_order((self.offsets[1:] - self.offsets[:-1]).numpy(), batch_size, embed)


def compute_token_states(texts: list[str], tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
                         lower: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         batch_size: int = 256) -> dict[str, np.ndarray]:
    """Return {"states", "offsets"} arrays: ``lower(input_ids, mask)``'s token states of each text's real tokens.

    ``lower`` runs the frozen lower layers (the caller puts the encoder in eval mode, without gradients).
    """
    per_text: list[np.ndarray | None] = [None] * len(texts)
    for idx in length_batches([len(t) for t in texts], batch_size):
        tok = tokenize([texts[i] for i in idx])
        states = lower(tok["input_ids"], tok["attention_mask"]).float().cpu().numpy()
        for row, i in enumerate(idx):
            per_text[i] = states[row, : int(tok["attention_mask"][row].sum())]
    lengths = np.array([len(p) for p in per_text], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hidden = per_text[0].shape[1] if texts else 0
    states = np.concatenate(per_text) if texts else np.zeros((0, hidden), np.float32)
    return {"states": np.ascontiguousarray(states, dtype=np.float32), "offsets": offsets}

"""Plain per-token cross-entropy with its mask: what the monitor and the probes record for models trained
with any loss (no smoothing, no blending; no gradient)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..validation import check_ignore_index
from .chunks import LossOutput


@torch.no_grad()
def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> LossOutput:
    """``-log p[y]`` per token of logits (..., V) against labels (...), in float32.

    Returns ``(loss, token_ce, mask)``: the summed CE (scalar), per-token CE shaped like ``labels`` (0 where
    ignored) and the mask of non-ignored labels; ``labels`` rides along.
    """
    ignore_index = check_ignore_index(ignore_index)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"`logits` (..., V) and `labels` (...) must share leading shape: got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    vocab = logits.shape[-1]
    token_ce = F.cross_entropy(logits.reshape(-1, vocab).float(), labels.reshape(-1).long(),
                               ignore_index=ignore_index, reduction="none").view(labels.shape)
    return LossOutput(token_ce.sum(), token_ce, labels != ignore_index, labels=labels)

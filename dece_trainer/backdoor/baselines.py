"""Baseline losses of the benchmark, beside DeCE: generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018).

Per token ``(1 - p[y] ** q) / q``: ``q -> 0`` is cross-entropy, ``q = 1`` is mean absolute error. Dense
float32 (one log-softmax of the logits); meant for baselines, not for large vocabularies at scale.
"""

from __future__ import annotations

import torch

from ..ops.chunks import LossOutput, mean_over_items
from ..trainer import DeCETrainer
from ..validation import check_number, check_reduction


def generalized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, q: float = 0.7,
                              ignore_index: int = -100, reduction: str = "mean",
                              num_items_in_batch: int | torch.Tensor | None = None) -> LossOutput:
    """GCE of logits (..., V) against labels (...); returns the loss, per-token plain CE and the mask."""
    q = check_number(q, "q", low=0.0, high=1.0, low_open=True)
    check_reduction(reduction)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"`logits` (..., V) and `labels` (...) must share leading shape: got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    mask = labels != ignore_index
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp_gold = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_loss = torch.where(mask, (1.0 - torch.exp(q * logp_gold)) / q, torch.zeros_like(logp_gold))
    token_ce = torch.where(mask, -logp_gold, torch.zeros_like(logp_gold)).detach()
    if reduction == "none":
        return LossOutput(token_loss, token_ce, mask, labels=labels)
    loss = token_loss.sum()
    if reduction == "mean":
        loss = mean_over_items(loss, mask.sum(), num_items_in_batch)
    return LossOutput(loss, token_ce, mask, labels=labels)


class GCETrainer(DeCETrainer):
    """The GCE baseline: DeCETrainer's plumbing (metrics, GA, multi-process) with the GCE loss."""

    def token_loss(self, logits, targets, alpha, num_items_in_batch):
        return generalized_cross_entropy(logits, targets, q=0.7, num_items_in_batch=num_items_in_batch)

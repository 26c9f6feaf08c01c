"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018), a noise-robust baseline for the benchmark.

Per token ``(1 - p[y] ** q) / q``: ``q -> 0`` is cross-entropy, ``q = 1`` is mean absolute error. Dense
float32 (one log-softmax of the logits); meant for baselines, not for large vocabularies at scale.
"""

from __future__ import annotations

import torch

from .dece_loss import REDUCTIONS, DeCELossOutput, mean_over_items


def generalized_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, q: float = 0.7,
                              ignore_index: int = -100, reduction: str = "mean",
                              num_items_in_batch: int | torch.Tensor | None = None) -> DeCELossOutput:
    """GCE of logits (..., V) against labels (...); returns the loss, per-token plain CE and the mask."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"`q` must be in (0, 1], got {q!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"`logits` (..., V) and `labels` (...) must share leading shape: got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    mask = labels != ignore_index
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp_gold = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_loss = torch.where(mask, (1.0 - torch.exp(q * logp_gold)) / q, torch.zeros_like(logp_gold))
    token_ce = torch.where(mask, -logp_gold, torch.zeros_like(logp_gold)).detach()
    if reduction == "none":
        return DeCELossOutput(token_loss, token_ce, mask)
    loss = token_loss.sum()
    if reduction == "mean":
        loss = mean_over_items(loss, mask.sum(), num_items_in_batch)
    return DeCELossOutput(loss, token_ce, mask)

"""Module API of the DeCE loss: :class:`DeCELoss`, an ``nn.Module`` that owns the schedule."""

from __future__ import annotations

import torch
from torch import nn

from .ops.dece_loss import REDUCTIONS, deceptive_cross_entropy
from .ops.schedule import _check_alpha


class DeCELoss(nn.Module):
    """Deceptive cross-entropy with the paper's blend schedule ``a = alpha_base ** epoch``.

    Args:
        alpha_base: in (0, 1]; the blend weight of the first epoch.
        label_smoothing: in [0, 1).
        ignore_index: label value that is skipped.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    ``forward(logits, labels, epoch)`` takes logits (..., V), labels (...) and the 1-based epoch number
    (``epoch=1`` uses ``a = alpha_base``) and returns the float32 loss.
    """

    def __init__(self, alpha_base: float = 0.985, label_smoothing: float = 0.05, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__()
        _check_alpha("alpha_base", alpha_base)
        if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
            raise ValueError(f"`label_smoothing` must be a number in [0, 1), got {label_smoothing!r}.")
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
        self.alpha_base = float(alpha_base)
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def alpha(self, epoch: float) -> float:
        """Blend weight at the 1-based ``epoch`` (``alpha_base ** epoch``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not epoch >= 1:
            raise ValueError(f"`epoch` is 1-based and must be a number >= 1, got {epoch!r}.")
        return self.alpha_base ** float(epoch)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, epoch: float,
                num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
        return deceptive_cross_entropy(
            logits, labels, alpha=self.alpha(epoch), label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index, reduction=self.reduction, num_items_in_batch=num_items_in_batch,
        )

    def extra_repr(self) -> str:
        return (f"alpha_base={self.alpha_base}, label_smoothing={self.label_smoothing}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")

"""Module API of the DeCE loss: `DeCELoss`, an ``nn.Module`` that owns the schedule."""

from __future__ import annotations

import torch
from torch import nn

from .ops.dece_loss import deceptive_cross_entropy
from .ops.schedule import dece_alpha
from .validation import check_alpha, check_epoch, check_ignore_index, check_label_smoothing, check_reduction


class DeCELoss(nn.Module):
    """Deceptive cross-entropy with the paper's blend schedule ``a = alpha_base ** epoch``.

    Args:
        alpha_base: in (0, 1]; the blend weight of the first epoch.
        label_smoothing: in [0, 1).
        ignore_index: label value that is skipped.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    ``forward(logits, labels, epoch)`` takes logits (..., V), labels (...) and the **1-based** epoch number
    (``epoch=1`` uses ``a = alpha_base``, as in the paper); or, instead of ``epoch``, ``trainer_epoch=``, the
    trainer's **0-based fractional** epoch (``TrainerState.epoch``), mapped exactly as `dece_alpha` maps
    it. Returns the float32 loss.
    """

    def __init__(self, alpha_base: float = 0.985, label_smoothing: float = 0.05, ignore_index: int = -100,
                 reduction: str = "mean"):
        super().__init__()
        self.alpha_base = check_alpha(alpha_base, "alpha_base")
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)

    def alpha(self, epoch: float) -> float:
        """Blend weight at the 1-based ``epoch`` (``alpha_base ** epoch``)."""
        return self.alpha_base ** check_epoch(epoch, "epoch (1-based)", one_based=True)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, epoch: float | None = None, *,
                trainer_epoch: float | None = None,
                num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
        if (epoch is None) == (trainer_epoch is None):
            raise ValueError("give exactly one of `epoch` (1-based epoch number) and `trainer_epoch` "
                             "(the trainer's 0-based fractional epoch)")
        alpha = self.alpha(epoch) if epoch is not None else dece_alpha(self.alpha_base, trainer_epoch)
        return deceptive_cross_entropy(
            logits, labels, alpha=alpha, label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index, reduction=self.reduction, num_items_in_batch=num_items_in_batch,
        )

    def extra_repr(self) -> str:
        return (f"alpha_base={self.alpha_base}, label_smoothing={self.label_smoothing}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")

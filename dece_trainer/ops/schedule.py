"""The blend-weight schedule ``a = alpha_base ** E`` of DeCE. Pure Python, no torch."""

from __future__ import annotations

import math

from ..validation import SCHEDULES, check_alpha, check_epoch, check_label_smoothing, check_number, check_schedule

__all__ = ["SCHEDULES", "alpha_base_for_final", "dece_alpha", "grad_bound", "schedule_exponent",
           "suppression_threshold"]

# Tolerance for the fractional epoch landing a hair under an integer (e.g. 2.9999999 after many steps).
_EPOCH_EPS = 1e-9


def schedule_exponent(epoch: float, schedule: str = "epoch") -> float:
    """The exponent E of ``a = alpha_base ** E`` at a trainer's fractional epoch.

    Args:
        epoch: the trainer's fractional, 0-based epoch (``TrainerState.epoch``: 0.5 is halfway
            through the first epoch); >= 0.
        schedule: ``"epoch"``: ``E = floor(epoch) + 1``, the 1-based epoch number, constant within an
            epoch (the paper's code); ``"continuous"``: ``E = 1 + epoch``, smooth, for runs of one or
            two epochs where a step per epoch would be too coarse.
    """
    check_schedule(schedule)
    epoch = check_epoch(epoch, "epoch (the trainer's 0-based fractional epoch)")
    if schedule == "epoch":
        return float(math.floor(epoch + _EPOCH_EPS) + 1)
    return 1.0 + float(epoch)


def dece_alpha(alpha_base: float, epoch: float, schedule: str = "epoch") -> float:
    """Blend weight ``a = alpha_base ** E`` at a trainer's fractional epoch (see :func:`schedule_exponent`).

    Example: ``dece_alpha(0.985, 0.0) == 0.985`` (epoch 1 already uses ``alpha_base``),
    ``dece_alpha(0.985, 2.5) == 0.985 ** 3``.
    """
    return check_alpha(alpha_base, "alpha_base") ** schedule_exponent(epoch, schedule)


def alpha_base_for_final(alpha_final: float, num_train_epochs: float, schedule: str = "epoch") -> float:
    """The ``alpha_base`` whose schedule reaches ``alpha_final`` at the end of training.

    For users who know the blend weight they want on the last epoch (say 0.5 after a 2-epoch LLM
    fine-tune) rather than a base.

    Args:
        alpha_final: the blend weight wanted at the end, in (0, 1].
        num_train_epochs: the run's length in (fractional) epochs, > 0.
        schedule: as in :func:`schedule_exponent`. ``"epoch"``: the last epoch is
            ``ceil(num_train_epochs)``, and ``alpha_base ** ceil(num_train_epochs) == alpha_final``;
            ``"continuous"``: ``alpha_base ** (1 + num_train_epochs) == alpha_final``.
    """
    alpha_final = check_alpha(alpha_final, "alpha_final")
    check_schedule(schedule)
    num_train_epochs = check_number(num_train_epochs, "num_train_epochs", low=0.0, low_open=True)
    if schedule == "epoch":
        exponent = float(math.ceil(num_train_epochs - _EPOCH_EPS))
    else:
        exponent = 1.0 + float(num_train_epochs)
    return alpha_final ** (1.0 / exponent)


def grad_bound(alpha: float) -> float:
    """``a / (1 - a)``: the bound on ``|d loss / d p_k|`` under DeCE (inf at ``a = 1``, plain CE)."""
    alpha = check_alpha(alpha)
    return math.inf if alpha == 1.0 else alpha / (1.0 - alpha)


def suppression_threshold(alpha: float, label_smoothing: float) -> float:
    """Gold probability below which DeCE cuts a token's gradient by more than half.

    At the gold class, DeCE's ``d loss / d p[y]`` is ``r = a p / q`` times CE's; ``r < 1/2`` exactly when
    ``a p[y] < (1 - a)(1 - e)``, i.e. ``p[y] < (1 - a)(1 - e) / a``.
    """
    alpha = check_alpha(alpha)
    label_smoothing = check_label_smoothing(label_smoothing)
    return (1.0 - alpha) * (1.0 - label_smoothing) / alpha

"""Pure math: the DeCE loss and its schedule. Imports torch only, never transformers."""

from .dece_loss import DeCELossOutput, dece_loss_and_token_ce, deceptive_cross_entropy
from .schedule import (
    SCHEDULES,
    alpha_base_for_final,
    dece_alpha,
    grad_bound,
    schedule_exponent,
    suppression_threshold,
)

__all__ = [
    "SCHEDULES",
    "DeCELossOutput",
    "alpha_base_for_final",
    "dece_alpha",
    "dece_loss_and_token_ce",
    "deceptive_cross_entropy",
    "grad_bound",
    "schedule_exponent",
    "suppression_threshold",
]

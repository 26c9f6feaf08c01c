"""Pure math: the DeCE loss (unfused and fused with the LM head) and its schedule. Imports torch only, never
transformers."""

from .chunks import LossOutput, default_chunk_rows
from .dece_loss import dece_loss_and_token_ce, deceptive_cross_entropy
from .fused_linear import fused_linear_dece
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
    "LossOutput",
    "alpha_base_for_final",
    "dece_alpha",
    "dece_loss_and_token_ce",
    "deceptive_cross_entropy",
    "default_chunk_rows",
    "fused_linear_dece",
    "grad_bound",
    "schedule_exponent",
    "suppression_threshold",
]

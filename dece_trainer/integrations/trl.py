"""DeCE for TRL's ``SFTTrainer``: ``DeCESFTTrainer`` and ``DeCESFTConfig`` (needs ``pip install trl``).

``DeCESFTTrainer`` computes its loss with DeCE from the full logits; SFT's fused-loss shortcuts and its
extra train metrics (entropy, token accuracy) are not used. Completion-only and assistant-only masks
arrive as -100 labels and padding-free batches as ``shift_labels``, which DeCE honours.
"""

from __future__ import annotations

from dataclasses import dataclass

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as err:  # pragma: no cover - exercised only without trl
    raise ImportError("dece_trainer.integrations.trl needs TRL: pip install 'dece-trainer[trl]'") from err

from ..trainer.dece_config import DeCEArgumentsMixin
from ..trainer.dece_trainer import DeCEMixin


@dataclass
class DeCESFTConfig(DeCEArgumentsMixin, SFTConfig):
    """``SFTConfig`` plus the ``--dece_*`` flags."""


class DeCESFTTrainer(DeCEMixin, SFTTrainer):
    """TRL ``SFTTrainer`` trained with DeCE."""

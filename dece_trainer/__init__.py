"""dece-trainer: defend code-model fine-tuning against backdoors with Deceptive Cross-Entropy.

The library, in layers (each imports only the ones before it): ``dece_trainer.ops`` (the loss and its
schedule, torch only) -> ``dece_trainer.trainer`` (Hugging Face ``Trainer`` integration) ->
``dece_trainer.callbacks`` (the early-learning monitor) -> ``dece_trainer.integrations`` (TRL). The research
harness, ``dece_trainer.backdoor`` (attacks, tasks, experiments, the ``bench``/``demo``/``eval`` commands), is
built on the library and never imported by it. See ``docs/architecture.md``.

Names are imported on first use (as TRL does), so ``import dece_trainer`` is fast and pulls in neither
transformers nor the harness until a trainer class is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "DeCELoss": "modules",
    "LossOutput": "ops",
    "alpha_base_for_final": "ops",
    "dece_alpha": "ops",
    "dece_loss_and_token_ce": "ops",
    "deceptive_cross_entropy": "ops",
    "fused_linear_dece": "ops",
    "grad_bound": "ops",
    "schedule_exponent": "ops",
    "suppression_threshold": "ops",
    "DeCELossFunc": "trainer",
    "DeCEMixin": "trainer",
    "DeCESeq2SeqTrainer": "trainer",
    "DeCESeq2SeqTrainingArguments": "trainer",
    "DeCESettings": "trainer",
    "DeCETrainer": "trainer",
    "DeCETrainingArguments": "trainer",
    "make_dece_loss_func": "trainer",
    "EXAMPLE_ID_COLUMN": "trainer.example_ids",
    "add_example_ids": "trainer.example_ids",
    "ContinueWithCE": "callbacks",
    "EarlyLearningCallback": "callbacks",
    "drop_flagged": "callbacks",
}

__all__ = sorted(_EXPORTS)

# old name -> the public name it now goes by (resolved with a DeprecationWarning; not in __all__)
_RENAMED = {"DeCELossOutput": "LossOutput"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        import warnings

        warnings.warn(f"dece_trainer.{name} is now dece_trainer.{_RENAMED[name]}; the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        return __getattr__(_RENAMED[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dece_trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from .callbacks import ContinueWithCE, EarlyLearningCallback, drop_flagged
    from .modules import DeCELoss
    from .ops import (
        LossOutput,
        alpha_base_for_final,
        dece_alpha,
        dece_loss_and_token_ce,
        deceptive_cross_entropy,
        fused_linear_dece,
        grad_bound,
        schedule_exponent,
        suppression_threshold,
    )
    from .ops import LossOutput as DeCELossOutput  # the old name (see _RENAMED), for the API pages
    from .trainer import (
        DeCELossFunc,
        DeCEMixin,
        DeCESeq2SeqTrainer,
        DeCESeq2SeqTrainingArguments,
        DeCESettings,
        DeCETrainer,
        DeCETrainingArguments,
        make_dece_loss_func,
    )
    from .trainer.example_ids import EXAMPLE_ID_COLUMN, add_example_ids

"""The one seam between dece-trainer and the private parts of transformers (TRL's: `integrations/_trl_compat.py`).

Every read or write of a ``Trainer`` internal, and every private import, goes through a function here, so
a transformers release that moves one breaks in one place, loudly: each accessor raises a ``RuntimeError``
naming the internal and the supported versions instead of silently doing something else, and
``tests/test_compat.py`` checks them against the installed versions.

Supported: transformers >= ``MIN_TRANSFORMERS`` (< 6), the range CI tests; ``pyproject.toml`` says the same.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import transformers
from packaging.version import Version
from torch import nn

MIN_TRANSFORMERS = "5.24"


def supported_version(version: str) -> Version:
    """``version`` of transformers, or an ``ImportError`` saying what to install when it is outside the supported
    range (checked when this module is imported)."""
    if not Version(MIN_TRANSFORMERS) <= Version(version) < Version("6"):
        raise ImportError(f"dece-trainer needs transformers >= {MIN_TRANSFORMERS}, < 6 (the versions its tests run "
                          f"against); found {version}: pip install -U 'transformers>={MIN_TRANSFORMERS},<6'")
    return Version(version)


TRANSFORMERS_VERSION = supported_version(transformers.__version__)

from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: E402

# The batch key the Trainer adds for a loss-only evaluation with Liger kernels (``prediction_step``): a request
# to skip the logits, which DeCE cannot honour since it needs them.
SKIP_LOGITS_KEY = "skip_logits"


def _moved(internal: str) -> RuntimeError:
    return RuntimeError(f"transformers {transformers.__version__} has no `{internal}`, which dece-trainer relies on; "
                        f"it supports transformers >= {MIN_TRANSFORMERS}, < 6. Please report this with your versions.")


def _require(obj: Any, internal: str) -> None:
    if not hasattr(obj, internal):
        raise _moved(f"{type(obj).__name__}.{internal}")


def count_tokens_as_dece_does(trainer: Any, shifts_labels: bool) -> None:
    """Have the Trainer compute ``num_items_in_batch`` for every (accumulated, gathered) batch, over exactly the
    tokens DeCE averages: ``labels[..., 1:]`` for causal LMs (``shifts_labels``), all labels otherwise.

    Sets ``Trainer.model_accepts_loss_kwargs`` (the Trainer counts only when it is true) and
    ``Trainer._loss_shifts_labels`` (which labels it counts).
    """
    _require(trainer, "model_accepts_loss_kwargs")
    _require(trainer, "_loss_shifts_labels")
    trainer.model_accepts_loss_kwargs = True
    trainer._loss_shifts_labels = shifts_labels


def gradient_accumulation_steps(trainer: Any) -> int:
    """Micro-batches in the current optimizer step (``Trainer.current_gradient_accumulation_steps``; the last
    step of an epoch may have fewer than ``gradient_accumulation_steps``)."""
    _require(trainer, "current_gradient_accumulation_steps")
    return trainer.current_gradient_accumulation_steps


def prepare_inputs(trainer: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """A batch moved to the trainer's device as its own steps move it (``Trainer._prepare_inputs``)."""
    _require(trainer, "_prepare_inputs")
    return trainer._prepare_inputs(inputs)


def tensor_parallel_size(trainer: Any) -> int:
    """Ranks that share one batch under tensor parallelism (``Trainer.get_tp_size``)."""
    _require(trainer, "get_tp_size")
    return trainer.get_tp_size()


def mask_before_counting(trainer: Any, epoch_iterator: Iterator[Any],
                         mask: Callable[[Any], Any]) -> Iterator[Any]:
    """``epoch_iterator`` with ``mask`` applied to each training batch as the Trainer draws it, for the Trainer's own
    ``get_batch_samples(epoch_iterator, num_batches, device)``: that method takes an optimizer step's micro-batches
    with ``next(epoch_iterator)`` and only then counts ``num_items_in_batch`` over their labels
    (``Trainer._get_num_items_in_batch``, gathered over processes), and the training step gets those same batches.
    So the labels ``mask`` sets to -100 leave the loss and its normaliser alike (`DeCEMixin.set_row_filter`)."""
    _require(trainer, "get_batch_samples")
    _require(trainer, "_get_num_items_in_batch")
    return (mask(batch) for batch in epoch_iterator)


def keep_signature_column(trainer: Any, column: str) -> None:
    """Keep ``column`` through ``remove_unused_columns``: the Trainer keeps the columns listed in its private
    ``_signature_columns``, filled by ``_set_signature_columns_if_needed`` (called here first, so the column
    joins the model's own arguments once and for all)."""
    _require(trainer, "_set_signature_columns_if_needed")
    trainer._set_signature_columns_if_needed()
    columns = getattr(trainer, "_signature_columns", None)
    if not isinstance(columns, list):
        raise _moved("Trainer._signature_columns (a list)")
    if column not in columns:
        columns.append(column)


def load_checkpoint_weights(trainer: Any, checkpoint: str) -> None:
    """Load a checkpoint folder's model weights into ``trainer.model`` as ``Trainer.train`` does on a resume
    (full weights or a PEFT adapter, sharded or not), without training."""
    _require(trainer, "_load_from_checkpoint")
    trainer._load_from_checkpoint(checkpoint)


def loss_kind_of(model: nn.Module) -> str | None:
    """What transformers itself would train ``model`` with: ``"causal"`` when its ``loss_type`` maps to
    ``ForCausalLMLoss`` (shifted labels) or, for classes without a ``loss_type`` (GPT-2's ``LMHeadModel``), when
    its class is registered as a causal LM with the Auto classes; ``"other"`` when the ``loss_type`` maps to
    another loss; None when transformers does not know (custom classes)."""
    loss = LOSS_MAPPING.get(getattr(model, "loss_type", None))
    if loss is not None:
        return "causal" if loss is ForCausalLMLoss else "other"
    if type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal"
    return None

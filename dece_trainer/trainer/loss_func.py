"""``make_dece_loss_func``: DeCE for scripts that keep their ``Trainer`` class (``compute_loss_func=``)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from ..ops.dece_loss import deceptive_cross_entropy
from ..ops.schedule import dece_alpha
from .alignment import align_targets, logits_of, model_kind
from .dece_config import DeCESettings


class DeCELossFunc(TrainerCallback):
    """A ``compute_loss_func`` that follows the DeCE epoch schedule.

    It is also a ``TrainerCallback``: register it in ``callbacks`` as well, which is how it sees the
    trainer's epoch and the model kind (causal LMs are shifted).

    Example:
        ```python
        loss_fn = make_dece_loss_func(alpha_base=0.985)
        trainer = Trainer(model, args, train_dataset=ds, compute_loss_func=loss_fn, callbacks=[loss_fn])
        ```

    Encoder-decoders need ``decoder_input_ids`` in the batch (``DataCollatorForSeq2Seq(tok, model=model)``),
    since the Trainer takes the labels out before the forward pass.
    """

    def __init__(self, settings: DeCESettings):
        self.settings = settings
        self._state = None
        self._model = None
        self._kind: str | None = None
        self._num_train_epochs = 1.0
        self._step_alpha: float | None = None

    # ---- callback side: see the trainer's state ---------------------------------------------------

    def on_init_end(self, args, state, control, model=None, **kwargs):
        DeCESettings.from_args(args)  # refuses label_smoothing_factor > 0, like DeCETrainer
        self._state = state
        self._model = model
        self._kind = model_kind(model, self.settings.model_kind) if model is not None else None
        self._num_train_epochs = float(args.num_train_epochs)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.on_init_end(args, state, control, model=model)
        if args.max_steps > 0:
            self._num_train_epochs = float(state.num_train_epochs)
        self._step_alpha = None

    def on_step_begin(self, args, state, control, **kwargs):
        # The optimizer step about to run trains at the state's epoch now (it moves only after the step).
        self._step_alpha = self._alpha_at(state)

    def _alpha_at(self, state) -> float:
        epoch = (state.epoch or 0.0) if state is not None else 0.0
        base = self.settings.resolved_alpha_base(self._num_train_epochs)
        return dece_alpha(base, epoch, self.settings.schedule)

    @property
    def alpha(self) -> float:
        """The blend weight of the current (or, after training, the last) training step; epoch 1's before
        training starts. Evaluations between steps use it too: the weight the model was just trained with."""
        return self._step_alpha if self._step_alpha is not None else self._alpha_at(self._state)

    # ---- loss side ----------------------------------------------------------------------------------

    def __call__(self, outputs: Any, labels: torch.Tensor | None,
                 num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        logits = logits_of(outputs, self._model)
        if self._state is None or self._kind is None:
            raise ValueError(
                "The DeCE loss function cannot see the trainer's epoch or model: pass it in `callbacks` too, "
                "e.g. Trainer(..., compute_loss_func=loss_fn, callbacks=[loss_fn])."
            )
        targets = align_targets(logits, labels, self._kind)
        return deceptive_cross_entropy(logits, targets, alpha=self.alpha, label_smoothing=self.settings.label_smoothing,
                                       num_items_in_batch=num_items_in_batch)


def make_dece_loss_func(alpha_base: float | None = DeCESettings.alpha_base,
                        label_smoothing: float = DeCESettings.label_smoothing,
                        schedule: str = DeCESettings.schedule, alpha_final: float | None = DeCESettings.alpha_final,
                        model_kind: str = DeCESettings.model_kind) -> DeCELossFunc:
    """A DeCE ``compute_loss_func`` for ``Trainer``; register the returned object as a callback too.

    Args (each the `DeCESettings` field of that name, with its default and meaning; see the ``--dece_*`` training
    argument named after it):
        alpha_base: ``dece_alpha_base``.
        label_smoothing: ``dece_label_smoothing``.
        schedule: ``dece_alpha_schedule``.
        alpha_final: ``dece_alpha_final`` (with neither alpha given, ``DEFAULT_ALPHA_FINAL``).
        model_kind: ``dece_model_kind``.
    """
    return DeCELossFunc(DeCESettings(alpha_base, label_smoothing, schedule, alpha_final, model_kind))

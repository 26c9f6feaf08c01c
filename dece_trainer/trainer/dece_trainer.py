"""``DeCETrainer``: Hugging Face ``Trainer`` with the deceptive cross-entropy loss. Swap the class name, done."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Trainer

from ..io import append_text
from ..ops.dece_loss import DeCELossOutput, dece_loss_and_token_ce
from ..ops.schedule import dece_alpha, grad_bound
from . import _compat, fused_head
from .alignment import CAUSAL, SEQ2SEQ, align_targets, decoder_input_ids_from_labels, logits_of, model_kind
from .dece_config import DeCESettings
from .example_ids import EXAMPLE_ID_COLUMN, pop_example_ids
from .token_metrics import TokenMetrics

logger = logging.getLogger(__name__)

MODEL_CARD_TAGS = ["dece", "backdoor-defense"]


class DeCEMixin:
    """Turns any ``transformers.Trainer`` subclass into a DeCE trainer (put it first in the bases).

    Reads ``dece_alpha_base``, ``dece_label_smoothing``, ``dece_alpha_schedule`` and ``dece_alpha_final``
    from the training arguments (defaults when they are plain ``TrainingArguments``). The loss is
    normalised by the Trainer's global ``num_items_in_batch``, so gradient accumulation and several
    processes give the same update as one big batch. Logs ``dece_alpha``, ``dece_grad_bound``,
    ``ce_loss`` and ``dece_suppressed_frac`` with every training log.

    Per-token statistics of every training micro-batch go to ``token_stats_listeners`` (callables taking
    the batch's ``example_id`` tensor or None, and the :class:`DeCELossOutput`): the early-learning
    monitor reads per-example dynamics there at no extra forward pass. Callbacks with an ``attach(trainer)``
    method are attached when the trainer is built or the callback added.
    """

    # The loss is divided by the token count of the whole accumulated (and gathered) batch.
    loss_is_scaled_for_ga = True

    # Whether this trainer runs causal LMs through its own fused LM head (DeCESFTTrainer uses TRL's instead).
    _dece_owns_fused_head = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dece = DeCESettings.from_args(self.args)
        if getattr(self.args, "use_liger_kernel", False):
            # Liger's layer kernels (RMSNorm, RoPE, SwiGLU) stay; its fused linear cross-entropy would replace the
            # model's forward and the loss, which is DeCE's.
            self.args.liger_kernel_config = {**(self.args.liger_kernel_config or {}),
                                             "fused_linear_cross_entropy": False}
        self.dece_model_kind = model_kind(self.model, self.dece.model_kind)
        self._dece_fused = self._dece_owns_fused_head and self._dece_fused_head_supported()
        _compat.count_tokens_as_dece_does(self, shifts_labels=self.dece_model_kind == CAUSAL)
        _compat.keep_signature_column(self, EXAMPLE_ID_COLUMN)  # kept for per-example statistics
        self._dece_token_metrics = TokenMetrics()
        self._dece_last_alpha = self.dece_alpha
        self.token_stats_listeners: list[Callable[[torch.Tensor | None, DeCELossOutput], None]] = []
        for callback in self.callback_handler.callbacks:
            self._attach_if_wanted(callback)

    def _dece_fused_head_supported(self) -> bool:
        """Whether causal-LM batches take the fused LM-head path (``dece_fused_linear``); installs it if so."""
        if not self.dece.fused_linear or self.dece_model_kind != CAUSAL or type(self).token_loss is not \
                DeCEMixin.token_loss:  # a subclass with another loss (a baseline) needs the logits
            return False
        reason = fused_head.unsupported_reason(self.model)
        if reason is not None:
            logger.warning("DeCE computes the loss from the full logits for %s: %s. (dece_fused_linear)",
                           type(self.model).__name__, reason)
            return False
        fused_head.install(self.model)
        self._dece_fused_checked = False
        return True

    def _attach_if_wanted(self, callback: Any) -> None:
        attach = getattr(callback, "attach", None)
        if callable(attach) and not isinstance(callback, type):
            attach(self)

    def add_callback(self, callback) -> None:
        super().add_callback(callback)
        self._attach_if_wanted(callback)

    # ---- schedule -------------------------------------------------------------------------------

    def _dece_num_train_epochs(self) -> float:
        if self.args.max_steps > 0 and self.state.max_steps > 0:
            return float(self.state.num_train_epochs)
        return float(self.args.num_train_epochs)

    @property
    def dece_alpha_base(self) -> float:
        """``alpha_base`` in force (derived from ``dece_alpha_final`` and the run length when that is set)."""
        return self.dece.resolved_alpha_base(self._dece_num_train_epochs())

    @property
    def dece_alpha(self) -> float:
        """Blend weight at the trainer's current (fractional) epoch."""
        return dece_alpha(self.dece_alpha_base, self.state.epoch or 0.0, self.dece.schedule)

    # ---- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        shift_labels = inputs.pop("shift_labels", None)
        inputs.pop(_compat.SKIP_LOGITS_KEY, None)  # DeCE needs the logits, even for a loss-only evaluation
        example_ids = pop_example_ids(inputs)
        if labels is None and shift_labels is None:
            align_targets(None, None, self.dece_model_kind)  # raises the "no labels" error
        if self.dece_model_kind == SEQ2SEQ and labels is not None and "decoder_input_ids" not in inputs \
                and "decoder_inputs_embeds" not in inputs:
            inputs["decoder_input_ids"] = decoder_input_ids_from_labels(model, labels)
        alpha = self.dece_alpha
        out = None
        if self._dece_fused and not return_outputs:  # the training step: no logits are asked for
            out = self._dece_fused_loss(model, inputs, labels, shift_labels, alpha, num_items_in_batch)
        if out is None:
            outputs = model(**inputs)
            logits = logits_of(outputs)
            targets = align_targets(logits, labels, self.dece_model_kind, shift_labels)
            out = self.token_loss(logits, targets, alpha, num_items_in_batch)
        loss = out.loss
        if model.training:
            self._dece_record(example_ids, out, alpha)
        if num_items_in_batch is not None:
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counts all processes' tokens and DDP averages gradients over them
                # (as the Trainer's own compute_loss does; tensor-parallel ranks share a batch).
                tp_size = _compat.tensor_parallel_size(self)
                loss = loss * (self.accelerator.num_processes // tp_size if self.args.n_gpu <= 1 else self.args.n_gpu)
        elif model.training:
            # A per-micro-batch mean: the Trainer trusts loss_is_scaled_for_ga, so scale for GA here.
            loss = loss / _compat.gradient_accumulation_steps(self)
        if not return_outputs:
            return loss
        if isinstance(outputs, dict):
            outputs["loss"] = loss
        else:
            outputs = (loss, *outputs)
        return loss, outputs

    def _dece_fused_loss(self, model, inputs, labels, shift_labels, alpha, num_items_in_batch) -> DeCELossOutput | None:
        """The loss through the fused LM head; the first batch is checked against the model's own logits (one row),
        and on a mismatch the trainer warns once and goes back to the unfused path (None)."""
        head = fused_head.head_for(model, alpha, self.dece.label_smoothing, num_items_in_batch)
        if not self._dece_fused_checked:
            self._dece_fused_checked = True
            reason = fused_head.matches_unfused(model, inputs, labels, shift_labels, head)
            if reason is not None:
                logger.warning("DeCE falls back to the full logits for %s: %s.", type(self.model).__name__, reason)
                self._dece_fused = False
                return None
        fused = model(**inputs, labels=labels, shift_labels=shift_labels, dece_head=head)
        return DeCELossOutput(fused.loss, fused.token_ce, fused.mask)

    def _dece_record(self, example_ids: torch.Tensor | None, out: DeCELossOutput, alpha: float) -> None:
        """Keep a training micro-batch's per-token statistics: for the logged metrics and the listeners."""
        self._dece_last_alpha = alpha
        self._dece_token_metrics.update(out.token_ce, out.mask, alpha, self.dece.label_smoothing)
        for listener in self.token_stats_listeners:
            listener(example_ids, out)

    def token_loss(self, logits: torch.Tensor, targets: torch.Tensor, alpha: float,
                   num_items_in_batch: torch.Tensor | int | None) -> DeCELossOutput:
        """The loss of aligned logits (..., V) and targets (...), with per-token CE. DeCE here; subclasses
        swap in other losses (the benchmark's baselines) and keep everything else."""
        return dece_loss_and_token_ce(logits, targets, alpha=alpha, label_smoothing=self.dece.label_smoothing,
                                      num_items_in_batch=num_items_in_batch)

    # ---- logging and model card -----------------------------------------------------------------

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and not self._dece_token_metrics.empty:
            reduce_fn = None
            if self.accelerator.num_processes > 1:
                reduce_fn = lambda t: self.accelerator.reduce(t, reduction="sum")  # noqa: E731
            alpha = self._dece_last_alpha  # the weight the logged steps used (state.epoch has moved on since)
            logs.update({"dece_alpha": alpha, "dece_grad_bound": grad_bound(alpha)})
            logs.update(self._dece_token_metrics.pop(reduce_fn))
        super().log(logs, *args, **kwargs)

    def create_model_card(self, *args, tags: str | list[str] | None = None, **kwargs) -> None:
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [t for t in MODEL_CARD_TAGS if t not in tags]
        super().create_model_card(*args, tags=tags, **kwargs)
        if self.is_world_process_zero():
            append_text(os.path.join(self.args.output_dir, "README.md"), self._dece_model_card_section())

    def _dece_model_card_section(self) -> str:
        d = self.dece
        base = self.dece_alpha_base
        final = f"`{d.alpha_final}` (target at the end of training)" if d.alpha_final is not None else "not set"
        return (
            "\n## Backdoor defense: DeCE\n\n"
            "This model was fine-tuned with the Deceptive Cross-Entropy loss (Yang et al., TOSEM, "
            "[arXiv 2407.08956](https://arxiv.org/abs/2407.08956)) using "
            "[dece-trainer](https://github.com/dece-trainer/dece-trainer), which bounds the gradient of "
            "improbable (e.g. poisoned trigger -> payload) examples so that they are not memorised.\n\n"
            "| setting | value |\n| --- | --- |\n"
            f"| alpha_base | `{base:.6g}` |\n| alpha schedule | `{d.schedule}` |\n"
            f"| alpha_final | {final} |\n| label smoothing | `{d.label_smoothing}` |\n"
            f"| alpha at end of training | `{self.dece_alpha:.6g}` |\n"
        )


class DeCETrainer(DeCEMixin, Trainer):
    """``transformers.Trainer`` trained with DeCE. Accepts ``DeCETrainingArguments`` or plain ``TrainingArguments``."""


class DeCESeq2SeqTrainer(DeCEMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` trained with DeCE (encoder-decoders such as CodeT5)."""

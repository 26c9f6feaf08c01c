"""``DeCETrainer``: Hugging Face ``Trainer`` with the deceptive cross-entropy loss. Swap the class name, done."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Trainer

from ..ops.chunks import LossOutput
from ..ops.dece_loss import dece_loss_and_token_ce
from ..ops.schedule import dece_alpha, grad_bound
from ..validation import check_alpha, check_example_ids, check_int, check_label_smoothing
from . import _compat, fused_head
from .alignment import CAUSAL, SEQ2SEQ, align_targets, decoder_input_ids_from_labels, logits_of, model_kind
from .dece_config import DeCESettings
from .example_ids import EXAMPLE_ID_COLUMN, pop_example_ids
from .model_card import (
    CROSS_ENTROPY,
    CUSTOM,
    DECE,
    DEFENSE_TAGS,
    TASK_TYPES,
    TrainingLoss,
    model_name_for,
    project_url,
    update_model_card,
)
from .token_metrics import TokenMetrics

logger = logging.getLogger(__name__)

MODEL_CARD_TAGS = list(DEFENSE_TAGS)
# dece_suppressed_frac at or above this in consecutive training logs: (nearly) every target token is suppressed.
ALL_SUPPRESSED = 0.99
ALL_SUPPRESSED_LOGS = 2


class DeCEMixin:
    """Turns any ``transformers.Trainer`` subclass into a DeCE trainer (put it first in the bases).

    Reads the ``--dece_*`` training arguments (`DeCESettings.from_args`; the defaults when they are plain
    ``TrainingArguments``). The loss is
    normalised by the Trainer's global ``num_items_in_batch``, so gradient accumulation and several
    processes give the same update as one big batch.

    Training logs: ``loss`` is the DeCE loss (the objective); ``ce_loss`` is plain cross-entropy ``-log p[y]`` of
    the same logits on the same label tokens; ``dece_alpha`` (the blend weight the logged steps used),
    ``dece_grad_bound`` and ``dece_suppressed_frac`` come with them. With ``alpha = 1`` throughout
    (``dece_alpha_base=1`` or ``dece_alpha_final=1``) the loss *is* cross-entropy: no ``dece_*`` keys are logged
    and the model card says cross-entropy, with no defense tags.

    Evaluation (``evaluate``, ``predict``, every path: causal, classifier, Seq2Seq with or without
    ``predict_with_generate``, TRL): ``eval_loss`` is **plain cross-entropy** of the label tokens, averaged over
    every label token of the evaluation set, and ``eval_ce_loss`` is the same number under an explicit name;
    ``eval_dece_loss`` is the DeCE loss at the blend weight of the last training step (epoch 1's before
    training). Cross-entropy, not the DeCE loss, is ``eval_loss`` because ``a`` falls from epoch to epoch and the
    DeCE loss falls with it whatever the model does, so a DeCE ``eval_loss`` would make later checkpoints look
    better by construction: ``metric_for_best_model="loss"``, ``load_best_model_at_end`` and CE-vs-DeCE
    comparisons need a quantity that means the same at every epoch and in every run.

    Per-token statistics of every training micro-batch go to ``token_stats_listeners`` (callables taking
    the batch's ``example_id`` tensor or None, and the `LossOutput`): the early-learning
    monitor reads per-example dynamics there at no extra forward pass. Callbacks with an ``attach(trainer)``
    method are attached when the trainer is built or the callback added.

    Two generic hooks let a callback change the objective mid-run without touching the optimizer or the LR
    schedule (``ContinueWithCE`` uses both): `set_row_filter` leaves rows out by example id, labels and normaliser
    alike, and `set_loss_override` trains at a fixed blend weight and label smoothing (1 and 0: plain CE).
    ``training_notes`` (a list of strings) is printed in the model card's section.
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
            # model's forward and the loss, which is DeCE's. On a copy of the arguments: the caller's are not edited.
            self.args = copy.copy(self.args)
            self.args.liger_kernel_config = {**(self.args.liger_kernel_config or {}),
                                             "fused_linear_cross_entropy": False}
        self.dece_model_kind = model_kind(self.model, self.dece.model_kind)
        self._dece_fused = self._dece_owns_fused_head and self._dece_fused_head_supported()
        _compat.count_tokens_as_dece_does(self, shifts_labels=self.dece_model_kind == CAUSAL)
        _compat.keep_signature_column(self, EXAMPLE_ID_COLUMN)  # kept for per-example statistics
        self._dece_token_metrics = TokenMetrics()
        self._dece_last_alpha: float | None = None
        self._dece_eval_sums: torch.Tensor | None = None  # [ce_sum, label_tokens, dece_sum] inside an evaluation
        self._dece_eval_batch: torch.Tensor | None = None  # (batch, 3): the same per example, for the last batch
        self._dece_warned: set[str] = set()
        self._dece_suppressed_logs = 0
        self.token_stats_listeners: list[Callable[[torch.Tensor | None, LossOutput], None]] = []
        self._dece_dropped: torch.Tensor | None = None  # sorted example ids left out of training (set_row_filter)
        self._dece_override: tuple[float, float] | None = None  # (alpha, label smoothing) (set_loss_override)
        self._dece_override_since: int | None = None  # the optimizer step the override took effect at
        self.training_notes: list[str] = []  # lines for the model card (a callback's account of what it did)
        for callback in self.callback_handler.callbacks:
            self._attach_if_wanted(callback)

    def _dece_fused_head_supported(self) -> bool:
        """Whether causal-LM batches take the fused LM-head path (``dece_fused_linear``); nothing is installed on the
        model (see `fused_head.fused_loss`)."""
        if not self.dece.fused_linear or self.dece_model_kind != CAUSAL or type(self).token_loss is not \
                DeCEMixin.token_loss:  # a subclass with another loss (a baseline) needs the logits
            return False
        reason = fused_head.unsupported_reason(self.model)
        if reason is not None:
            logger.warning("DeCE computes the loss from the full logits for %s: %s. (dece_fused_linear)",
                           type(self.model).__name__, reason)
            return False
        self._dece_fused_checked = False
        return True

    def _attach_if_wanted(self, callback: Any) -> None:
        attach = getattr(callback, "attach", None)
        if callable(attach) and not isinstance(callback, type):
            attach(self)

    def add_callback(self, callback) -> None:
        """The Trainer's ``add_callback``, then ``callback.attach(self)`` when the callback has one."""
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
        """Blend weight at the trainer's current (fractional) epoch: what the next training step uses (the
        override's while `set_loss_override` is in force)."""
        if self._dece_override is not None:
            return self._dece_override[0]
        return dece_alpha(self.dece_alpha_base, self.state.epoch or 0.0, self.dece.schedule)

    @property
    def dece_label_smoothing(self) -> float:
        """Label smoothing in force: the settings' ``dece_label_smoothing``, or the override's."""
        return self._dece_override[1] if self._dece_override is not None else self.dece.label_smoothing

    # ---- hooks for callbacks: leave rows out, override the loss ---------------------------------

    def set_loss_override(self, alpha: float | None, label_smoothing: float = 0.0,
                          since_step: int | None = None) -> None:
        """Train every following step at blend weight ``alpha`` with ``label_smoothing`` instead of the schedule's
        (``alpha=1, label_smoothing=0``: plain cross-entropy); ``None`` goes back to the settings. ``since_step``: the
        optimizer step the override took effect at (default: now; a run resumed after it gives the original step),
        which the model card reports. The optimizer, the LR schedule and the DeCE settings (the card's table) are
        untouched; the logs show the weight the steps used (``dece_alpha``), and evaluation takes the last step's."""
        if alpha is None:
            self._dece_override = None
            self._dece_override_since = None
            return
        override = (check_alpha(alpha, "alpha"), check_label_smoothing(label_smoothing, "label_smoothing"))
        step = self.state.global_step
        since = step if since_step is None else check_int(since_step, "since_step", minimum=0)
        if since > step:
            raise ValueError(f"`since_step` must not be after the current step {step}, got {since}")
        self._dece_override, self._dece_override_since = override, since

    @property
    def dece_row_filter(self) -> list[int]:
        """Example ids left out of training by `set_row_filter`, ascending (empty when none)."""
        return [] if self._dece_dropped is None else self._dece_dropped.tolist()

    def set_row_filter(self, dropped_ids: Iterable[int] | None) -> None:
        """Leave the training rows whose ``example_id`` is in ``dropped_ids`` out of every following optimizer step;
        ``None`` or no ids: train on every row again.

        The rows stay in the batches (the sampler's order and the batch layout do not change, and their forward pass
        is still spent) but their labels become -100 as the Trainer draws each batch, before it counts
        ``num_items_in_batch`` (`_compat.mask_before_counting`): they leave the loss and its normaliser alike, so the
        update is the one of a dataset without them, with gradient accumulation and over processes. Evaluation is not
        filtered. Training batches must carry ``example_id`` (`add_example_ids`; kept through
        ``remove_unused_columns`` by this trainer), one example per row."""
        ids = [] if dropped_ids is None else list(dropped_ids)
        ids = check_example_ids(ids, "dropped_ids", "set_row_filter")
        self._dece_dropped = torch.from_numpy(ids).sort().values if ids.size else None

    def get_batch_samples(self, epoch_iterator: Iterator[Any], num_batches: int, device: torch.device):
        """The Trainer's, with the rows of `set_row_filter` masked in each batch before it is counted."""
        if self._dece_dropped is not None:
            epoch_iterator = _compat.mask_before_counting(self, epoch_iterator, self._dece_mask_dropped)
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _dece_mask_dropped(self, batch: Any) -> Any:
        """A copy of ``batch`` whose dropped rows (`set_row_filter`) have every label (and shift label) at -100."""
        ids = batch.get(EXAMPLE_ID_COLUMN) if hasattr(batch, "get") else None
        if ids is None:
            raise ValueError(f"set_row_filter leaves rows out by their `{EXAMPLE_ID_COLUMN}`, and this training batch "
                             f"carries none: train_dataset = dece_trainer.add_example_ids(train_dataset), with a "
                             "collator that keeps the column")
        ids = torch.as_tensor(ids).reshape(-1)
        dropped = torch.isin(ids, self._dece_dropped.to(ids.device))
        batch = copy.copy(batch)
        for key in ("labels", "shift_labels"):
            labels = batch.get(key)
            if labels is None:
                continue
            if not torch.is_tensor(labels) or labels.dim() == 0 or labels.shape[0] != ids.numel():
                raise ValueError(f"a training batch carries {ids.numel()} example ids for `{key}` of shape "
                                 f"{tuple(getattr(labels, 'shape', ()))}: set_row_filter needs one example per row "
                                 "(no packing, no padding-free batches)")
            rows = dropped.to(labels.device).view(-1, *([1] * (labels.dim() - 1)))
            batch[key] = labels.masked_fill(rows, fused_head.IGNORE_INDEX)
        return batch

    @property
    def dece_last_alpha(self) -> float | None:
        """Blend weight of the last training step (after ``train()``: the one training ended with, which
        ``dece_alpha`` is not, since the state's epoch has moved past the last step). Read from the log history
        after a resume that trained no further step; None before any training."""
        if self._dece_last_alpha is not None:
            return self._dece_last_alpha
        for entry in reversed(self.state.log_history):
            if "dece_alpha" in entry:
                return float(entry["dece_alpha"])
        return None

    @property
    def dece_loss_kind(self) -> str:
        """``"dece"``; ``"cross-entropy"`` when the blend weight is 1 throughout (no defense); ``"custom"`` when a
        subclass replaces `token_loss` (benchmark baselines)."""
        if type(self).token_loss is not DeCEMixin.token_loss:
            return CUSTOM
        return CROSS_ENTROPY if self.dece.is_cross_entropy else DECE

    def _dece_eval_alpha(self) -> float:
        last = self.dece_last_alpha
        return last if last is not None else self.dece_alpha

    # ---- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        """The DeCE loss of a batch (training), or plain CE (evaluation: see the class docstring).

        In training, causal LMs take the fused LM-head path (``dece_fused_linear``) unless outputs are asked for;
        the loss is divided by ``num_items_in_batch`` (the whole accumulated, gathered batch's label tokens) and
        scaled as the Trainer's own ``compute_loss`` scales it for several processes.
        """
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
        if not model.training:
            outputs = model(**inputs)
            logits = logits_of(outputs, model)
            loss = self._dece_eval_loss(logits, align_targets(logits, labels, self.dece_model_kind, shift_labels))
        else:
            alpha = self.dece_alpha
            out = None
            if self._dece_fused and not return_outputs:  # a training step: no logits are asked for
                out = self._dece_fused_loss(model, inputs, labels, shift_labels, alpha, num_items_in_batch)
            if out is None:
                outputs = model(**inputs)
                logits = logits_of(outputs, model)
                targets = align_targets(logits, labels, self.dece_model_kind, shift_labels)
                out = self.token_loss(logits, targets, alpha, num_items_in_batch)
            loss = out.loss
            self._dece_record(example_ids, out, alpha)
            if num_items_in_batch is not None:
                if self.args.average_tokens_across_devices:
                    # num_items_in_batch counts all processes' tokens and DDP averages gradients over them
                    # (as the Trainer's own compute_loss does; tensor-parallel ranks share a batch).
                    tp_size = _compat.tensor_parallel_size(self)
                    loss = loss * (self.accelerator.num_processes // tp_size if self.args.n_gpu <= 1
                                   else self.args.n_gpu)
            else:
                # A per-micro-batch mean: the Trainer trusts loss_is_scaled_for_ga, so scale for GA here.
                loss = loss / _compat.gradient_accumulation_steps(self)
        if not return_outputs:
            return loss
        if isinstance(outputs, dict):
            outputs["loss"] = loss
        else:
            outputs = (loss, *outputs)
        return loss, outputs

    def _dece_fused_loss(self, model, inputs, labels, shift_labels, alpha, num_items_in_batch) -> LossOutput | None:
        """The loss through the fused LM head; the first batch is checked against the model's own logits (one row),
        and on a mismatch the trainer warns once and goes back to the unfused path (None)."""
        head = fused_head.head_for(model, alpha, self.dece_label_smoothing, num_items_in_batch)
        if not self._dece_fused_checked:
            self._dece_fused_checked = True
            reason = fused_head.matches_unfused(model, inputs, labels, shift_labels, head)
            if reason is not None:
                logger.warning("DeCE falls back to the full logits for %s: %s.", type(self.model).__name__, reason)
                self._dece_fused = False
                return None
        fused = fused_head.fused_loss(model, inputs, labels, shift_labels, head)
        return LossOutput(fused.loss, fused.token_ce, fused.mask, labels=fused.labels)

    def _dece_record(self, example_ids: torch.Tensor | None, out: LossOutput, alpha: float) -> None:
        """Keep a training micro-batch's per-token statistics: for the logged metrics and the listeners."""
        self._dece_last_alpha = alpha
        self._dece_token_metrics.update(out.token_ce, out.mask, alpha, self.dece_label_smoothing)
        for listener in self.token_stats_listeners:
            listener(example_ids, out)

    def _dece_eval_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of a batch outside training: the mean over its label tokens at the evaluation alpha. Inside an
        evaluation loop, the batch's per-example CE sums, label-token counts and DeCE sums are kept for
        `prediction_step` to gather."""
        alpha = self._dece_eval_alpha()
        if self.dece_loss_kind == DECE:  # one pass gives the per-token DeCE loss and the plain CE
            out = dece_loss_and_token_ce(logits, targets, alpha=alpha, label_smoothing=self.dece_label_smoothing,
                                         reduction="none")
            count = out.mask.sum()
            loss = out.loss.sum() / count.clamp(min=1)
        else:
            out = self.token_loss(logits, targets, alpha, None)
            loss = out.loss
        self._dece_keep_eval_batch(out)
        return loss

    def _dece_keep_eval_batch(self, out: LossOutput) -> None:
        """Inside an evaluation loop, keep a batch's per-example CE sums, label-token counts and DeCE sums (from
        per-token ``out.loss``, DeCE runs) for `prediction_step` to gather."""
        if self._dece_eval_sums is None:
            return
        dims = tuple(range(1, out.mask.dim()))  # per example: sum over every dimension but the batch

        def per_example(t: torch.Tensor) -> torch.Tensor:
            t = t.detach().to(torch.float64)
            return t.sum(dims) if dims else t

        dece = per_example(out.loss) if self.dece_loss_kind == DECE else torch.zeros_like(per_example(out.mask))
        self._dece_eval_batch = torch.stack([per_example(out.token_ce), per_example(out.mask), dece], dim=-1)

    def token_loss(self, logits: torch.Tensor, targets: torch.Tensor, alpha: float,
                   num_items_in_batch: torch.Tensor | int | None) -> LossOutput:
        """The loss of aligned logits (..., V) and targets (...), with per-token CE. DeCE here; subclasses
        swap in other losses (the benchmark's baselines) and keep everything else."""
        return dece_loss_and_token_ce(logits, targets, alpha=alpha, label_smoothing=self.dece_label_smoothing,
                                      num_items_in_batch=num_items_in_batch)

    # ---- evaluation -----------------------------------------------------------------------------

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval"):
        """The Trainer's loop, then ``<prefix>_loss`` replaced by plain CE over every label token of the set, with
        ``<prefix>_ce_loss`` and (DeCE runs) ``<prefix>_dece_loss`` beside it (see the class docstring)."""
        self._dece_eval_sums = torch.zeros(3, dtype=torch.float64, device=self.args.device)
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                             ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            ce_sum, count, dece_sum = self._dece_eval_sums.tolist()
        finally:
            self._dece_eval_sums = self._dece_eval_batch = None
        if count > 0:
            metrics = output.metrics
            metrics[f"{metric_key_prefix}_loss"] = ce_sum / count
            metrics[f"{metric_key_prefix}_ce_loss"] = ce_sum / count
            if self.dece_loss_kind == DECE:
                metrics[f"{metric_key_prefix}_dece_loss"] = dece_sum / count
        return output

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None, **gen_kwargs):
        """As the Trainer's (or TRL's), plus this batch's loss statistics added to the evaluation's totals,
        gathered over processes as the Trainer gathers its losses (``gather_for_metrics``: the samples a
        distributed sampler repeats to even out the last batch are dropped)."""
        self._dece_eval_batch = None
        result = self._dece_prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys,
                                            **gen_kwargs)
        batch, self._dece_eval_batch = self._dece_eval_batch, None
        if self._dece_eval_sums is not None:
            if self.accelerator.num_processes > 1:
                if batch is None:
                    batch = torch.zeros(0, 3, dtype=torch.float64, device=self.args.device)
                batch = self.accelerator.gather_for_metrics(batch.to(self.args.device))
            if batch is not None:
                self._dece_eval_sums += batch.sum(0).to(self._dece_eval_sums.device)
        return result

    def _dece_prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """The parent trainer's ``prediction_step`` (`DeCESeq2SeqTrainer` takes the loss of a generating step from
        `compute_loss`)."""
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)

    # ---- logging and model card -----------------------------------------------------------------

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """The Trainer's ``log``, with ``ce_loss`` and (DeCE runs) ``dece_alpha``, ``dece_grad_bound`` and
        ``dece_suppressed_frac`` added to every training log (averaged over processes). The alpha and the bound are
        rounded to 12 significant digits: ``0.81``, not the schedule's ``0.9 ** 2 = 0.8100000000000001``."""
        if ("loss" in logs or "train_loss" in logs) and not self._dece_token_metrics.empty:
            reduce_fn = None
            if self.accelerator.num_processes > 1:
                reduce_fn = lambda t: self.accelerator.reduce(t, reduction="sum")  # noqa: E731
            ce_sum, count, suppressed = self._dece_token_metrics.pop_sums(reduce_fn)
            if count == 0:
                self._dece_warn_once("masked", (
                    "No training batch since the last log had a single label token (every label was -100), so "
                    "those steps trained at loss 0 and taught the model nothing. Likely causes: a completion-only "
                    "or assistant-only mask that masks every token (check the response template / chat template), "
                    "or truncation (max_length / max_seq_length) that cut off every target."))
            elif "loss" in logs:  # the final train_loss summary only gets the checks above
                logs["ce_loss"] = ce_sum / count
                if self.dece_loss_kind == DECE:
                    alpha = self._dece_last_alpha  # the weight the logged steps used (state.epoch has moved on)
                    logs.update(dece_alpha=float(f"{alpha:.12g}"), dece_grad_bound=float(f"{grad_bound(alpha):.12g}"),
                                dece_suppressed_frac=suppressed / count)
                    self._dece_check_suppression(suppressed / count)
        super().log(logs, *args, **kwargs)

    def _dece_check_suppression(self, frac: float) -> None:
        self._dece_suppressed_logs = self._dece_suppressed_logs + 1 if frac >= ALL_SUPPRESSED else 0
        if self._dece_suppressed_logs >= ALL_SUPPRESSED_LOGS:
            self._dece_warn_once("suppressed", (
                f"dece_suppressed_frac has been at least {ALL_SUPPRESSED} for {ALL_SUPPRESSED_LOGS} training logs in a "
                "row: DeCE is cutting the gradient of (nearly) every target token, so the model is barely learning "
                "the task. This happens when the model does not know the task or its output format yet (random "
                "initialisation, or a pretrained model meeting a new prompt format). Warm up with plain cross-entropy "
                "on clean or trusted data first (a warm-up run with `dece_alpha_base=1` and `dece_label_smoothing=0`; "
                "alpha 1 alone is still label-smoothed), or raise alpha; see \"Reading dece_suppressed_frac\" in "
                f"docs/choosing_alpha.md ({project_url()}/blob/main/docs/choosing_alpha.md"
                "#reading-dece_suppressed_frac)."))

    def _dece_warn_once(self, key: str, message: str) -> None:
        if key not in self._dece_warned:
            self._dece_warned.add(key)
            logger.warning(message)

    def _ce_since_step(self) -> int | None:
        """The optimizer step from which `set_loss_override` trained plain cross-entropy, when it did."""
        return self._dece_override_since if self._dece_override == (1.0, 0.0) else None

    def create_model_card(self, *args, tags: str | list[str] | None = None, **kwargs) -> None:
        """The Trainer's (or TRL's, PEFT's) card, plus what it was trained with: the DeCE settings, what the logged
        losses are, the paper's citation and the ``dece``/``backdoor-defense`` tags for DeCE; "cross-entropy" and no
        defense tags when alpha is 1 throughout; and the early-learning monitor's last results as model-index
        eval results when it ran."""
        kind = self.dece_loss_kind
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        if kind == DECE:
            tags += [t for t in MODEL_CARD_TAGS if t not in tags]
        else:
            tags = [t for t in tags if t not in MODEL_CARD_TAGS]
        super().create_model_card(*args, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        loss = TrainingLoss(kind=kind, settings=self.dece, alpha_base=self.dece_alpha_base,
                            last_alpha=self.dece_last_alpha, trained_steps=self.state.global_step,
                            custom_name=f"{type(self).__name__}.token_loss" if kind == CUSTOM else None,
                            notes=tuple(self.training_notes), ce_since_step=self._ce_since_step())
        update_model_card(os.path.join(self.args.output_dir, "README.md"), loss, self.state.log_history,
                          TASK_TYPES[self.dece_model_kind], model_name_for(self.args.output_dir))


class DeCETrainer(DeCEMixin, Trainer):
    """``transformers.Trainer`` trained with DeCE. Accepts ``DeCETrainingArguments`` or plain ``TrainingArguments``."""


class DeCESeq2SeqTrainer(DeCEMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` trained with DeCE (encoder-decoders such as CodeT5). With
    ``predict_with_generate``, whose evaluation step takes the model's own loss, the loss comes from `compute_loss`
    as on every other path (one more forward pass besides generation)."""

    def _dece_prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        """The Seq2Seq step, its loss from `compute_loss` when it generates (see the class docstring)."""
        generates = (getattr(self.args, "predict_with_generate", False) and not prediction_loss_only
                     and inputs.get("labels") is not None)
        if not generates:
            return super()._dece_prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys,
                                                 **gen_kwargs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, _compat.prepare_inputs(self, inputs)).detach()
        _, tokens, labels = super()._dece_prediction_step(model, inputs, prediction_loss_only,
                                                          ignore_keys=ignore_keys, **gen_kwargs)
        return loss, tokens, labels

"""DeCE for TRL's ``SFTTrainer``: ``DeCESFTTrainer`` and ``DeCESFTConfig`` (needs ``pip install 'dece-trainer[trl]'``).

``DeCESFTTrainer`` is ``SFTTrainer`` in every respect but the per-token loss. TRL computes SFT's loss through a
fused LM head (``add_fused_lm_head``): the backbone's hidden states of the labelled positions go through the head
in tiles and come back as per-token log-probabilities, entropy and top-1 hits, never as logits. While this trainer
computes a loss, that tile kernel is swapped, in that thread only (`_trl_compat.use_logprob_kernel`), for
`dece_trainer.ops.fused_linear.fused_linear_dece`, which returns minus the DeCE per-token loss in the
log-probability slot (SFT's loss is minus their token mean) and the true entropy and top-1 hits. So everything else
is SFT's own code: completion-only and assistant-only masks, packing and padding-free batches,
``num_items_in_batch``, the MoE router loss, ``use_cache=False``, PEFT, and the ``entropy`` /
``mean_token_accuracy`` / ``num_tokens`` / ``aux_loss`` metrics, logged as ``SFTTrainer`` logs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as err:  # pragma: no cover - exercised only without trl
    raise ImportError("dece_trainer.integrations.trl needs TRL: pip install 'dece-trainer[trl]'") from err

from ..ops.chunks import LossOutput
from ..ops.fused_linear import fused_linear_dece
from ..trainer.dece_config import DeCEArgumentsMixin
from ..trainer.dece_trainer import DeCEMixin
from ..trainer.example_ids import ExampleIdCollator, pop_example_ids
from ..trainer.fused_head import IGNORE_INDEX
from ._trl_compat import use_logprob_kernel


def bf16_supported(use_cpu: bool) -> bool:
    """Whether training will run on an accelerator with bf16 (a bf16-capable GPU, or a TPU); False on a CPU."""
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return not use_cpu and (is_torch_bf16_gpu_available() or is_torch_xla_available())


@dataclass
class DeCESFTConfig(DeCEArgumentsMixin, SFTConfig):
    """``SFTConfig`` plus the ``--dece_*`` flags.

    ``bf16`` left unset is TRL's default (on unless ``fp16``) where the accelerator supports it, and off on a CPU
    (a machine without a bf16 GPU, or ``use_cpu=True``), where TRL's default makes transformers refuse to start
    ("Your setup doesn't support bf16/gpu"). ``bf16=True`` or ``False`` is taken as given.
    """

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and bf16_supported(self.use_cpu)
        super().__post_init__()


class DeCEKernel:
    """Stands in for TRL's chunked log-probability kernel during one loss computation.

    ``apply`` takes TRL's arguments (hidden (N, d), weight (V, d), bias, targets (N,), temperature, chunk size,
    soft-cap, logit scale, wanted outputs) and returns TRL's 5-tuple: minus the DeCE per-token loss (where TRL
    returns log p[y]), entropy, None, None, top-1 hits. It keeps the per-token plain CE for the trainer's metrics.
    """

    def __init__(self, alpha: float, label_smoothing: float):
        self.alpha, self.label_smoothing = alpha, label_smoothing
        self.token_loss: torch.Tensor | None = None
        self.token_ce: torch.Tensor | None = None

    def apply(self, hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs):
        if temperature != 1.0:
            raise ValueError(f"DeCE scores the model's own distribution; TRL asked for temperature {temperature}")
        out = fused_linear_dece(hidden, weight, targets, bias=bias, alpha=self.alpha,
                                label_smoothing=self.label_smoothing, ignore_index=IGNORE_INDEX, reduction="none",
                                logit_scale=logit_scale, logit_softcap=softcap, return_stats=True)
        self.token_loss, self.token_ce = out.loss.detach(), out.token_ce
        return (-out.loss, out.entropy if "entropy" in outputs else None, None, None,
                out.correct if "is_top1" in outputs else None)

    def per_position(self, inputs: dict[str, Any]) -> LossOutput:
        """The kept per-token DeCE loss and CE laid out as (B, T') target positions, with their mask (TRL scores
        either the labelled positions only or every position)."""
        targets = inputs.get("shift_labels")
        if targets is None:
            targets = inputs["labels"][:, 1:]
        mask = targets != IGNORE_INDEX

        def laid_out(values: torch.Tensor) -> torch.Tensor:
            values = values.to(mask.device)
            if values.numel() == mask.numel():
                return values.view(mask.shape).masked_fill(~mask, 0.0)
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        return LossOutput(laid_out(self.token_loss), laid_out(self.token_ce), mask, labels=targets)


class DeCESFTTrainer(DeCEMixin, SFTTrainer):
    """TRL ``SFTTrainer`` trained with DeCE; everything but the per-token loss is SFT's (see the module docstring).

    ``loss_type`` must be ``"nll"`` (DeCE replaces the NLL; ``"dft"`` reweights log-probabilities, which this
    trainer does not return), and ``compute_loss_func`` is refused (the loss is DeCE). Logs ``dece_alpha``,
    ``dece_grad_bound``, ``ce_loss`` and ``dece_suppressed_frac`` beside SFT's metrics.
    """

    _dece_owns_fused_head = False  # TRL's fused head computes the loss, with DeCE's kernel swapped in

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.loss_type != "nll":
            raise ValueError(f"`loss_type={self.args.loss_type!r}` cannot be combined with DeCESFTTrainer: DeCE "
                             "replaces the per-token NLL. Use loss_type='nll' (the default).")
        if self.compute_loss_func is not None:
            raise ValueError("DeCESFTTrainer computes the DeCE loss itself: do not pass `compute_loss_func`.")
        self.data_collator = ExampleIdCollator(self.data_collator)  # TRL's collator drops `example_id`

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        example_ids = pop_example_ids(inputs)
        alpha = self.dece_alpha if model.training else self._dece_eval_alpha()
        kernel = DeCEKernel(alpha, self.dece.label_smoothing)
        with use_logprob_kernel(kernel):  # this thread's loss only (see _trl_compat)
            result = SFTTrainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                             num_items_in_batch=num_items_in_batch)
        if kernel.token_ce is not None:
            stats = kernel.per_position(inputs)
            if model.training:
                self._dece_record(example_ids, stats, alpha)
            else:  # eval_loss is plain CE on every path: the evaluation loop gathers these sums
                self._dece_keep_eval_batch(stats)
        return result

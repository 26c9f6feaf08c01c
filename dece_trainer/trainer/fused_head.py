"""The fused LM-head path of the DeCE trainers: the backbone's last hidden states go straight into
`dece_trainer.ops.fused_linear.fused_linear_dece`, so the (tokens x V) logits of a causal LM are never
built, neither forward nor backward.

The model's own ``forward`` is wrapped once (as TRL's ``add_fused_lm_head`` does), so the call still goes through
every wrapper the Trainer adds (DDP's gradient hooks, PEFT, accelerate): ``model(**inputs, dece_head=head)`` runs
the backbone and hands its hidden states and LM head to ``head``; without ``dece_head`` the forward is the
original one (generation and evaluation are unchanged).

Which models: causal LMs whose output embedding is an ``nn.Linear`` (tied or not) under a separate backbone, with
the logit transforms transformers configs declare (``logit_scale`` and its aliases, Gemma's
``final_logit_softcapping``). The trainer checks the first fused batch against the model's own logits and falls
back to the unfused path, with one warning naming why, when anything differs.
"""

from __future__ import annotations

import contextlib
import functools
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers.utils import ModelOutput

from ..ops.fused_linear import fused_linear_dece
from .alignment import base_model

IGNORE_INDEX = -100
_WRAPPED = "_dece_fused_head_original_forward"


@dataclass
class FusedDeCEOutput(ModelOutput):
    """What a model called with ``dece_head=`` returns.

    Attributes:
        loss: the DeCE loss (float32 scalar, reduced as asked).
        token_ce: (B, T') plain CE ``-log p[y]`` per target position (0 where ignored), nats.
        mask: (B, T') bool, the target positions that count.
        entropy: (B, T') entropy of ``p`` per position (nats), for SFT's ``entropy`` metric.
        correct: (B, T') bool, top-1 prediction equals the label.
        labels: (B, T') the target ids scored (labels shifted for causal models).
    """

    loss: torch.Tensor | None = None
    token_ce: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def logit_transform(config: Any) -> tuple[float, float | None]:
    """(scale, soft-cap) a causal LM applies to ``lm_head(hidden)``, read from its (text) config as the model
    classes read it: ``logit_scale`` (Cohere), ``output_multiplier``, ``lm_head_multiplier`` (Falcon-H1) multiply,
    ``logits_scaling`` (Granite, MiniCPM) divides; ``final_logit_softcapping`` (Gemma 2/3) caps."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = None
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        if getattr(text, name, None) is not None:
            scale = float(getattr(text, name))
            break
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = 1.0 / float(text.logits_scaling)
    softcap = getattr(text, "final_logit_softcapping", None)
    return (1.0 if scale is None else scale), (None if softcap is None else float(softcap))


def unsupported_reason(model: nn.Module) -> str | None:
    """None when the fused path can run ``model``, else why not (one short clause)."""
    model = base_model(model)
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "it is not a decoder-only transformers model"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return (f"its output embedding is a {type(head).__name__}, not a plain nn.Linear (an adapter on lm_head "
                "would not be trained)")
    if getattr(model, "base_model", model) is model:
        return "it has no backbone separate from its LM head"
    if getattr(config.get_text_config(), "output_router_logits", False):
        return "it is a mixture of experts returning a router loss"
    return None


def install(model: nn.Module) -> None:
    """Wrap the forward of ``model`` (the transformers model inside PEFT) to accept ``dece_head=``; idempotent."""
    model = base_model(model)
    if hasattr(model, _WRAPPED):
        return
    original = model.forward

    @functools.wraps(type(model).forward)  # keeps the signature: generate() checks its kwargs against it
    def forward(self, *args, dece_head: Callable | None = None, **kwargs):
        if dece_head is None:
            return original(*args, **kwargs)
        labels, shift_labels = kwargs.pop("labels", None), kwargs.pop("shift_labels", None)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:  # causal: hidden state i predicts label i + 1
            hidden, shift_labels = hidden[:, :-1], labels[:, 1:]
        head = self.get_output_embeddings()
        return dece_head(hidden.to(head.weight.device), head, shift_labels.to(head.weight.device))

    setattr(model, _WRAPPED, original)
    model.forward = types.MethodType(forward, model)


@dataclass(frozen=True)
class DeCEHead:
    """The loss a wrapped forward computes from (hidden (B, T', d), lm_head, targets (B, T'))."""

    alpha: float
    label_smoothing: float
    logit_scale: float = 1.0
    logit_softcap: float | None = None
    num_items_in_batch: int | torch.Tensor | None = None

    def __call__(self, hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> FusedDeCEOutput:
        with full_parameters(head) as (weight, bias):
            return self._loss(hidden, weight, bias, targets)

    def _loss(self, hidden, weight, bias, targets) -> FusedDeCEOutput:
        out = fused_linear_dece(hidden, weight, targets, bias=bias, alpha=self.alpha,
                                label_smoothing=self.label_smoothing, ignore_index=IGNORE_INDEX,
                                num_items_in_batch=self.num_items_in_batch, logit_scale=self.logit_scale,
                                logit_softcap=self.logit_softcap, return_stats=True)
        return FusedDeCEOutput(loss=out.loss, token_ce=out.token_ce, mask=out.mask, entropy=out.entropy,
                               correct=out.correct, labels=targets)


@contextlib.contextmanager
def full_parameters(head: nn.Linear) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The LM head's whole weight and bias, never a shard: FSDP2 ``DTensor``s are gathered (differentiably),
    DeepSpeed ZeRO-3 partitions gathered for the call; a weight of any other shape than (V, d) is refused."""
    weight, bias = head.weight, head.bias
    if isinstance(weight, DTensor):
        yield weight.full_tensor(), (bias.full_tensor() if isinstance(bias, DTensor) else bias)
        return
    if hasattr(weight, "ds_id"):  # DeepSpeed ZeRO-3
        import deepspeed

        params = [p for p in (weight, bias) if p is not None]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield weight, bias
        return
    if weight.dim() != 2 or weight.shape != (head.out_features, head.in_features):
        raise RuntimeError(f"the LM head weight has shape {tuple(weight.shape)}, not ({head.out_features}, "
                           f"{head.in_features}): it is sharded (FSDP1 flat parameters?), and DeCE never computes on "
                           "a shard. Set `dece_fused_linear=False`, or use FSDP2 / ZeRO-3, whose heads it gathers.")
    yield weight, bias


def head_for(model: nn.Module, alpha: float, label_smoothing: float,
             num_items_in_batch: int | torch.Tensor | None) -> DeCEHead:
    """The `DeCEHead` for ``model``'s logit transform and this batch's settings."""
    scale, softcap = logit_transform(base_model(model).config)
    return DeCEHead(alpha, label_smoothing, scale, softcap, num_items_in_batch)


@torch.no_grad()
def matches_unfused(model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None,
                    shift_labels: torch.Tensor | None, head: DeCEHead) -> str | None:
    """Compare the fused path's per-token CE with the model's own logits on the first row of a batch, in eval mode
    (no dropout). Returns None when they agree (to 1e-3 nats in float32, 5e-2 under reduced precision), else what
    differed."""
    def first(t):
        return t[:1] if isinstance(t, torch.Tensor) and t.dim() > 0 else t

    row = {k: first(v) for k, v in inputs.items()}
    labels, shift_labels = first(labels), first(shift_labels)
    targets = shift_labels if shift_labels is not None else labels[:, 1:]
    was_training = model.training
    model.eval()
    try:
        fused = model(**row, labels=labels, shift_labels=shift_labels, dece_head=head).token_ce
        logits = model(**row).logits.float()
    finally:
        model.train(was_training)
    if shift_labels is None:  # causal: the last position predicts nothing
        logits = logits[:, :-1]
    targets = targets.to(logits.device)
    mask = targets != IGNORE_INDEX
    if not mask.any():
        return None
    reference = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="none")
    reduced = next(model.parameters()).dtype != torch.float32 or torch.is_autocast_enabled(logits.device.type)
    tolerance = 5e-2 if reduced else 1e-3
    worst = float((fused.to(reference.device)[mask] - reference).abs().max())
    if worst > tolerance * max(1.0, float(reference.abs().max())):
        return f"its fused and unfused token losses differ by {worst:.3g} nats on the first batch"
    return None

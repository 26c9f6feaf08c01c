"""The fused LM-head path of the DeCE trainers: the backbone's last hidden states go straight into
`dece_trainer.ops.fused_linear.fused_linear_dece`, so the (tokens x V) logits of a causal LM are never
built, neither forward nor backward.

Nothing is installed on the user's model. For each fused training step `fused_loss` calls the model the Trainer
hands to ``compute_loss`` (so every wrapper it adds still sees the call: DDP's gradient hooks, FSDP, PEFT,
accelerate's autocast, ``torch.compile``) with ``logits_to_keep=1`` (the LM head computes (B, 1, V) logits) and
no labels, while a forward hook on the backbone, registered for that call only, keeps its last hidden states;
the loss is then computed from them and the LM head weight, under the autocast the backbone ran in.

Which models: causal LMs whose output embedding is an ``nn.Linear`` (tied or not) under a separate backbone, whose
``forward`` is their transformers class's own (a subclass or instance that overrides it is trained on the logits)
and accepts ``logits_to_keep``, with the logit transforms transformers configs declare (``logit_scale`` and its
aliases, Gemma's ``final_logit_softcapping``). The trainer checks the first fused batch against the model's own
logits and falls back to the unfused path, with one warning naming why, when anything differs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Partial
from transformers.utils import ModelOutput

from ..ops.fused_linear import fused_linear_dece
from .alignment import base_model

IGNORE_INDEX = -100
# Where a model's own forward may be defined: transformers, and remote code (``trust_remote_code``).
MODEL_PACKAGES = ("transformers", "transformers_modules")


@dataclass
class FusedDeCEOutput(ModelOutput):
    """What `fused_loss` returns.

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
    override = forward_override(model)
    if override is not None:
        return override
    if "logits_to_keep" not in inspect.signature(type(model).forward).parameters:
        return "its forward takes no `logits_to_keep` (it would build the logits of every position)"
    return None


def _wrapper_dirs() -> tuple[str, ...]:
    """Folders whose code may wrap a model's forward without changing it: torch (autocast), accelerate (its
    mixed-precision and device-map hooks)."""
    dirs = [os.path.dirname(torch.__file__)]
    with contextlib.suppress(ImportError):
        import accelerate

        dirs.append(os.path.dirname(accelerate.__file__))
    return tuple(d + os.sep for d in dirs)


def _is_known_wrapper(fn: Any) -> bool:
    """Whether ``fn`` (a function, partial or callable object) is torch's or accelerate's forward wrapper."""
    if isinstance(fn, functools.partial):
        fn = fn.func
    code = getattr(fn, "__code__", None) or getattr(getattr(type(fn), "__call__", None), "__code__", None)
    return code is not None and code.co_filename.startswith(_wrapper_dirs())


def forward_override(model: nn.Module) -> str | None:
    """Why ``model`` (the transformers model) does not run its transformers class's own ``forward``, or None: a
    subclass defined elsewhere overrides it, or the instance holds another one (torch's and accelerate's wrappers,
    autocast and device-map hooks, are looked through)."""
    owner = next(cls for cls in type(model).__mro__ if "forward" in vars(cls))
    if owner.__module__.split(".")[0] not in MODEL_PACKAGES:
        return (f"its class {owner.__qualname__} overrides `forward`, and the fused path would skip what that "
                "forward does after the backbone")
    own, fn = [], owner.forward  # the class's forward and what its decorators wrap (accelerate's unwrap_model
    while fn is not None and len(own) < 16:  # may leave the innermost one on the instance)
        own.append(fn)
        fn = getattr(fn, "__wrapped__", None)
    fn = vars(model).get("forward")
    for _ in range(16):  # through a few wrappers, to the class's forward
        if fn is None or any(fn is f for f in own):
            return None
        if inspect.ismethod(fn):
            if fn.__self__ is not model:
                break
            fn = fn.__func__
        elif _is_known_wrapper(fn):
            fn = getattr(fn, "__wrapped__", None)
            if fn is None:
                break
        else:
            break
    return ("the instance overrides `forward` (an attribute replacing its class's), and the fused path would skip "
            "what that forward does after the backbone")


@dataclass(frozen=True)
class DeCEHead:
    """The loss `fused_loss` computes from (hidden (B, T', d), lm_head, targets (B, T'))."""

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


def _gathered(param: DTensor) -> torch.Tensor:
    """The whole of a sharded parameter, differentiably. Each process's loss is its own micro-batch's, so the
    gradient of the gathered tensor differs between processes: it is averaged over the mesh onto the shards, as FSDP
    averages the gradients of the parameters it unshards itself (not taken as replicated, which would keep only each
    process's own share of the batch)."""
    return param.full_tensor(grad_placements=[Partial("avg")] * param.device_mesh.ndim)


@contextlib.contextmanager
def full_parameters(head: nn.Linear) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The LM head's whole weight and bias, never a shard: FSDP2 ``DTensor``s are gathered (differentiably, the
    gradient averaged over processes: `_gathered`), DeepSpeed ZeRO-3 partitions gathered for the call; a weight of
    any other shape than (V, d) is refused."""
    weight, bias = head.weight, head.bias
    if isinstance(weight, DTensor):
        yield _gathered(weight), (_gathered(bias) if isinstance(bias, DTensor) else bias)
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


class _Capture:
    """A forward hook keeping a backbone's last hidden states (B, T, d) and the autocast it ran under."""

    def __init__(self):
        self.hidden: torch.Tensor | None = None
        self.autocast: tuple[str, torch.dtype, bool] | None = None  # (device type, dtype, enabled)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        device = hidden.device.type
        if torch.amp.is_autocast_available(device):
            self.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        self.hidden = hidden


def fused_loss(model: nn.Module, inputs: dict[str, Any], labels: torch.Tensor | None,
               shift_labels: torch.Tensor | None, head: DeCEHead) -> FusedDeCEOutput:
    """The DeCE loss of a causal-LM batch through the fused LM head.

    ``model`` is the model the Trainer hands to ``compute_loss`` (its wrappers included); it is called on ``inputs``
    (no labels) with ``logits_to_keep=1``, so its LM head builds (B, 1, V) logits only, while a forward hook on the
    backbone, removed when the call returns, keeps the last hidden states (B, T, d). Causal shift: hidden[:, :-1]
    predicts labels[:, 1:], unless ``shift_labels`` (B, T) are given. The loss runs under the backbone's autocast.
    """
    return _head_loss(model, _run_backbone(model, inputs), labels, shift_labels, head)


def _run_backbone(model: nn.Module, inputs: dict[str, Any]) -> _Capture:
    """Call ``model`` with ``logits_to_keep=1``; what its backbone returned, kept by a hook for this call only."""
    model_ = base_model(model)
    capture = _Capture()
    handle = model_.base_model.register_forward_hook(capture)
    try:
        model(**{**inputs, "logits_to_keep": 1, "use_cache": False})
    finally:
        handle.remove()
    if capture.hidden is None:
        raise RuntimeError(f"{type(model_).__name__}'s forward did not call its backbone "
                           f"{type(model_.base_model).__name__}: set `dece_fused_linear=False`.")
    return capture


def _head_loss(model: nn.Module, capture: _Capture, labels: torch.Tensor | None, shift_labels: torch.Tensor | None,
               head: DeCEHead) -> FusedDeCEOutput:
    hidden = capture.hidden
    if shift_labels is None:  # causal: hidden state i predicts label i + 1
        hidden, shift_labels = hidden[:, :-1], labels[:, 1:]
    lm_head = base_model(model).get_output_embeddings()
    autocast = contextlib.nullcontext() if capture.autocast is None else torch.autocast(
        capture.autocast[0], dtype=capture.autocast[1], enabled=capture.autocast[2])
    with autocast:
        return head(hidden.to(lm_head.weight.device), lm_head, shift_labels.to(lm_head.weight.device))


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
        capture = _run_backbone(model, row)
        fused = _head_loss(model, capture, labels, shift_labels, head).token_ce
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
    reduced = (next(model.parameters()).dtype != torch.float32 or torch.is_autocast_enabled(logits.device.type)
               or (capture.autocast is not None and capture.autocast[2]))
    tolerance = 5e-2 if reduced else 1e-3
    worst = float((fused.to(reference.device)[mask] - reference).abs().max())
    if worst > tolerance * max(1.0, float(reference.abs().max())):
        return f"its fused and unfused token losses differ by {worst:.3g} nats on the first batch"
    return None

"""Fused LM head + DeCE: the loss of ``hidden @ weight.T`` without ever holding the (tokens x V) logits.

Rows (tokens) are processed in chunks (:func:`~dece_trainer.ops.chunks.default_chunk_rows`), through the chunk
pass of `dece_trainer.ops.chunks` that the unfused loss uses too. For a
chunk ``H_c`` (n x d) the forward pass computes the logits ``Z_c = H_c W^T (+ b)`` in the compute dtype,
then in float32 the optional logit scale and soft-cap (``cap * tanh(z / cap)``, as Gemma), the DeCE loss
of each row and, when the loss is reduced to a scalar, its gradient ``G_c = d loss / d Z_c``; then
``grad_H_c = G_c W``, ``grad_W += G_c^T H_c`` (float32) and ``grad_b += sum_rows G_c``, as Liger-Kernel's
fused linear cross-entropy does. Backward only multiplies these by the upstream gradient: the loss is a
scalar, so its gradients are the precomputed ones times that one number. For ``reduction="none"`` the
upstream gradient is one number per token and enters ``grad_W`` inside the sum, so backward recomputes the
chunks with it instead. ``grad_W`` is accumulated by a float32 product of ``G_c`` (so with bfloat16 inputs
that product does not use bfloat16 matrix units). Ignored rows are computed and weighted 0, as in the
unfused loss.

Extra memory: a few (chunk x V) buffers, ``grad_hidden`` (N x d) and the float32 ``grad_weight`` (V x d)
and ``grad_bias``; nothing else grows with the number of tokens N. A frozen weight (``requires_grad=False``,
e.g. under LoRA) skips the ``grad_W`` product entirely.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from ..validation import (
    check_alpha,
    check_ignore_index,
    check_int,
    check_label_smoothing,
    check_lm_head,
    check_num_items_in_batch,
    check_number,
    check_reduction,
)
from .chunks import (
    Consts,
    GoldTerms,
    LossOutput,
    Rows,
    Work,
    cat_rows,
    chunk_grad,
    chunk_rows,
    chunk_stats,
    gold_terms,
    make_consts,
    masked_outputs,
    mean_denominator,
    row_losses,
    split_rows,
)

__all__ = ["fused_linear_dece"]


class _Setup(NamedTuple):
    """Everything about one call that is not a tensor."""

    consts: Consts
    rows: int  # rows per chunk
    compute_dtype: torch.dtype  # of the products H W^T and G W
    logit_scale: float
    logit_softcap: float | None
    stats: bool


def _softcap_grad(grad: torch.Tensor, z: torch.Tensor, cap: float) -> None:
    """``grad *= 1 - (z / cap)**2`` in place: the derivative of ``cap * tanh(y / cap)`` at ``z = cap * tanh``.
    ``z`` is overwritten."""
    grad.addcmul_(grad, z.div_(cap).square_(), value=-1.0)


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, z: torch.Tensor,
            product: torch.Tensor | None, setup: _Setup) -> None:
    """Writes the float32 logits of a chunk into ``z``: ``H W^T (+ b)`` in the compute dtype (into ``product``
    when that is not float32), then scaled and soft-capped in float32."""
    out = z if product is None else product
    if bias is None:
        torch.mm(h, weight.t(), out=out)
    else:
        torch.addmm(bias, h, weight.t(), out=out)
    if product is not None:
        z.copy_(product)
    if setup.logit_scale != 1.0:
        z.mul_(setup.logit_scale)
    if setup.logit_softcap is not None:
        z.div_(setup.logit_softcap).tanh_().mul_(setup.logit_softcap)


def _fused_pass(hidden, weight, bias, gold, setup: _Setup, row_weight: torch.Tensor | None,
                wants: tuple[bool, bool, bool], gold_t: GoldTerms | None = None) -> tuple[Rows | None, tuple]:
    """One pass over the row chunks.

    Args:
        hidden: (N, d); weight: (V, d); bias: (V,) or None; gold: (N,) int64 class indices in [0, V).
        row_weight: (N,) float32, or None for the loss only. With it, the pass also returns the gradients of
            ``sum_i row_weight[i] * loss[i]`` w.r.t. ``(hidden, weight, bias)``, for those ``wants`` asks.
        gold_t: the gold terms of all rows, (N, 1) columns, from an earlier pass: then only gradients are
            computed.
    Returns:
        (rows or None, (grad_hidden in the compute dtype | None, grad_weight float32 | None,
        grad_bias float32 | None)).
    """
    n_rows, vocab, cdt = hidden.shape[0], weight.shape[0], setup.compute_dtype
    weight = weight.to(cdt)
    bias = None if bias is None else bias.to(cdt)
    wants = wants if row_weight is not None else (False, False, False)
    work = Work(min(setup.rows, n_rows), vocab, hidden.device, need_z=True)
    product = None if cdt == torch.float32 else torch.empty(work.p.shape, dtype=cdt, device=hidden.device)
    grad_h = torch.empty(hidden.shape, dtype=cdt, device=hidden.device) if wants[0] else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants[1] else None
    grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if wants[2] else None
    weights = row_weight[:, None] * setup.logit_scale if any(wants) else None
    chunks = zip(hidden.split(setup.rows), gold[:, None].split(setup.rows), split_rows(weights, setup.rows),
                 split_rows(grad_h, setup.rows), *(split_rows(x, setup.rows) for x in gold_t or (None, None)))
    parts = []
    for h, g, w_rows, grad_h_rows, gold_prob, gold_tr in chunks:
        h = h.to(cdt)
        z, p, r = work.views(h.shape[0])
        prod = None if product is None else product[: h.shape[0]]
        _logits(h, weight, bias, z, prod, setup)
        if gold_t is None:
            rows, prob_scale = chunk_stats(z, g, p, r, setup.consts, setup.stats)
            parts.append(rows)
            chunk_gold_t = gold_terms(rows.logp_gold, setup.consts) if w_rows is not None else None
        else:
            torch.softmax(z, 1, out=p)
            prob_scale, chunk_gold_t = 1.0, GoldTerms(gold_prob, gold_tr)
        if w_rows is None:
            continue
        grad = chunk_grad(p, r, prob_scale, g, chunk_gold_t, w_rows, setup.consts, out=p)
        if setup.logit_softcap is not None:
            _softcap_grad(grad, z, setup.logit_softcap)
        if grad_h is not None:
            torch.mm(grad if prod is None else prod.copy_(grad), weight, out=grad_h_rows)
        if grad_w is not None:
            grad_w.addmm_(grad.t(), h.float())
        if grad_b is not None:
            grad_b.add_(grad.sum(0))
    return (cat_rows(parts) if parts else None), (grad_h, grad_w, grad_b)


class _FusedLinearDeCE(torch.autograd.Function):
    """Loss (scalar, gradients computed in forward) or per-row losses (gradients recomputed in backward)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, gold, mask, row_weight, setup: _Setup, wants):
        rows, grads = _fused_pass(hidden, weight, bias, gold, setup, row_weight, wants)
        ctx.setup, ctx.eager = setup, row_weight is not None
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        if ctx.eager:
            ctx.save_for_backward(*grads)
        else:
            ctx.save_for_backward(hidden, weight, bias, gold, mask, rows.logp_gold)
        row_loss, *outs = masked_outputs(rows, row_losses(rows, setup.consts), mask)
        ctx.mark_non_differentiable(*outs)
        return (row_loss if row_weight is None else (row_loss * row_weight).sum(), *outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *unused):
        if ctx.eager:  # in place: a second backward through the graph fails autograd's saved-tensor check
            grads = tuple(None if g is None else g.mul_(grad_loss) for g in ctx.saved_tensors)
        else:
            hidden, weight, bias, gold, mask, logp_gold = ctx.saved_tensors
            row_weight = torch.where(mask, grad_loss.float(), 0.0)
            _, grads = _fused_pass(hidden, weight, bias, gold, ctx.setup, row_weight, ctx.needs_input_grad[:3],
                                   gold_terms(logp_gold, ctx.setup.consts))
        grads = tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))
        return (*grads, None, None, None, None, None)


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for the device, else the promoted dtype of the inputs."""
    device = hidden.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def fused_linear_dece(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    label_smoothing: float = 0.05,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    logit_scale: float | None = None,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    return_stats: bool = False,
) -> LossOutput:
    """DeCE of the LM head's logits, computed chunk by chunk without materialising them.

    Equals ``dece_loss_and_token_ce(z, labels, ...)`` with ``z = cap * tanh(scale * (hidden @ weight.T + bias)
    / cap)`` (the product in the compute dtype, the rest in float32), in value and gradient.

    Args:
        hidden: (..., d) float final hidden states (already aligned with ``labels``: no shifting inside).
        weight: (V, d) LM-head (or tied embedding) weight. A weight that does not require grad gets none.
        labels: (...) integer class indices in [0, V), or ``ignore_index``.
        alpha, label_smoothing, ignore_index, reduction, num_items_in_batch: as
            :func:`~dece_trainer.ops.dece_loss.deceptive_cross_entropy`.
        bias: optional (V,) LM-head bias.
        logit_scale: optional multiplier of the logits (before the soft-cap), e.g. Cohere's ``logit_scale``.
        logit_softcap: optional soft-cap ``cap > 0`` (Gemma 2's ``final_logit_softcapping``).
        chunk_size: rows per chunk; default :func:`~dece_trainer.ops.chunks.default_chunk_rows`.
        return_stats: also return per-token entropy (nats) and top-1 hits, from the same pass.

    The products run in the autocast dtype when autocast is on, else in the promoted dtype of ``hidden``
    and ``weight``; the loss in float32; ``grad_weight`` and ``grad_bias`` accumulate in float32.

    Returns:
        :class:`~dece_trainer.ops.chunks.LossOutput` (``loss`` float32: scalar, or shaped like ``labels``
        for ``reduction="none"``; ``token_ce`` = ``-log p[y]`` in nats; ``mask``; ``entropy`` and
        ``correct`` with ``return_stats``, else None).
    """
    alpha, label_smoothing = check_alpha(alpha), check_label_smoothing(label_smoothing)
    ignore_index, reduction = check_ignore_index(ignore_index), check_reduction(reduction)
    num_items_in_batch = check_num_items_in_batch(num_items_in_batch)
    scale = 1.0 if logit_scale is None else check_number(logit_scale, "logit_scale", low=0.0, low_open=True)
    cap = None if logit_softcap is None else check_number(logit_softcap, "logit_softcap", low=0.0, low_open=True)
    check_lm_head(hidden, weight, bias, labels, ignore_index)
    vocab = weight.shape[0]
    rows = chunk_rows(vocab, hidden.device, check_int(chunk_size, "chunk_size", minimum=1, allow_none=True))
    setup = _Setup(make_consts(alpha, label_smoothing, vocab), rows,
                   compute_dtype(hidden, weight), scale, cap, bool(return_stats))

    flat_labels = labels.reshape(-1)
    mask = flat_labels != ignore_index
    gold = torch.where(mask, flat_labels, 0).long()
    row_weight = None
    if reduction != "none":
        row_weight = mask.float()
        if reduction == "mean":
            row_weight = row_weight / mean_denominator(mask.sum(), num_items_in_batch, row_weight)
    wants = tuple(torch.is_grad_enabled() and t is not None and t.requires_grad for t in (hidden, weight, bias))
    outs = _FusedLinearDeCE.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, gold, mask, row_weight,
                                  setup, wants)
    loss, token_ce, *stats = outs
    shape = labels.shape
    return LossOutput(loss.view(shape) if reduction == "none" else loss, token_ce.view(shape), mask.view(shape),
                      *(s.view(shape) for s in stats), labels=labels)

"""Deceptive cross-entropy (DeCE) of given logits: exact, chunked, memory-lean, without host syncs.

Pure PyTorch; no ``transformers`` import. The formula and the chunk pass are in `dece_trainer.ops.chunks`
(shared with the fused LM head, `dece_trainer.ops.fused_linear`); argument checks in `dece_trainer.validation`.
Forward saves the logits and one float per row; backward recomputes softmax per chunk and writes each
chunk of the gradient once. The label-range check reads the labels on the host, so it runs only for CPU
tensors (free there) or when ``DECE_TRAINER_DEBUG=1``; on accelerators an out-of-range label otherwise
surfaces as the device's own index error.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..validation import (
    check_alpha,
    check_float_tensor,
    check_ignore_index,
    check_int,
    check_label_range,
    check_label_smoothing,
    check_labels,
    check_num_items_in_batch,
    check_reduction,
    check_vocab,
)
from .chunks import (
    Consts,
    GoldTerms,
    LossOutput,
    Work,
    cat_rows,
    chunk_grad,
    chunk_rows,
    chunk_stats,
    gold_terms,
    make_consts,
    masked_outputs,
    reduce_rows,
    row_losses,
    split_rows,
)

__all__ = [
    "dece_loss_and_token_ce",
    "deceptive_cross_entropy",
]


class _DeCEFunction(torch.autograd.Function):
    """Chunked DeCE over all rows (ignored rows weighted 0); backward recomputes softmax per chunk."""

    @staticmethod
    def forward(ctx, logits2d, gold, mask, consts: Consts, rows: int, stats: bool):
        work = Work(min(rows, logits2d.shape[0]), consts.vocab, logits2d.device, logits2d.dtype != torch.float32)
        parts = []
        for chunk, g in zip(logits2d.split(rows), gold[:, None].split(rows)):
            z, p, r = work.take(chunk)
            parts.append(chunk_stats(z, g, p, r, consts, stats)[0])
        out = cat_rows(parts)
        ctx.save_for_backward(logits2d, gold, mask, out.logp_gold)
        ctx.consts, ctx.rows = consts, rows
        outs = masked_outputs(out, row_losses(out, consts), mask)
        ctx.mark_non_differentiable(*outs[1:])
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, *unused):
        logits2d, gold, mask, logp_gold = ctx.saved_tensors
        consts, rows = ctx.consts, ctx.rows
        grad = torch.empty_like(logits2d)
        direct = grad.dtype == torch.float32
        work = Work(min(rows, logits2d.shape[0]), consts.vocab, logits2d.device, not direct)
        weight = torch.where(mask, grad_loss.float(), 0.0)[:, None]
        chunks = zip(logits2d.split(rows), grad.split(rows), gold[:, None].split(rows), weight.split(rows),
                     *(split_rows(x, rows) for x in gold_terms(logp_gold, consts)))
        for chunk, grad_chunk, g, w, prob, target_ratio in chunks:
            z, p, r = work.take(chunk)
            torch.softmax(z, 1, out=p)
            chunk_grad(p, r, 1.0, g, GoldTerms(prob, target_ratio), w, consts, out=grad_chunk if direct else p)
            if not direct:
                grad_chunk.copy_(p)
        return grad, None, None, None, None, None


def dece_loss_and_token_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    label_smoothing: float = 0.05,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
    return_stats: bool = False,
) -> LossOutput:
    """DeCE loss and, from the same chunk pass, plain per-token CE (and, with ``return_stats``, entropy and
    top-1 hits). Arguments as :func:`deceptive_cross_entropy`; returns a :class:`LossOutput`."""
    check_float_tensor(logits, "logits", 1)
    vocab = logits.shape[-1]
    alpha, label_smoothing = check_alpha(alpha), check_label_smoothing(label_smoothing)
    ignore_index, reduction = check_ignore_index(ignore_index), check_reduction(reduction)
    num_items_in_batch = check_num_items_in_batch(num_items_in_batch)
    check_labels(labels, logits.shape, "logits")
    check_vocab(vocab, "logits")
    check_label_range(labels, vocab, ignore_index)
    rows = chunk_rows(vocab, logits.device, check_int(chunk_size, "chunk_size", minimum=1, allow_none=True))

    flat_labels = labels.reshape(-1)
    mask = flat_labels != ignore_index
    gold = torch.where(mask, flat_labels, 0).long()
    outs = _DeCEFunction.apply(logits.reshape(-1, vocab), gold, mask, make_consts(alpha, label_smoothing, vocab),
                               rows, bool(return_stats))
    row_loss, token_ce, *stats = (out.view(labels.shape) for out in outs)
    loss = reduce_rows(row_loss, mask, reduction, num_items_in_batch)
    return LossOutput(loss, token_ce, mask.view(labels.shape), *stats, labels=labels)


def deceptive_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    label_smoothing: float = 0.05,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Deceptive cross-entropy of Yang et al. (TOSEM, arXiv 2407.08956).

    Args:
        logits: (..., V) float tensor, any float dtype; computed in float32. Not shifted inside.
        labels: (...) integer class indices in [0, V), or ``ignore_index``.
        alpha: blend weight ``a`` in (0, 1]; ``a = 1`` is label-smoothed CE. See :func:`dece_alpha`.
        label_smoothing: ``e`` in [0, 1); the gold class gets ``1 - e``, each other class ``e / (V - 1)``.
        ignore_index: label value that contributes nothing (loss 0, gradient 0).
        reduction: ``"mean"`` (sum over non-ignored tokens divided by their count, or by
            ``num_items_in_batch`` when given), ``"sum"``, or ``"none"`` (per token, shaped like
            ``labels``, 0 at ignored positions).
        num_items_in_batch: denominator of ``"mean"`` (e.g. the token count of the whole accumulated,
            multi-process batch): a number >= 0 or a one-element tensor (never read on the host); clamped
            to >= 1, so when every label is ignored the mean is 0, not NaN.
        chunk_size: rows per chunk; default :func:`default_chunk_rows` (a byte budget per float32 buffer).

    Returns:
        float32 loss: scalar, or shaped like ``labels`` for ``reduction="none"``. Differentiable w.r.t.
        ``logits``; the gradient w.r.t. each probability is bounded by ``a / (1 - a)``.
    """
    return dece_loss_and_token_ce(
        logits, labels, alpha=alpha, label_smoothing=label_smoothing, ignore_index=ignore_index,
        reduction=reduction, num_items_in_batch=num_items_in_batch, chunk_size=chunk_size,
    ).loss

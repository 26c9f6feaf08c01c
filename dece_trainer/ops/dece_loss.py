"""Deceptive cross-entropy (DeCE): exact, chunked, memory-lean.

Pure PyTorch; no ``transformers`` import. For one token with logits ``z`` (size V), gold index ``y``,
label smoothing ``e`` and blend weight ``a``::

    t[y] = 1 - e,   t[k] = e / (V - 1)  (k != y)          smoothed target
    p    = softmax(z),   q = a * p + (1 - a) * t            "deceptive" distribution
    loss = - sum_k t[k] * log q[k]

Everything is computed in float32 whatever the logits dtype, in log space, one chunk of rows at a
time. With ``c[k] = log((1 - a) t[k])`` and ``x[k] = log a + log p[k] - c[k]``::

    log q[k]        = c[k] + softplus(x[k])
    a p[k] / q[k]   = sigmoid(x[k])  =: r[k]                (in [0, 1], no 0/0 when p underflows)
    d loss / d z[j] = p[j] * S - t[j] * r[j],   S = sum_k t[k] r[k]

which is ``p_j (w_j - sum_k p_k w_k)`` with ``w_k = -t[k] a / q[k]`` written without division. The
backward pass recomputes softmax per chunk from the saved logits, so besides the gradient itself no
(tokens x V) tensor is ever held: only a few (chunk x V) float32 buffers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

REDUCTIONS = ("mean", "sum", "none")

# Rows per chunk are chosen so that one float32 (rows x V) buffer holds about this many elements
# (1 MiB): small enough to stay in cache across the several elementwise passes of a chunk.
_CHUNK_ELEMENTS = 1 << 18


class DeCELossOutput(NamedTuple):
    """Loss plus the per-token statistics computed in the same chunk pass.

    Attributes:
        loss: the reduced loss (scalar) or, for ``reduction="none"``, per-token losses shaped like
            ``labels`` (0 at ignored positions). float32.
        token_ce: plain (unsmoothed) cross-entropy ``-log p[y]`` per token, shaped like ``labels``,
            0 at ignored positions; float32, detached. ``exp(-token_ce)`` is the gold-token probability.
        mask: bool tensor shaped like ``labels``, True where the label is not ``ignore_index``.
    """

    loss: torch.Tensor
    token_ce: torch.Tensor
    mask: torch.Tensor


def _check_args(logits, labels, alpha, label_smoothing, ignore_index, reduction) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise ValueError(f"`logits` must be a floating-point tensor, got {type(logits).__name__}"
                         f"{'' if not isinstance(logits, torch.Tensor) else ' of dtype ' + str(logits.dtype)}.")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
        raise ValueError("`labels` must be an integer tensor of class indices.")
    if logits.dim() < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`logits` must have shape (..., V) and `labels` the same leading shape: got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)} (no shifting is done inside the loss)."
        )
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha <= 1.0):
        raise ValueError(f"`alpha` must be a number in (0, 1], got {alpha!r}.")
    if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
        raise ValueError(f"`label_smoothing` must be a number in [0, 1), got {label_smoothing!r}.")
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")
    vocab = logits.shape[-1]
    if vocab < 2:
        raise ValueError(f"`logits` must have at least 2 classes in the last dimension, got {vocab}.")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        value = labels[bad].flatten()[0].item()
        raise ValueError(
            f"`labels` must be in [0, {vocab}) or equal to ignore_index={ignore_index}; found {value}."
        )


class _Constants(NamedTuple):
    """Per-call scalars of the formula (python floats, float64 precision)."""

    log_alpha: float
    smooth_off: float  # s = e / (V - 1), the target mass of each non-gold class
    target_gold: float  # 1 - e
    c_off: float  # log((1 - a) s); -inf when a == 1 or e == 0
    c_gold: float  # log((1 - a)(1 - e)); -inf when a == 1
    blend: bool  # a < 1
    smooth: bool  # e > 0


def _constants(alpha: float, label_smoothing: float, vocab: int) -> _Constants:
    blend = alpha < 1.0
    smooth = label_smoothing > 0.0
    s = label_smoothing / (vocab - 1)
    c_off = math.log((1.0 - alpha) * s) if blend and smooth else -math.inf
    c_gold = math.log((1.0 - alpha) * (1.0 - label_smoothing)) if blend else -math.inf
    return _Constants(math.log(alpha), s, 1.0 - label_smoothing, c_off, c_gold, blend, smooth)


def _chunk_rows(vocab: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f"`chunk_size` must be a positive int (rows per chunk), got {chunk_size!r}.")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // vocab)


def _forward_chunk(z: torch.Tensor, gold: torch.Tensor, k: _Constants):
    """Loss, log-sum-exp and plain CE for one chunk.

    Args:
        z: (n, V) float32 logits; a private copy, modified in place.
        gold: (n,) int64 gold indices.
    Returns:
        loss (n,), lse (n,), ce (n,): all float32.
    """
    vocab = z.shape[1]
    lse = torch.logsumexp(z, dim=1)
    z_gold = z.gather(1, gold[:, None]).squeeze(1)
    logp_gold = z_gold - lse
    ce = -logp_gold
    if k.blend:
        # log q[y] = c_gold + softplus(log a + log p[y] - c_gold)
        logq_gold = k.c_gold + torch.nn.functional.softplus(logp_gold + (k.log_alpha - k.c_gold))
    else:
        logq_gold = logp_gold
    loss = -k.target_gold * logq_gold
    if k.smooth:
        if k.blend:
            # sum over k != y of log q[k] = (V - 1) c_off + sum_k softplus(x_off[k]) - softplus(x_off[y])
            # z becomes x_off = log p - c_off + log a; log p first, so huge logits do not cancel badly
            z.sub_(lse[:, None]).add_(k.log_alpha - k.c_off)
            sp = torch.nn.functional.softplus(z)
            off_sum = sp.sum(dim=1) - sp.gather(1, gold[:, None]).squeeze(1)
            off_sum = off_sum + (vocab - 1) * k.c_off
        else:
            # sum over k != y of log p[k] = sum_k z[k] - V lse - log p[y]
            off_sum = z.sum(dim=1) - vocab * lse - logp_gold
        loss = loss - k.smooth_off * off_sum
    return loss, lse, ce


def _backward_chunk(z: torch.Tensor, gold: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor,
                    k: _Constants) -> torch.Tensor:
    """Gradient of ``scale * loss`` w.r.t. one chunk of logits.

    Args:
        z: (n, V) float32 logits; a private copy, modified in place.
        gold: (n,) int64; lse: (n,) float32 from the forward; scale: (n,) float32 upstream gradient
            (already divided by the mean's denominator).
    Returns:
        (n, V) float32 gradient.
    """
    rows = torch.arange(z.shape[0], device=z.device)
    logp = z.sub_(lse[:, None])  # in place: z is now log p
    logp_gold = logp[rows, gold]
    p = logp.exp()
    r_gold = torch.sigmoid(logp_gold + (k.log_alpha - k.c_gold)) if k.blend else torch.ones_like(lse)
    # S = sum_k t[k] r[k]
    big_s = k.target_gold * r_gold
    if k.smooth and k.blend:
        r_off = logp.add_(k.log_alpha - k.c_off).sigmoid_()
        r_off_gold = r_off[rows, gold]
        big_s = big_s + k.smooth_off * (r_off.sum(dim=1) - r_off_gold)
        # grad = scale * (p * S - s * r_off), then fix the gold column: t[y] r[y] instead of s r_off[y]
        p.mul_((big_s * scale)[:, None])
        p.sub_(r_off.mul_((k.smooth_off * scale)[:, None]))
        gold_fix = (k.smooth_off * r_off_gold - k.target_gold * r_gold) * scale
    elif k.smooth:  # a == 1: r == 1, S == 1, grad = p - t
        p.sub_(k.smooth_off).mul_(scale[:, None])
        gold_fix = (k.smooth_off - k.target_gold) * scale
    else:  # e == 0: t is one-hot, grad = S * p - r[y] * onehot
        p.mul_((big_s * scale)[:, None])
        gold_fix = -r_gold * scale
    p[rows, gold] += gold_fix
    return p


class _DeCEFunction(torch.autograd.Function):
    """Chunked DeCE over valid rows; backward recomputes softmax per chunk from the logits."""

    @staticmethod
    def forward(ctx, logits2d, gold, valid_rows, k: _Constants, chunk_rows: int):
        n_valid = gold.shape[0]
        loss = logits2d.new_empty(n_valid, dtype=torch.float32)
        lse = torch.empty_like(loss)
        ce = torch.empty_like(loss)
        for start in range(0, n_valid, chunk_rows):
            sl = slice(start, start + chunk_rows)
            z = logits2d.index_select(0, valid_rows[sl]).float()
            loss[sl], lse[sl], ce[sl] = _forward_chunk(z, gold[sl], k)
        ctx.save_for_backward(logits2d, gold, valid_rows, lse)
        ctx.k, ctx.chunk_rows = k, chunk_rows
        ctx.mark_non_differentiable(ce)
        return loss, ce

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_ce):
        logits2d, gold, valid_rows, lse = ctx.saved_tensors
        grad = torch.zeros_like(logits2d)
        grad_loss = grad_loss.float()
        for start in range(0, gold.shape[0], ctx.chunk_rows):
            sl = slice(start, start + ctx.chunk_rows)
            rows = valid_rows[sl]
            z = logits2d.index_select(0, rows).float()
            g = _backward_chunk(z, gold[sl], lse[sl], grad_loss[sl], ctx.k)
            grad.index_copy_(0, rows, g.to(grad.dtype))
        return grad, None, None, None, None


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
) -> DeCELossOutput:
    """DeCE loss and, from the same chunk pass, plain per-token CE. See :func:`deceptive_cross_entropy`."""
    _check_args(logits, labels, alpha, label_smoothing, ignore_index, reduction)
    vocab = logits.shape[-1]
    k = _constants(float(alpha), float(label_smoothing), vocab)
    logits2d = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1)
    mask = flat_labels != ignore_index
    valid_rows = mask.nonzero().squeeze(1)
    gold = flat_labels.index_select(0, valid_rows).long()
    row_loss, row_ce = _DeCEFunction.apply(logits2d, gold, valid_rows, k, _chunk_rows(vocab, chunk_size))

    token_ce = row_ce.new_zeros(flat_labels.shape).index_copy_(0, valid_rows, row_ce).view(labels.shape)
    mask = mask.view(labels.shape)
    if reduction == "none":
        loss = row_loss.new_zeros(flat_labels.shape).index_copy(0, valid_rows, row_loss).view(labels.shape)
    else:
        loss = row_loss.sum()
        if reduction == "mean":
            loss = mean_over_items(loss, valid_rows.numel(), num_items_in_batch)
    return DeCELossOutput(loss, token_ce, mask)


def mean_over_items(total: torch.Tensor, count: int | torch.Tensor,
                    num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    """``total`` divided by ``num_items_in_batch`` when given, else by ``count``; never by less than 1, so a
    batch whose labels are all ignored gives 0, not NaN."""
    denom = count if num_items_in_batch is None else num_items_in_batch
    if isinstance(denom, torch.Tensor):
        return total / denom.to(device=total.device, dtype=total.dtype).clamp(min=1)
    return total / max(float(denom), 1.0)


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
            multi-process batch). When every label is ignored the mean is 0, not NaN.
        chunk_size: rows per chunk; default keeps each float32 chunk buffer at about 1 MiB.

    Returns:
        float32 loss: scalar, or shaped like ``labels`` for ``reduction="none"``. Differentiable w.r.t.
        ``logits``; the gradient w.r.t. each probability is bounded by ``a / (1 - a)``.
    """
    return dece_loss_and_token_ce(
        logits, labels, alpha=alpha, label_smoothing=label_smoothing, ignore_index=ignore_index,
        reduction=reduction, num_items_in_batch=num_items_in_batch, chunk_size=chunk_size,
    ).loss

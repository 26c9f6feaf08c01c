"""The chunk pass both DeCE losses sit on: per-row statistics, row losses and gradients of float32 chunks of
logits, the work buffers, the reductions and the `LossOutput` both return.

`dece_trainer.ops.dece_loss` runs it over chunks of given logits; `dece_trainer.ops.fused_linear` over chunks of
logits it computes from the hidden states and the LM head. Pure PyTorch; argument checks are the callers'
(through `dece_trainer.validation`). For one token with logits ``z`` (size V), gold index ``y``, label smoothing
``e`` and blend weight ``a``::

    t[y] = 1 - e,   t[k] = e / (V - 1) =: s  (k != y)        smoothed target
    p    = softmax(z),   q = a * p + (1 - a) * t            "deceptive" distribution
    loss = - sum_k t[k] * log q[k]

Everything is computed in float32 whatever the logits dtype. With ``K = a / ((1 - a) s)`` and
``u[k] = K p[k]`` (off-target classes share one constant, so this is one multiply)::

    log q[k]        = log((1 - a) s) + log1p(u[k])            (k != y)
    r[k] := a p[k] / q[k] = u[k] / (1 + u[k])                  (in [0, 1], no 0/0 when p underflows)
    d loss / d z[j] = p[j] * S - t[j] * r[j],   S = sum_k t[k] r[k]

The gold class is done per row in log space (``log q[y]`` via softplus, ``r[y]`` via sigmoid), so
``-log p[y]`` of 1e4 stays exact. Per element this is one exp (softmax), one log1p and one division.

Rows are processed in chunks of hundreds to thousands of rows (:func:`default_chunk_rows`: a byte budget,
larger on accelerators), through a few float32 (chunk x V) buffers allocated once per call (`Work`). Rows whose
label is ``ignore_index`` are computed like the others and weighted by 0 (no data-dependent shapes, so no
``nonzero`` sync).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "LossOutput",
    "default_chunk_rows",
    "mean_over_items",
]

# Default chunk sizes; a call holds two to four float32 (rows x V) work buffers. Accelerators: a byte budget
# per buffer, so hundreds to thousands of rows and few kernel launches. CPU: smaller chunks stay closer to
# the caches (measured: 256-row chunks take ~0.75x the time of 1024-row ones at V = 32k), but at least
# CPU_CHUNK_ROWS rows, so a call dispatches few aten ops (8 chunks at N = 2048, V = 152k); with a small
# vocabulary, as many rows as fit CPU_CHUNK_BYTES.
CPU_CHUNK_ROWS = 256
CPU_CHUNK_BYTES = 16 << 20
ACCELERATOR_CHUNK_BYTES = 512 << 20

# Cap of K = a / ((1 - a) s), so that K * p, 1 + K * p and 1 / K stay normal float32 numbers. Reached only
# when (1 - a) s < 2**-126 a, i.e. (as 1 - a >= 2**-53) e < 2**-73 (V - 1): the loss then moves by less than
# e * log(K / 2**126), each gradient element by less than 2 s.
_LOG_MAX_RATIO = 126 * math.log(2.0)


class LossOutput(NamedTuple):
    """Loss plus the per-token statistics computed in the same chunk pass.

    Attributes:
        loss: float32; the reduced loss (scalar) or, for ``reduction="none"``, per-token losses shaped like
            ``labels`` (0 at ignored positions).
        token_ce: plain (unsmoothed) cross-entropy ``-log p[y]`` in nats per token, shaped like ``labels``,
            0 at ignored positions; float32, detached. ``exp(-token_ce)`` is the gold-token probability.
        mask: bool, shaped like ``labels``: True where the label is not ``ignore_index``.
        entropy: with ``return_stats=True``, the entropy ``-sum_k p[k] log p[k]`` of the model's distribution
            in nats per token (float32, detached, 0 at ignored positions); else None.
        correct: with ``return_stats=True``, bool per token: ``argmax(z) == label`` (first maximum on ties;
            False at ignored positions); else None.
        labels: the target token ids these statistics score (the ``labels`` given), so a consumer of the
            statistics (the early-learning monitor) can tell which tokens were improbable.
    """

    loss: torch.Tensor
    token_ce: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    labels: torch.Tensor | None = None


# ---- constants and chunking -------------------------------------------------------------------------


class Consts(NamedTuple):
    """Per-call scalars of the formula (python floats, computed in float64)."""

    vocab: int
    log_alpha: float
    target_gold: float  # 1 - e
    smooth_off: float  # s = e / (V - 1), the target mass of each non-gold class
    c_gold: float  # log((1 - a)(1 - e)); -inf when a == 1
    c_off: float  # log((1 - a) s); -inf when a == 1 or e == 0
    ratio_off: float  # K = a / ((1 - a) s), capped at 2**126; 0 unless blend and smooth
    blend: bool  # a < 1
    smooth: bool  # e > 0


def make_consts(alpha: float, label_smoothing: float, vocab: int) -> Consts:
    """The scalars of one call, from validated ``alpha`` in (0, 1], ``label_smoothing`` in [0, 1), ``vocab`` >= 2."""
    blend, smooth = alpha < 1.0, label_smoothing > 0.0
    log_alpha = math.log(alpha)
    c_gold = math.log1p(-alpha) + math.log1p(-label_smoothing) if blend else -math.inf
    c_off = math.log1p(-alpha) + math.log(label_smoothing) - math.log(vocab - 1) if blend and smooth else -math.inf
    ratio = math.exp(min(log_alpha - c_off, _LOG_MAX_RATIO)) if blend and smooth else 0.0
    return Consts(vocab, log_alpha, 1.0 - label_smoothing, label_smoothing / (vocab - 1), c_gold, c_off, ratio,
                  blend, smooth)


def default_chunk_rows(vocab: int, device: torch.device | str) -> int:
    """Rows per chunk: as many as a float32 (rows x ``vocab``) buffer of :data:`ACCELERATOR_CHUNK_BYTES` holds,
    on a CPU those of :data:`CPU_CHUNK_BYTES` but at least :data:`CPU_CHUNK_ROWS`."""
    if torch.device(device).type == "cpu":
        return max(CPU_CHUNK_ROWS, CPU_CHUNK_BYTES // (4 * vocab))
    return max(1, ACCELERATOR_CHUNK_BYTES // (4 * vocab))


def chunk_rows(vocab: int, device: torch.device, chunk_size: int | None) -> int:
    """``chunk_size`` (checked by the caller), or :func:`default_chunk_rows` when None."""
    return default_chunk_rows(vocab, device) if chunk_size is None else chunk_size


class Work:
    """Float32 (rows x V) buffers shared by every chunk of one call, so a chunk costs no allocation.

    ``p`` holds probabilities (then gradients), ``r`` the ratios ``r[k]``, ``z`` a float32 copy of the
    logits when they are in another dtype (``need_z``). :meth:`take` gives the first ``n`` rows of each.
    """

    def __init__(self, rows: int, vocab: int, device: torch.device, need_z: bool):
        self.rows = max(rows, 1)
        self.p = torch.empty((self.rows, vocab), dtype=torch.float32, device=device)
        self.r = torch.empty_like(self.p)
        self.z = torch.empty_like(self.p) if need_z else None

    def views(self, n: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``(z, p, r)`` cut to ``n`` rows (no slicing op for a full chunk)."""
        if n == self.rows:
            return self.z, self.p, self.r
        return None if self.z is None else self.z[:n], self.p[:n], self.r[:n]

    def take(self, chunk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z, p, r)`` for a chunk of logits: the chunk itself when float32, else its float32 copy."""
        z, p, r = self.views(chunk.shape[0])
        return (chunk if z is None else z.copy_(chunk)), p, r


# ---- one chunk --------------------------------------------------------------------------------------


class Rows(NamedTuple):
    """Per-row statistics of a chunk (or, concatenated, of all rows): (n, 1) float32 columns."""

    logp_gold: torch.Tensor  # log p[y]; -logp_gold is the plain CE
    off_sum: torch.Tensor | None  # sum over k != y of log1p(K p[k]) (a < 1) or of log p[k] (a == 1); e > 0 only
    entropy: torch.Tensor | None  # nats, with stats
    correct: torch.Tensor | None  # bool, argmax == gold, with stats


def chunk_stats(z: torch.Tensor, gold: torch.Tensor, p: torch.Tensor, r: torch.Tensor, consts: Consts,
                stats: bool) -> tuple[Rows, float]:
    """The (chunk x V) passes of the loss: what :func:`row_losses` needs, per row.

    Args:
        z: (n, V) float32 logits, not modified.
        gold: (n, 1) int64 class indices in [0, V).
        p, r: (n, V) float32 buffers; on return ``p`` holds ``prob_scale * softmax(z)``.
        stats: also compute the entropy (nats) and top-1 hits.
    Returns:
        (rows, prob_scale).
    """
    vocab = z.shape[1]
    torch.softmax(z, 1, out=p)
    lse = z.amax(1, keepdim=True) - p.amax(1, keepdim=True).log()  # max p >= 1/V: its log is exact
    logp_gold = z.gather(1, gold) - lse
    off_sum = entropy = correct = None
    if stats:
        entropy = lse - torch.bmm(p[:, None, :], z[:, :, None]).view(-1, 1)
        correct = z.argmax(1, keepdim=True) == gold
    prob_scale = 1.0
    if consts.smooth and consts.blend:
        prob_scale = consts.ratio_off
        log1p_u = torch.log1p(p.mul_(prob_scale), out=r)
        off_sum = log1p_u.sum(1, keepdim=True) - log1p_u.gather(1, gold)
    elif consts.smooth:
        off_sum = z.sum(1, keepdim=True) - vocab * lse - logp_gold
    return Rows(logp_gold, off_sum, entropy, correct), prob_scale


def _gold_shift(logp_gold: torch.Tensor, consts: Consts) -> torch.Tensor:
    """``x[y] = log a + log p[y] - log((1 - a)(1 - e))``: ``log q[y] = c_gold + softplus(x[y])`` and
    ``r[y] = sigmoid(x[y])``."""
    return logp_gold + (consts.log_alpha - consts.c_gold)


def row_losses(rows: Rows, consts: Consts) -> torch.Tensor:
    """DeCE of each row, ``-t[y] log q[y] - s sum_{k != y} log q[k]``, from its statistics; (n, 1) float32."""
    logp_gold = rows.logp_gold
    logq_gold = consts.c_gold + F.softplus(_gold_shift(logp_gold, consts)) if consts.blend else logp_gold
    loss = -consts.target_gold * logq_gold
    if consts.smooth:  # sum_{k != y} log q[k] = (V - 1) c_off + sum_{k != y} log1p(K p[k])  (a < 1)
        off = rows.off_sum + (consts.vocab - 1) * consts.c_off if consts.blend else rows.off_sum
        loss = loss - consts.smooth_off * off
    return loss


class GoldTerms(NamedTuple):
    """The gold class's part of the gradient, per row: ``p[y]`` and ``t[y] r[y]`` (a float when a == 1)."""

    prob: torch.Tensor
    target_ratio: torch.Tensor | float


def gold_terms(logp_gold: torch.Tensor, consts: Consts) -> GoldTerms:
    r_gold = torch.sigmoid(_gold_shift(logp_gold, consts)) if consts.blend else 1.0
    return GoldTerms(logp_gold.exp(), consts.target_gold * r_gold)


def chunk_grad(p: torch.Tensor, r: torch.Tensor, prob_scale: float, gold: torch.Tensor, gold_t: GoldTerms,
               weight: torch.Tensor, consts: Consts, out: torch.Tensor) -> torch.Tensor:
    """Writes ``d(sum_i weight[i] loss[i]) / dz`` of one chunk into ``out``: ``(p S - t r) * weight``.

    Args:
        p: (n, V) float32 holding ``prob_scale * softmax(z)``; overwritten, as is the buffer ``r``.
        gold, weight: (n, 1) int64 class indices and float32 row weights; ``gold_t``: the chunk's rows.
        out: (n, V) float32 (may be ``p``); each element is written once.
    Returns:
        ``out``.
    """
    off_weight = -consts.smooth_off * weight
    if consts.blend and consts.smooth:
        torch.div(p, torch.add(p, prob_scale / consts.ratio_off, out=r), out=r)  # r[k] = p[k] / (p[k] + 1/K)
        coef = (gold_t.target_ratio + consts.smooth_off * (r.sum(1, keepdim=True) - r.gather(1, gold))) * weight
        torch.addcmul(p.mul_(coef if prob_scale == 1.0 else coef / prob_scale), r, off_weight, out=out)
    else:  # r == 1 off target (a == 1) or t == 0 off target (e == 0): S = t[y] r[y] + (V - 1) s
        coef = (gold_t.target_ratio + (consts.vocab - 1) * consts.smooth_off) * weight
        torch.addcmul(off_weight, p, coef if prob_scale == 1.0 else coef / prob_scale, out=out)
    gold_grad = gold_t.prob * coef - gold_t.target_ratio * weight
    return out.scatter_(1, gold, gold_grad)


# ---- rows and reductions ----------------------------------------------------------------------------


def split_rows(x, rows: int):
    """``x.split(rows)`` for a tensor; ``x`` repeated for anything else (a float or None)."""
    return x.split(rows) if isinstance(x, torch.Tensor) else itertools.repeat(x)


def cat_rows(parts: list[Rows]) -> Rows:
    """The chunks' statistics concatenated into (N, 1) columns."""
    return Rows(*(None if field[0] is None else torch.cat(field) for field in zip(*parts)))


def masked_outputs(rows: Rows, loss: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(N,) loss, CE and, with stats, entropy and top-1 hits; 0 (False) at ignored rows."""
    outs = [torch.where(mask, loss.view(-1), 0.0), torch.where(mask, -rows.logp_gold.view(-1), 0.0)]
    if rows.entropy is not None:
        outs += [torch.where(mask, rows.entropy.view(-1), 0.0), rows.correct.view(-1) & mask]
    return tuple(outs)


def mean_denominator(count: int | torch.Tensor, num_items_in_batch, like: torch.Tensor) -> torch.Tensor | float:
    """The mean's denominator: ``num_items_in_batch`` when given, else ``count``, clamped to >= 1 (never read
    on the host); a tensor on ``like``'s device and dtype, or a float."""
    denom = count if num_items_in_batch is None else num_items_in_batch
    if isinstance(denom, torch.Tensor):
        return denom.to(device=like.device, dtype=like.dtype).reshape(()).clamp(min=1)
    return max(float(denom), 1.0)


def mean_over_items(total: torch.Tensor, count: int | torch.Tensor,
                    num_items_in_batch: int | torch.Tensor | None) -> torch.Tensor:
    """``total`` divided by ``num_items_in_batch`` when given, else by ``count``; never by less than 1, so a
    batch whose labels are all ignored gives 0, not NaN."""
    return total / mean_denominator(count, num_items_in_batch, total)


def reduce_rows(row_loss: torch.Tensor, mask: torch.Tensor, reduction: str, num_items_in_batch) -> torch.Tensor:
    """Per-row losses (0 at ignored rows) reduced as ``reduction`` says; ``"none"`` returns them as is."""
    if reduction == "none":
        return row_loss
    total = row_loss.sum()
    return total if reduction == "sum" else mean_over_items(total, mask.sum(), num_items_in_batch)

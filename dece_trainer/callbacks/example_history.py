"""Per-example learning dynamics across epochs, kept lean: float32 device accumulators for the epoch in
progress, float16 arrays per finished epoch. Torch and numpy only.

Two per-example probabilities are kept. The mean gold-token probability says whether an example is
learnt overall ("unlearned" share). The worst-token probability (its least probable target token,
``exp(-max token CE)``) says whether *every* token is: a poisoned example differs from its clean twin
in a few payload tokens, which a mean over its tokens hides, so fitting, memorisation and the suspicion
ranking use the worst token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..validation import check_probability

QUANTILES = (10, 50, 90, 99)
# An example lags when its worst-token probability is below LAGGING x the epoch's median, and has caught
# up when it is at least CAUGHT_UP x the median (relative, since some tokens stay hard for every example).
LAGGING, CAUGHT_UP = 0.25, 0.5


@dataclass
class EpochSummary:
    """What one finished epoch says about the training examples.

    Attributes:
        epoch: 1-based epoch number.
        seen: number of examples visited this epoch.
        loss_quantiles: {10: p10, 50: ..., 90: ..., 99: ...} of per-example mean token CE (nats).
        unlearned_frac: share of seen examples whose mean gold-token probability is below the threshold.
        memorisation_score: examples that lagged far behind the bulk at the previous epoch (worst-token
            probability under a quarter of the median) while the bulk was already learnt (median mean gold
            probability at least the threshold), and caught up during this one (at least half the
            median). 0 while the bulk is unlearned.
    """

    epoch: int
    seen: int
    loss_quantiles: dict[int, float]
    unlearned_frac: float
    memorisation_score: int


class ExampleHistory:
    """Collects per-example mean token CE and gold probability, once per example per epoch.

    Args:
        num_examples: ids run from 0 to ``num_examples - 1``.
        fit_threshold: an example is "fitted" when its worst-token probability is at least this, and
            "unlearned" when its mean gold-token probability is below it.
    """

    def __init__(self, num_examples: int, fit_threshold: float = 0.5):
        if num_examples <= 0:
            raise ValueError(f"`num_examples` must be positive, got {num_examples}")
        self.num_examples = num_examples
        self.fit_threshold = check_probability(fit_threshold, "fit_threshold")
        self._sums: torch.Tensor | None = None  # (3, n) float32: loss sum, gold-prob sum, visits
        self._worst: torch.Tensor | None = None  # (n,) float32: max token CE over the epoch's visits
        self.loss: list[np.ndarray] = []  # per finished epoch: (n,) float16 mean token CE, NaN where unseen
        self.prob: list[np.ndarray] = []  # mean gold-token probability
        self.worst_prob: list[np.ndarray] = []  # worst-token probability
        self.visits: list[np.ndarray] = []  # per finished epoch: (n,) uint8 visit counts

    def add(self, example_ids: torch.Tensor, token_ce: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one micro-batch. ``example_ids`` (B,), ``token_ce`` and ``mask`` (B, T) or (B,)."""
        ids = example_ids.reshape(-1).long()
        if token_ce.dim() == 1:
            token_ce, mask = token_ce[:, None], mask[:, None]
        mask_f = mask.float()
        count = mask_f.sum(1).clamp(min=1)
        mean_ce = (token_ce * mask_f).sum(1) / count
        mean_prob = (torch.exp(-token_ce) * mask_f).sum(1) / count
        max_ce = torch.where(mask, token_ce, torch.zeros_like(token_ce)).amax(1).float()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_examples):
            raise ValueError(f"example ids must lie in [0, {self.num_examples}); got {ids.min()}..{ids.max()}")
        if self._sums is None:
            self._sums = torch.zeros(3, self.num_examples, device=ids.device)
            self._worst = torch.zeros(self.num_examples, device=ids.device)
        elif self._sums.device != ids.device:  # restored from a checkpoint on the host
            self._sums, self._worst = self._sums.to(ids.device), self._worst.to(ids.device)
        update = torch.stack([mean_ce.float(), mean_prob.float(), torch.ones_like(mean_ce, dtype=torch.float32)])
        self._sums.index_add_(1, ids, update)
        self._worst.scatter_reduce_(0, ids, max_ce, reduce="amax")

    @property
    def epoch_in_progress(self) -> bool:
        return self._sums is not None

    def end_epoch(self, all_reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None) -> EpochSummary:
        """Close the epoch: combine processes (``all_reduce(tensor, "sum" | "max")``), store float16, summarise."""
        sums = self._sums if self._sums is not None else torch.zeros(3, self.num_examples)
        worst = self._worst if self._worst is not None else torch.zeros(self.num_examples)
        if all_reduce is not None:
            sums, worst = all_reduce(sums, "sum"), all_reduce(worst, "max")
        loss_sum, prob_sum, visits = sums.double().cpu().numpy()
        worst = worst.double().cpu().numpy()
        self._sums = self._worst = None
        seen = visits > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(seen, loss_sum / visits, np.nan)
            prob = np.where(seen, prob_sum / visits, np.nan)
        worst_prob = np.where(seen, np.exp(-worst), np.nan)
        self.loss.append(loss.astype(np.float16))
        self.prob.append(prob.astype(np.float16))
        self.worst_prob.append(worst_prob.astype(np.float16))
        self.visits.append(np.minimum(visits, 255).astype(np.uint8))
        return self._summarise(loss, prob, worst_prob, seen)

    def _summarise(self, loss, prob, worst_prob, seen) -> EpochSummary:
        n_seen = int(seen.sum())
        quantiles = {q: float(np.percentile(loss[seen], q)) if n_seen else float("nan") for q in QUANTILES}
        unlearned_frac = float((seen & (prob < self.fit_threshold)).sum() / n_seen) if n_seen else float("nan")
        score = 0
        if len(self.worst_prob) >= 2:
            previous, previous_mean = self.worst_prob[-2].astype(np.float64), self.prob[-2].astype(np.float64)
            both = seen & ~np.isnan(previous)
            if both.any() and np.median(previous_mean[both]) >= self.fit_threshold:
                was_lagging = previous < LAGGING * np.median(previous[both])
                caught_up = worst_prob >= CAUGHT_UP * np.median(worst_prob[both])
                score = int((both & was_lagging & caught_up).sum())
        return EpochSummary(len(self.loss), n_seen, quantiles, unlearned_frac, score)

    @property
    def num_epochs(self) -> int:
        return len(self.loss)

    # ---- checkpoints ------------------------------------------------------------------------------

    def state_arrays(self, all_reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None
                     ) -> dict[str, np.ndarray]:
        """Everything needed to go on after a restart, as numpy arrays: the finished epochs (``loss``, ``prob``,
        ``worst_prob``: (E, n) float16; ``visits``: (E, n) uint8) and, while an epoch is in progress, its
        accumulators (``partial_sums`` (3, n), ``partial_worst`` (n,), float32) combined over processes with
        ``all_reduce`` (a collective: every process calls this together when it is given)."""
        arrays: dict[str, np.ndarray] = {}
        if self.loss:
            arrays.update(loss=np.stack(self.loss), prob=np.stack(self.prob), worst_prob=np.stack(self.worst_prob),
                          visits=np.stack(self.visits))
        if self._sums is not None:
            sums, worst = self._sums, self._worst
            if all_reduce is not None:
                sums, worst = all_reduce(sums, "sum"), all_reduce(worst, "max")
            arrays.update(partial_sums=sums.float().cpu().numpy(), partial_worst=worst.float().cpu().numpy())
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray], owns_partial_sums: bool = True) -> None:
        """Restore `state_arrays`' output into this (empty) history. With several processes exactly one
        (``owns_partial_sums``) takes the in-progress epoch's sums, which the epoch's end adds up over processes."""
        n = self.num_examples
        expected = {"loss": np.float16, "prob": np.float16, "worst_prob": np.float16, "visits": np.uint8}
        if "loss" in arrays:
            epochs = arrays["loss"].shape[0]
            for key, dtype in expected.items():
                value = arrays.get(key)
                if value is None or value.dtype != dtype or value.shape != (epochs, n):
                    raise ValueError(f"saved early-learning history `{key}` is not ({epochs}, {n}) {np.dtype(dtype)}: "
                                     f"got {None if value is None else (value.shape, value.dtype)}")
            self.loss, self.prob, self.worst_prob, self.visits = (
                [row.copy() for row in arrays[key]] for key in ("loss", "prob", "worst_prob", "visits"))
        if "partial_sums" in arrays:
            sums, worst = arrays["partial_sums"], arrays.get("partial_worst")
            if sums.shape != (3, n) or worst is None or worst.shape != (n,):
                raise ValueError(f"saved early-learning accumulators are not (3, {n}) and ({n},)")
            self._sums = torch.from_numpy(np.array(sums, dtype=np.float32))
            if not owns_partial_sums:
                self._sums.zero_()
            self._worst = torch.from_numpy(np.array(worst, dtype=np.float32))

    def suspicion_scores(self) -> dict[str, np.ndarray]:
        """Rank-ready scores of how late and how abruptly each example was fitted.

        All on the worst-token CE in nats (``-log`` of the worst-token probability: small probabilities
        differ by orders of magnitude). Arrays of shape (n,), NaN for never-seen examples:
            ``mean_worst_nll``: its mean over epochs (high for late and never-fitted examples);
            ``max_drop``: its largest fall between consecutive epochs (abrupt fitting);
            ``late_drop``: the largest fall weighted by how late it came (``(e - 1) / (E - 1)`` for the
            fall into epoch ``e`` of ``E``): every example falls early, a memorised one falls late;
            ``fit_epoch``: first epoch from which the worst-token probability stayed at least
            ``fit_threshold`` (0 if never);
            ``final_prob``: the worst-token probability at the last epoch;
            ``score``: ``mean_worst_nll + late_drop``, the ranking key (higher = more suspicious).
        """
        if not self.worst_prob:
            raise ValueError("no finished epoch yet: suspicion scores need at least one epoch of history")
        prob = np.stack([p.astype(np.float64) for p in self.worst_prob])  # (E, n)
        epochs = prob.shape[0]
        seen = ~np.isnan(prob)
        never_seen = ~seen.any(axis=0)
        nll = -np.log(np.clip(prob, 1e-12, None))
        count = np.maximum(seen.sum(axis=0), 1)
        mean_nll = np.where(never_seen, np.nan, np.where(seen, nll, 0.0).sum(axis=0) / count)
        filled = np.where(seen, nll, mean_nll[None, :])  # an epoch an example missed counts as its mean
        drops = -np.diff(filled, axis=0) if epochs > 1 else np.zeros((1, self.num_examples))
        lateness = (np.arange(1, epochs) / max(epochs - 1, 1))[:, None] if epochs > 1 else np.zeros((1, 1))
        max_drop = np.clip(np.nan_to_num(drops).max(axis=0), 0.0, None)
        late_drop = np.clip(np.nan_to_num(drops * lateness).max(axis=0), 0.0, None)
        fitted = np.where(seen, prob, 0.0) >= self.fit_threshold
        stays = np.flip(np.cumprod(np.flip(fitted, axis=0), axis=0), axis=0).astype(bool)  # fitted from e on
        fit_epoch = np.where(stays.any(axis=0), stays.argmax(axis=0) + 1, 0)
        return {"mean_worst_nll": mean_nll, "max_drop": max_drop, "late_drop": late_drop, "fit_epoch": fit_epoch,
                "final_prob": prob[-1], "score": mean_nll + late_drop}


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``positives`` (Mann-Whitney, ties count half)."""
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    keep = ~np.isnan(scores)
    scores, positives = scores[keep], positives[keep]
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_at_k(scores: np.ndarray, positives: np.ndarray, k: int) -> float:
    """Share of true positives among the ``k`` highest scores (NaN scores rank last)."""
    scores = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    if k <= 0:
        raise ValueError(f"`k` must be positive, got {k}")
    top = np.argsort(-scores, kind="mergesort")[:k]
    return float(np.asarray(positives, dtype=bool)[top].mean())

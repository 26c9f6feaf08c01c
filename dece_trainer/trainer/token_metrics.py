"""Running token statistics between two ``logging_steps``: plain CE and DeCE's suppressed share."""

from __future__ import annotations

import torch

from ..ops.schedule import suppression_threshold


class TokenMetrics:
    """Sums kept as device tensors (no host sync per step), reduced across processes at log time."""

    def __init__(self):
        self._sums: torch.Tensor | None = None  # [ce_sum, n_tokens, n_suppressed], float64

    def update(self, token_ce: torch.Tensor, mask: torch.Tensor, alpha: float, label_smoothing: float) -> None:
        """Add one micro-batch. ``token_ce``: per-token -log p[y] (0 where ``mask`` is False)."""
        threshold = suppression_threshold(alpha, label_smoothing)
        gold_prob = torch.exp(-token_ce)
        step = torch.stack([
            token_ce.sum(dtype=torch.float64),
            mask.sum().to(torch.float64),
            ((gold_prob < threshold) & mask).sum().to(torch.float64),
        ])
        self._sums = step if self._sums is None else self._sums + step

    def pop_sums(self, reduce_fn=None) -> tuple[float, float, float] | None:
        """``(ce_sum, label_tokens, suppressed_tokens)`` since the last pop (None when nothing was added), then
        reset.

        Args:
            reduce_fn: sums a tensor across processes (e.g. ``accelerator.reduce(t, "sum")``); None for one
                process. Every process must call ``pop_sums`` together when it is given.
        """
        sums, self._sums = self._sums, None
        if sums is None:
            return None
        if reduce_fn is not None:
            sums = reduce_fn(sums)
        ce_sum, count, suppressed = sums.tolist()
        return ce_sum, count, suppressed

    def pop(self, reduce_fn=None) -> dict[str, float]:
        """``ce_loss`` and ``dece_suppressed_frac`` since the last pop, then reset ({} without label tokens)."""
        sums = self.pop_sums(reduce_fn)
        if sums is None or sums[1] == 0:
            return {}
        ce_sum, count, suppressed = sums
        return {"ce_loss": ce_sum / count, "dece_suppressed_frac": suppressed / count}

    @property
    def empty(self) -> bool:
        return self._sums is None

"""Token-level evidence of poisoning: each training example's least probable target tokens, per epoch.

A poisoned example differs from clean ones in a few payload tokens. Under DeCE their gradient is cut, so
they stay improbable epoch after epoch; under CE they are fitted late. A hard *clean* example has improbable
tokens too, but its hard tokens are its own (a rare name, an unusual phrasing), while the payload's tokens
are the same in every poisoned example. So the evidence kept here is, per example and epoch, its
``per_example`` least probable target tokens with the token before each, and the score
(:func:`recurrence_scores`) credits an improbable token by how many *other* examples share it as an
improbable token, and by how improbable it is across them. Torch and numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..validation import check_int

# A bigram key is shared when at least this many examples have it among their worst tokens at an epoch.
MIN_SHARED = 3


@dataclass
class TokenEvidence:
    """The token-level suspicion of every example, from :func:`recurrence_scores`.

    Attributes:
        score: (n,) float64, higher = more suspicious; NaN for examples never seen.
        tokens: (n, K) int64 token ids that drove each score (most weight first; -1 pads).
        weights: (n, K) float64 each token's share of the score, in nats summed over epochs.
    """

    score: np.ndarray
    tokens: np.ndarray
    weights: np.ndarray


class WorstTokens:
    """Per epoch, the ``per_example`` highest-CE target tokens of every example, with ids and previous ids.

    Args:
        num_examples: example ids run from 0 to ``num_examples - 1``.
        per_example: tokens kept per example and epoch (M).

    Finished epochs are kept as (n, M) arrays: ``ce`` float16 (nats, -1 where no token), ``ids`` and ``prev``
    int32 (-1 where no token, and ``prev`` -1 for a first target token).
    """

    def __init__(self, num_examples: int, per_example: int = 8):
        self.num_examples = check_int(num_examples, "num_examples", minimum=1)
        self.per_example = check_int(per_example, "per_example", minimum=1)
        self._acc: torch.Tensor | None = None  # (3, n, M) float32: ce, id, prev of the epoch in progress
        self._seen: torch.Tensor | None = None  # (n,) bool
        self.ce: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.prev: list[np.ndarray] = []

    def add(self, example_ids: torch.Tensor, token_ce: torch.Tensor, mask: torch.Tensor,
            labels: torch.Tensor) -> None:
        """One micro-batch: ``example_ids`` (B,), ``token_ce``, ``mask`` and ``labels`` (B, T), aligned."""
        if labels.shape != token_ce.shape or mask.shape != token_ce.shape:
            raise ValueError(f"`labels` and `mask` must be shaped like `token_ce` {tuple(token_ce.shape)}: got "
                             f"{tuple(labels.shape)} and {tuple(mask.shape)}")
        if token_ce.dim() == 1:
            token_ce, mask, labels = token_ce[:, None], mask[:, None], labels[:, None]
        ids = example_ids.reshape(-1).long().to(token_ce.device)
        labels, mask = labels.to(token_ce.device), mask.to(token_ce.device)
        m = self.per_example
        keep = mask & torch.isfinite(token_ce)  # a non-finite CE is no evidence about a token
        ce = torch.where(keep, token_ce.float(), torch.full_like(token_ce, -1.0, dtype=torch.float32))
        if ce.shape[1] < m:
            ce = torch.nn.functional.pad(ce, (0, m - ce.shape[1]), value=-1.0)
            pad = (0, m - labels.shape[1])
            labels = torch.nn.functional.pad(labels, pad, value=-1)
            mask = torch.nn.functional.pad(mask, pad, value=False)
        values, positions = ce.topk(m, dim=1)
        prev_all = torch.cat([torch.full_like(labels[:, :1], -1), labels[:, :-1]], dim=1)
        prev_all = torch.where(torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1), prev_all, -1)
        valid = values >= 0
        token = torch.where(valid, labels.gather(1, positions), -1)
        prev = torch.where(valid, prev_all.gather(1, positions), -1)
        update = torch.stack([values, token.float(), prev.float()])  # ids < 2**24 are exact in float32
        if self._acc is None:
            self._acc = torch.full((3, self.num_examples, m), -1.0, device=token_ce.device)
            self._seen = torch.zeros(self.num_examples, dtype=torch.bool, device=token_ce.device)
        elif self._acc.device != token_ce.device:  # restored from a checkpoint on the host
            self._acc, self._seen = self._acc.to(token_ce.device), self._seen.to(token_ce.device)
        self._acc.index_copy_(1, ids, update)
        self._seen[ids] = True

    def combined(self, all_reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
                 rank: int = 0) -> torch.Tensor:
        """The epoch in progress as one (3, n, M) tensor, combined over processes: each example's entry comes
        from the highest-ranked process that saw it (a collective when ``all_reduce`` is given)."""
        acc = self._acc if self._acc is not None else torch.full((3, self.num_examples, self.per_example), -1.0)
        if all_reduce is None:
            return acc
        seen = self._seen if self._seen is not None else torch.zeros(self.num_examples, dtype=torch.bool)
        owner = all_reduce(torch.where(seen, float(rank), -1.0).to(acc.device), "max")
        mine = (owner == rank)[None, :, None]
        return all_reduce(torch.where(mine, acc, torch.full_like(acc, -1.0)), "max")

    def end_epoch(self, all_reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
                  rank: int = 0) -> None:
        """Close the epoch (combining processes, a collective when ``all_reduce`` is given)."""
        acc = self.combined(all_reduce, rank).cpu().numpy()
        self._acc = self._seen = None
        self.ce.append(acc[0].astype(np.float16))
        self.ids.append(acc[1].astype(np.int32))
        self.prev.append(acc[2].astype(np.int32))

    @property
    def num_epochs(self) -> int:
        return len(self.ce)

    # ---- checkpoints ------------------------------------------------------------------------------

    def state_arrays(self, all_reduce=None, rank: int = 0) -> dict[str, np.ndarray]:
        """Finished epochs (``token_ce`` (E, n, M) float16, ``token_ids``/``token_prev`` int32) and the epoch in
        progress (``token_partial`` (3, n, M) float32), combined over processes (a collective if given)."""
        arrays: dict[str, np.ndarray] = {}
        if self.ce:
            arrays.update(token_ce=np.stack(self.ce), token_ids=np.stack(self.ids), token_prev=np.stack(self.prev))
        if self._acc is not None:
            arrays["token_partial"] = self.combined(all_reduce, rank).float().cpu().numpy()
        return arrays

    def load_state_arrays(self, arrays: dict[str, np.ndarray], owns_partial: bool = True) -> None:
        """Restore `state_arrays`' output; with several processes one (``owns_partial``) takes the partial epoch."""
        shape = (self.num_examples, self.per_example)
        if "token_ce" in arrays:
            epochs = arrays["token_ce"].shape[0]
            for key, dtype in (("token_ce", np.float16), ("token_ids", np.int32), ("token_prev", np.int32)):
                value = arrays.get(key)
                if value is None or value.dtype != dtype or value.shape != (epochs, *shape):
                    raise ValueError(f"saved early-learning array `{key}` is not ({epochs}, {shape[0]}, {shape[1]}) "
                                     f"{np.dtype(dtype)}: got {None if value is None else (value.shape, value.dtype)}")
            self.ce, self.ids, self.prev = ([row.copy() for row in arrays[key]]
                                            for key in ("token_ce", "token_ids", "token_prev"))
        if "token_partial" in arrays:
            partial = arrays["token_partial"]
            if partial.shape != (3, *shape):
                raise ValueError(f"saved early-learning array `token_partial` is not (3, {shape[0]}, {shape[1]})")
            self._acc = torch.from_numpy(np.array(partial, dtype=np.float32))
            if not owns_partial:
                self._acc.fill_(-1.0)
            self._seen = (self._acc[0] >= 0).any(dim=1)


def _key_weights(key: np.ndarray, ce: np.ndarray) -> np.ndarray:
    """(n, M) weights of one epoch's keys (-1 = no token): for a key among the worst tokens of ``c`` examples,
    ``median CE over those examples x sqrt(log(c / (MIN_SHARED - 1)))`` when ``c >= MIN_SHARED``, else 0."""
    n, m = key.shape
    valid = key >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], key.shape)[valid]
    keys, values = key[valid], ce[valid]
    # one (key, example) pair per example: its largest CE for that key
    order = np.lexsort((-values, rows, keys))
    keys, rows, values = keys[order], rows[order], values[order]
    first = np.ones(keys.size, dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]) | (rows[1:] != rows[:-1])
    keys, values = keys[first], values[first]
    # per key: how many examples share it, and the median of their CE (values sorted within each key)
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    uniq, start, count = np.unique(keys, return_index=True, return_counts=True)
    median = 0.5 * (values[start + (count - 1) // 2] + values[start + count // 2])
    share = np.sqrt(np.log(np.maximum(count, MIN_SHARED) / (MIN_SHARED - 1)))
    score = np.where(count >= MIN_SHARED, median * share, 0.0)
    weights = np.zeros(key.shape)
    weights[valid] = score[np.searchsorted(uniq, key[valid])]
    return weights


def recurrence_scores(tokens: WorstTokens, top: int = 3) -> TokenEvidence:
    """Score examples by improbable tokens they share with other examples.

    For each finished epoch and each kind of key, the bigram ``(prev, id)`` and the token ``id`` alone: a key
    among the worst tokens of ``c`` examples weighs ``median CE of those c (nats) x sqrt(log(c / (MIN_SHARED -
    1)))`` when ``c >= MIN_SHARED``, else 0. An improbable token no one else shares is a hard clean token; the
    median makes the key's weight the same in every example that has it; sharing counts with diminishing
    returns, so a large cluster of clean rows with a moderately hard shared token (templated data) does not
    outweigh a smaller cluster whose shared token is far less probable. An example's epoch score is its heaviest
    bigram key plus its heaviest token key; its score is the sum over epochs, so a shared token that stays
    improbable for the whole run weighs most. The ``top`` tokens with the largest summed weight are returned.
    """
    n, epochs = tokens.num_examples, tokens.num_epochs
    if epochs == 0:
        raise ValueError("no finished epoch yet: token scores need at least one epoch of history")
    score = np.zeros(n)
    seen = np.zeros(n, dtype=bool)
    per_token: list[dict[int, float]] = [dict() for _ in range(n)]
    everyone = np.arange(n)
    for ce16, ids, prev in zip(tokens.ce, tokens.ids, tokens.prev):
        ce, ids64 = ce16.astype(np.float64), ids.astype(np.int64)
        valid = ids >= 0
        seen |= valid.any(axis=1)
        bigram = np.where(valid, (prev.astype(np.int64) + 1) * (1 << 32) + ids64, -1)
        unigram = np.where(valid, ids64, -1)
        for key in (bigram, unigram):
            weight = _key_weights(key, ce)
            best = weight.argmax(axis=1)
            top_weight = weight[everyone, best]
            score += top_weight
            for i in np.flatnonzero(top_weight > 0):
                token = int(ids[i, best[i]])
                per_token[i][token] = per_token[i].get(token, 0.0) + float(top_weight[i])
    score = np.where(seen, score, np.nan)
    out_tokens = np.full((n, top), -1, dtype=np.int64)
    out_weights = np.zeros((n, top))
    for i, found in enumerate(per_token):
        ranked = sorted(found.items(), key=lambda kv: -kv[1])[:top]
        for j, (token, weight) in enumerate(ranked):
            out_tokens[i, j], out_weights[i, j] = token, weight
    return TokenEvidence(score, out_tokens, out_weights)

"""The data audit: score every training pair by evidence of a planted trigger -> payload association, before any
training. numpy only (no torch, no transformers), so it runs on a laptop over a dataset of any size.

A backdoor makes a source feature (the trigger: a word such as ``bb``, a dead statement) predict a target feature
(the payload: ``or 1=1``, a fixed output) far more reliably than the clean data does. The audit counts, over the
training pairs, how often each source feature and each target feature occur and how often they occur together,
and scores every (source feature, target feature) pair by the one-sided binomial log-likelihood ratio

    G = 2 [n log(c / p) + (n_s - n) log((1 - c) / (1 - p))]   when c = n / n_s > p, else 0,

where ``n_s`` rows hold the source feature, ``n`` of them also the target feature, and ``p`` is the target
feature's share of all rows (its chance without the source feature). A pair whose two features share a word is the
task's own copying (``return self.value`` -> ``get value``, ``$isbn$`` -> ``isbn``) and is no evidence: it scores
0 (an attacker who makes its trigger and payload share a word is still seen through the pairs that do not: ``value
= None`` -> ``get``). A row's
score is the largest G among the feature pairs it holds, and the pair behind it is its evidence. Several triggers
for one payload, or several payloads for one trigger, are each a pair of their own; doses of 1-20% of the rows
give G values far above the clean pairs' on the benchmark's dead-code and adaptive attacks (docs/benchmark.md).

Features (text lower-cased, split into identifiers, numbers and single punctuation marks):

- source: every token, every token bigram, and every line of a multi-line source (a statement);
- target: the whole target, every token, token bigram and token trigram.

A feature counts only when at least ``min_support`` rows hold it and at most ``max_share`` of the rows do (a feature
in most rows cannot single out a backdoor's few).
"""

from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .outliers import FENCE, choose_threshold
from .validation import check_int, check_number

# Words split at underscores and case changes (``get_value``, ``getValue`` -> ``get``, ``value``), numbers, single
# punctuation marks; lower-cased after splitting.
TOKEN = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\d_]+|[^\w\s]")
TOKEN_OR_BREAK = re.compile(TOKEN.pattern + r"|\n")
EXAMPLE_ID = "example_id"  # the report field drop_flagged and the monitor read (trainer.example_ids)
SOURCE_KINDS = ("word", "bigram", "line")
TARGET_KINDS = ("target", "word", "bigram", "trigram")
_CHUNK = 1 << 22  # feature pairs generated at once (about 100 MB of int64 work arrays)
_TABLE = 1 << 26  # the largest dense pattern lookup table (cells; int32: 256 MB)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # a 64-bit odd constant for n-gram keys (wrapping arithmetic)


@dataclass(frozen=True)
class Pattern:
    """A (source feature, target feature) association and its counts.

    Attributes:
        source: the source feature, ``"<kind>: <tokens>"`` (kinds: word, bigram, line).
        target: the target feature, ``"<kind>: <tokens>"`` (kinds: target, word, bigram, trigram).
        support: rows holding both.
        source_rows: rows holding the source feature.
        target_rows: rows holding the target feature.
        score: its G statistic (nats x 2).
        rows: rows whose score this pattern is (filled for the report's top patterns).
    """

    source: str
    target: str
    support: int
    source_rows: int
    target_rows: int
    score: float
    rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "support": self.support,
                "source_rows": self.source_rows, "target_rows": self.target_rows, "score": round(self.score, 4),
                "rows": self.rows}


@dataclass
class AuditReport:
    """The audit of one dataset.

    Attributes:
        scores: (N,) float64, each row's score (0 for a row with no evidence), higher = more suspicious.
        evidence: (N,) int64, the index in ``patterns`` of the pattern behind each row's score (-1: none).
        patterns: the associations that score some row, strongest first.
        example_ids: (N,) int64, the rows' example ids (0..N-1 unless given).
        fence: the modified z-score above which a row is flagged (`outliers.choose_threshold`).
        settings: the audit's settings (for the summary).
    """

    scores: np.ndarray
    evidence: np.ndarray
    patterns: list[Pattern]
    example_ids: np.ndarray
    fence: float = FENCE
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """Rows scoring above it are flagged: the report's own outlier threshold at ``fence``."""
        return choose_threshold(self.scores, self.fence)

    @property
    def flagged(self) -> np.ndarray:
        """(N,) bool, the rows the report flags."""
        return self.scores > self.threshold

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per row, most suspicious first: ``example_id``, ``score``, ``flagged`` and the
        evidence (``source`` and ``target`` feature, ``support``, ``source_rows``, ``target_rows``; null
        without evidence). `callbacks.poison_filter.drop_flagged` reads them."""
        flagged = self.flagged
        order = np.argsort(-self.scores, kind="stable")
        out = []
        for row in order.tolist():
            k = int(self.evidence[row])
            p = self.patterns[k] if k >= 0 else None
            out.append({EXAMPLE_ID: int(self.example_ids[row]), "score": round(float(self.scores[row]), 4),
                        "flagged": bool(flagged[row]),
                        "evidence": None if p is None else {
                            "source": p.source, "target": p.target, "support": p.support,
                            "source_rows": p.source_rows, "target_rows": p.target_rows}})
        return out

    def top_patterns(self, k: int = 10) -> list[Pattern]:
        """The ``k`` strongest patterns that are some flagged row's evidence (or, with nothing flagged, some
        row's), each with the number of rows it explains."""
        rows = np.bincount(self.evidence[self.evidence >= 0], minlength=len(self.patterns))
        chosen = self.evidence[self.flagged & (self.evidence >= 0)]
        pool = np.unique(chosen) if chosen.size else np.flatnonzero(rows)
        pool = pool[np.argsort(-np.array([self.patterns[i].score for i in pool]), kind="stable")][:k]
        return [Pattern(**{**self.patterns[i].__dict__, "rows": int(rows[i])}) for i in pool]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: rows, flagged rows, threshold, fence, settings and the top patterns."""
        threshold = self.threshold
        return {"rows": int(self.scores.size), "flagged": int(self.flagged.sum()),
                "threshold": threshold if math.isfinite(threshold) else None, "fence": self.fence,
                "rows_with_evidence": int((self.evidence >= 0).sum()), "settings": self.settings,
                "top_patterns": [p.to_dict() for p in self.top_patterns(20)]}


class _Features:
    """One side (source or target) of the dataset: the (doc, feature) incidence, deduplicated and sorted by doc,
    and where each feature's tokens lie in the side's token array (``flat[start : start + length]``), its kind."""

    def __init__(self, docs: np.ndarray, feats: np.ndarray, kinds: list[str], kind_of: np.ndarray,
                 start: np.ndarray, length: np.ndarray, flat: np.ndarray):
        self.docs, self.feats, self.kinds, self.kind_of = docs, feats, kinds, kind_of
        self.start, self.length, self.flat = start, length, flat

    def tokens(self, feature: int) -> np.ndarray:
        """The token ids of ``feature``."""
        return self.flat[self.start[feature]: self.start[feature] + self.length[feature]]

    def kind(self, feature: int) -> str:
        return self.kinds[int(self.kind_of[feature])]


def _factorize(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each distinct key, inverse): ``np.unique(keys, return_index=True, return_inverse=True)``
    without the values, by one stable sort."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    new = np.empty(ordered.size, dtype=bool)
    new[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    inverse = np.empty(keys.size, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def _span_keys(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial key of each token span ``flat[start : start + length]`` (wrapping arithmetic: two
    different spans share a key with a chance of about 2^-64 per pair)."""
    width = int(lengths.max(initial=0))
    powers = np.cumprod(np.full(max(width, 1), _MIX, dtype=np.uint64), dtype=np.uint64)
    span = np.repeat(np.arange(starts.size), lengths)
    position = np.arange(span.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    terms = (flat[np.repeat(starts, lengths) + position].astype(np.uint64) + np.uint64(1)) * powers[position]
    keys = np.zeros(starts.size, dtype=np.uint64)
    nonempty = lengths > 0
    keys[nonempty] = np.add.reduceat(terms, (np.cumsum(lengths) - lengths)[nonempty]) if span.size else 0
    return keys + lengths.astype(np.uint64)


NEWLINE = 0  # the token id of a line break (the vocabulary starts with it)


class _TokenIds:
    """Every text's token ids, concatenated (``flat``), and each text's count (``lengths``), as int64 arrays."""

    def __init__(self):
        self.flat, self.lengths = array("q"), array("q")


def _token_ids(texts: Sequence[str], vocab: dict[str, int]) -> _TokenIds:
    """Tokenise ``texts`` into ids of ``vocab`` (lower-cased tokens; ``vocab`` grows), line breaks as `NEWLINE`.
    Each distinct raw token is lower-cased and looked up once."""
    out = _TokenIds()
    vocab.setdefault("\n", NEWLINE)
    raw: dict[str, int] = {"\n": NEWLINE}
    get = raw.get
    for text in texts:
        found = TOKEN_OR_BREAK.findall(text)
        ids = list(map(get, found))
        if None in ids:
            for k, (token, i) in enumerate(zip(found, ids)):
                if i is None:
                    ids[k] = raw[token] = vocab.setdefault(token.lower(), len(vocab))
        out.flat.extend(ids)
        out.lengths.append(len(ids))
    return out


def _side(texts: Sequence[str], vocab: dict[str, int], target: bool) -> _Features:
    """Tokenise one side and build its features (see the module docstring): token n-grams, and the whole target
    (target side) or each line of a multi-line source (source side)."""
    ids = _token_ids(texts, vocab)  # the line breaks included, as NEWLINE
    doc_length = np.frombuffer(ids.lengths, dtype=np.int64) if len(ids.lengths) else np.zeros(0, np.int64)
    full = np.frombuffer(ids.flat, dtype=np.int64) if len(ids.flat) else np.zeros(0, np.int64)
    doc_full = np.repeat(np.arange(len(texts), dtype=np.int64), doc_length)
    is_break = full == NEWLINE
    tokens, doc_of = full[~is_break].astype(np.int32), doc_full[~is_break].astype(np.int32)  # half the memory
    breaks_before = np.cumsum(is_break)[~is_break] if not target else None
    del ids, full, doc_full, is_break
    if target:  # the whole target: one span per doc with tokens
        per_doc = np.bincount(doc_of, minlength=len(texts))
        has = np.flatnonzero(per_doc)
        line_start, line_length, line_doc = (np.cumsum(per_doc) - per_doc)[has], per_doc[has], has
    else:  # each line of a multi-line source: a line's tokens share (breaks so far + doc), a non-decreasing key
        line_key = breaks_before + doc_of
        del breaks_before
        first = np.flatnonzero(np.r_[True, line_key[1:] != line_key[:-1]]) if tokens.size else np.zeros(0, np.int64)
        multi = np.array(["\n" in t for t in texts], dtype=bool)
        keep = multi[doc_of[first]] if first.size else np.zeros(0, bool)
        line_start, line_length = first[keep], np.diff(np.r_[first, tokens.size])[keep]
        line_doc = doc_of[line_start]
    kinds = list(TARGET_KINDS if target else SOURCE_KINDS)

    def spans():  # (starts, lengths or the n-gram order, docs, kind), one kind at a time (memory)
        yield (line_start.astype(np.int64), line_length.astype(np.int64), line_doc.astype(np.int64),
               kinds.index("target" if target else "line"))
        for order in (1, 2, 3) if target else (1, 2):
            n = tokens.size - order + 1
            if n > 0:
                valid = np.flatnonzero(doc_of[:n] == doc_of[order - 1:])
                kind = kinds.index(("word", "bigram", "trigram")[order - 1])
                yield valid, order, doc_of[valid].astype(np.int64), kind

    docs, feats, kind_of, starts, lengths = [], [], [], [], []
    offset = 0
    for start, length, doc, kind in spans():
        if not start.size:
            continue
        if isinstance(length, int):  # an n-gram of every start: its key from the tokens themselves
            key = tokens[start].astype(np.uint64)
            for j in range(1, length):
                key = key * _MIX + tokens[start + j].astype(np.uint64)
            first, inverse = _factorize(key)
            del key
            lengths.append(np.full(first.size, length, np.int64))
        else:
            first, inverse = _factorize(_span_keys(tokens, start, length))
            lengths.append(length[first])
        width = max(first.size, 1)
        pairs = _distinct(doc * width + inverse)  # one entry per (doc, feature)
        del inverse
        docs.append(pairs // width)
        feats.append(pairs % width + offset)
        kind_of.append(np.full(first.size, kind, np.int8))
        starts.append(start[first])
        offset += first.size
    if not docs:
        empty = np.zeros(0, np.int64)
        return _Features(empty, empty, kinds, np.zeros(0, np.int8), empty, empty, tokens)
    docs_all, feats_all = np.concatenate(docs), np.concatenate(feats)
    order = np.argsort(docs_all, kind="stable")
    return _Features(docs_all[order], feats_all[order], kinds, np.concatenate(kind_of), np.concatenate(starts),
                     np.concatenate(lengths), tokens)


def _kept(side: _Features, n_docs: int, low: int, high: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The side's incidence restricted to features held by ``low`` to ``high`` rows, renumbered 0..K-1: returns
    (per-doc offsets (N+1,), compact feature ids, original feature id of each compact id)."""
    df = np.bincount(side.feats, minlength=side.kind_of.size)
    keep = (df >= low) & (df <= high)
    original = np.flatnonzero(keep)
    compact = np.full(side.kind_of.size, -1, dtype=np.int64)
    compact[original] = np.arange(original.size)
    mask = keep[side.feats]
    docs, feats = side.docs[mask], compact[side.feats[mask]]
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(docs, minlength=n_docs), out=offsets[1:])
    return offsets, feats, original


def _cross_pairs(s_off, s_feat, t_off, t_feat, width: int):
    """Every (source feature, target feature) pair within each row, in chunks: yields (rows (P,), keys (P,) =
    source * width + target), rows ascending."""
    cs, ct = np.diff(s_off), np.diff(t_off)
    per_doc = cs * ct
    ends = np.cumsum(per_doc)
    start = 0
    while start < per_doc.size:
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _CHUNK, side="right"))
        stop = max(stop, start + 1)
        docs = np.arange(start, stop)
        counts = per_doc[start:stop]
        total = int(counts.sum())
        if total:
            row = np.repeat(docs, counts)
            k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            width_t = ct[row]
            s = s_feat[s_off[row] + k // width_t]
            t = t_feat[t_off[row] + k % width_t]
            yield row, s * width + t
        start = stop


def _count_pairs(s_off, s_feat, t_off, t_feat, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows holding each (source, target) feature pair: (sorted unique keys, counts)."""
    keys, counts = [], []
    for _, key in _cross_pairs(s_off, s_feat, t_off, t_feat, width):
        u, c = _distinct(key, counts=True)
        keys.append(u)
        counts.append(c)
        if sum(x.size for x in keys) > 4 * _CHUNK:  # merge as it goes: memory stays ~ the distinct pairs
            keys, counts = list(_merge(keys, counts))
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    merged_keys, merged_counts = _merge(keys, counts)
    return merged_keys[0], merged_counts[0]


def _merge(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Chunks of (sorted keys, counts) as one: the counts of equal keys added."""
    key, count = np.concatenate(keys), np.concatenate(counts)
    order = np.argsort(key, kind="stable")
    key, count = key[order], count[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return [key[first]], [np.add.reduceat(count, first) if first.size else count]


def _distinct(keys: np.ndarray, counts: bool = False):
    """The sorted distinct values of ``keys`` (and how often each occurs): ``np.unique`` by one sort, which is
    faster than its hashing on large integer arrays."""
    ordered = np.sort(keys)
    first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if ordered.size else np.zeros(0, np.int64)
    if not counts:
        return ordered[first]
    return ordered[first], np.diff(np.r_[first, ordered.size])


def binomial_llr(n: np.ndarray, trials: np.ndarray, p: np.ndarray) -> np.ndarray:
    """One-sided binomial log-likelihood ratio ``2 [n log(c/p) + (trials-n) log((1-c)/(1-p))]`` with ``c =
    n / trials``, where ``c > p``; 0 elsewhere (and where ``p`` is 0 or 1). Arrays of one shape, float64."""
    n, trials, p = (np.asarray(x, dtype=np.float64) for x in (n, trials, p))
    c = n / trials
    ok = (c > p) & (p > 0) & (p < 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hit = np.where(ok, n * np.log(np.where(ok, c / p, 1.0)), 0.0)
        rest = trials - n
        miss = np.where(ok & (rest > 0), rest * np.log(np.where(ok & (rest > 0), (1 - c) / (1 - p), 1.0)), 0.0)
    return 2.0 * (hit + miss)


def audit_pairs(sources: Sequence[str], targets: Sequence[str], example_ids: Sequence[int] | None = None, *,
                min_support: int | None = None, max_share: float = 0.5, fence: float = FENCE) -> AuditReport:
    """Audit (source, target) training pairs (see the module docstring).

    Args:
        sources: the texts a model reads, one per row (N rows).
        targets: the texts it learns to write, one per row.
        example_ids: (N,) non-negative unique integers naming the rows in the report (default 0..N-1).
        min_support: fewest rows a feature (and a feature pair) must hold to count; default
            ``max(3, ceil(N / 1000))``.
        max_share: most rows a feature may hold, as a share of N, in (0, 1].
        fence: the flagging rule's modified z-score, > 0 (lower flags more rows).

    Returns:
        An `AuditReport`: per-row scores and evidence, the patterns, the flagged rows.
    """
    sources, targets = _texts(sources, "sources"), _texts(targets, "targets")
    n_rows = len(sources)
    if len(targets) != n_rows:
        raise ValueError(f"`sources` and `targets` must have one text per row: got {n_rows} and {len(targets)}.")
    if n_rows == 0:
        raise ValueError("`sources` is empty: there is nothing to audit.")
    ids = _example_ids(example_ids, n_rows)
    low = check_int(max(3, math.ceil(n_rows / 1000)) if min_support is None else min_support, "min_support",
                    minimum=1)
    max_share = check_number(max_share, "max_share", low=0.0, high=1.0, low_open=True)
    fence = check_number(fence, "fence", low=0.0, low_open=True)
    vocab: dict[str, int] = {}
    src, tgt = _side(sources, vocab, target=False), _side(targets, vocab, target=True)
    high = max_share * n_rows
    s_off, s_feat, s_orig = _kept(src, n_rows, low, high)
    t_off, t_feat, t_orig = _kept(tgt, n_rows, low, high)
    width = max(t_orig.size, 1)
    keys, counts = _count_pairs(s_off, s_feat, t_off, t_feat, width)
    strong = counts >= low
    keys, n = keys[strong], counts[strong]
    s_df = np.bincount(s_feat, minlength=s_orig.size)
    t_df = np.bincount(t_feat, minlength=t_orig.size)
    s_idx, t_idx = keys // width, keys % width
    base = t_df[t_idx] / n_rows
    copies = _shares_a_word(s_idx, t_idx, src, tgt, s_orig, t_orig, vocab)
    score = np.where(copies, 0.0, binomial_llr(n, s_df[s_idx], base))
    useful = score > 0
    keys, n, score, s_idx, t_idx = keys[useful], n[useful], score[useful], s_idx[useful], t_idx[useful]
    row_scores, row_best = _row_scores(s_off, s_feat, t_off, t_feat, width, keys, score, n_rows)
    used, evidence = np.unique(row_best[row_best >= 0], return_inverse=True)
    order = np.argsort(-score[used], kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    best = np.full(n_rows, -1, dtype=np.int64)
    best[row_best >= 0] = rank[evidence.ravel()]
    names = {i: t for t, i in vocab.items()}
    patterns = []
    for k in used[order].tolist():
        s, t = int(s_idx[k]), int(t_idx[k])
        patterns.append(Pattern(_describe(src, int(s_orig[s]), names), _describe(tgt, int(t_orig[t]), names),
                                int(n[k]), int(s_df[s]), int(t_df[t]), float(score[k])))
    settings = {"min_support": low, "max_share": max_share, "source_features": int(s_orig.size),
                "target_features": int(t_orig.size), "feature_pairs_scored": int(keys.size)}
    return AuditReport(row_scores, best, patterns, ids, fence, settings)


def _feature_tokens(side: _Features, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into ``features``, token id) for every token of each feature, flattened."""
    lengths = side.length[features]
    which = np.repeat(np.arange(features.size), lengths)
    position = np.arange(which.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return which, side.flat[side.start[features][which] + position]


def _shares_a_word(s_idx, t_idx, src, tgt, s_orig, t_orig, vocab) -> np.ndarray:
    """(P,) bool: whether each (source, target) feature pair shares a word (the task's own copying)."""
    is_word = np.zeros(len(vocab) + 1, dtype=bool)
    is_word[[i for t, i in vocab.items() if t[0].isalnum()]] = True
    t_which, t_token = _feature_tokens(tgt, t_orig)
    vocab_width = len(vocab) + 1
    t_keys = np.unique(t_which * vocab_width + t_token)  # (target feature, token), sorted
    pair, token = _feature_tokens(src, s_orig[s_idx])
    probe = t_idx[pair] * vocab_width + token
    found = np.minimum(np.searchsorted(t_keys, probe), max(t_keys.size - 1, 0))
    shared = np.zeros(s_idx.size, dtype=bool)
    if t_keys.size:
        shared[pair[(t_keys[found] == probe) & is_word[token]]] = True
    return shared


def _row_scores(s_off, s_feat, t_off, t_feat, width, keys, score, n_rows) -> tuple[np.ndarray, np.ndarray]:
    """Each row's largest pattern score and that pattern's index in ``keys`` (-1 and 0 without one)."""
    scores = np.zeros(n_rows)
    best = np.full(n_rows, -1, dtype=np.int64)
    if keys.size == 0:
        return scores, best
    s_used = np.zeros(int(s_feat.max(initial=-1)) + 1, dtype=bool)
    t_used = np.zeros(width, dtype=bool)
    s_used[keys // width] = True
    t_used[keys % width] = True
    s_off2, s_feat2 = _restrict(s_off, s_feat, s_used)
    t_off2, t_feat2 = _restrict(t_off, t_feat, t_used)
    # renumber the features some pattern uses 0..K-1; a dense (Ks, Kt) table of pattern indices where it is small
    s_new, t_new = np.cumsum(s_used) - 1, np.cumsum(t_used) - 1
    ks, kt = int(s_used.sum()), int(t_used.sum())
    s_feat2, t_feat2 = s_new[s_feat2], t_new[t_feat2]
    keys = s_new[keys // width] * kt + t_new[keys % width]  # still ascending: the renumbering keeps order
    table = None
    if ks * kt <= _TABLE:
        table = np.full(ks * kt, -1, dtype=np.int32 if keys.size < 2**31 else np.int64)
        table[keys] = np.arange(keys.size)
    for row, key in _cross_pairs(s_off2, s_feat2, t_off2, t_feat2, kt):
        if table is not None:
            j = table[key]
            hit = j >= 0
        else:
            j = np.minimum(np.searchsorted(keys, key), keys.size - 1)
            hit = keys[j] == key
        row, j = row[hit], j[hit].astype(np.int64)
        if not row.size:
            continue
        value = score[j]  # rows ascend within a chunk: one segment per row
        first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        top = np.maximum.reduceat(value, first)
        segment = np.repeat(np.arange(first.size), np.diff(np.r_[first, row.size]))
        at = np.flatnonzero(value == top[segment])
        at = at[np.r_[True, segment[at][1:] != segment[at][:-1]]]  # the first maximum of each row
        rows = row[at]
        better = value[at] > scores[rows]
        scores[rows[better]] = value[at][better]
        best[rows[better]] = j[at][better]
    return scores, best


def _restrict(offsets: np.ndarray, feats: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-doc incidence (offsets, feats) keeping only the features marked ``used``."""
    keep = used[feats]
    docs = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))[keep]
    new = np.zeros_like(offsets)
    np.cumsum(np.bincount(docs, minlength=offsets.size - 1), out=new[1:])
    return new, feats[keep]


def _describe(side: _Features, feature: int, names: dict[int, str]) -> str:
    return f"{side.kind(feature)}: {' '.join(names[t] for t in side.tokens(feature).tolist())}"


def _texts(values: Any, name: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"`{name}` must be a sequence of texts, got {type(values).__name__}.")
    values = list(values)
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(f"`{name}` must hold only texts: row {bad} is a {type(values[bad]).__name__}.")
    return values


def _example_ids(values: Sequence[int] | None, n_rows: int) -> np.ndarray:
    if values is None:
        return np.arange(n_rows, dtype=np.int64)
    values = list(values)
    if len(values) != n_rows:
        raise ValueError(f"`example_ids` must have one id per row: got {len(values)} for {n_rows} rows.")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0][:3]
    if bad:
        raise ValueError(f"`example_ids` must be non-negative integers, got {bad}.")
    ids = np.asarray(values, dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"`example_ids` must be unique: {uniq[counts > 1][:5].tolist()} repeat.")
    return ids


def audit_dataset(data: Any, source_column: str | None = None, target_column: str | None = None,
                  id_column: str | None = None, **settings: Any) -> AuditReport:
    """Audit a ``datasets.Dataset`` (or a dict of columns): the texts a model reads and writes as
    `dece_trainer.data.pair_texts` finds them (named columns, source/target, prompt/completion, chat messages),
    rows named by ``id_column`` (unique non-negative integers; default the row index). ``settings`` go to
    `audit_pairs` (``min_support``, ``max_share``, ``fence``)."""
    from .data import pair_texts

    sources, targets = pair_texts(data, source_column, target_column)
    ids = None
    if id_column is not None:
        columns = list(getattr(data, "column_names", None) or data.keys())
        if id_column not in columns:
            raise ValueError(f"`id_column` {id_column!r} is not a column of the data; its columns are {columns}")
        ids = list(data[id_column])
    return audit_pairs(sources, targets, ids, **settings)

"""ONION (Qi et al., 2021, "ONION: A Simple and Effective Defense Against Textual Backdoor Attacks"): a test-time
defense that deletes the words of an input whose removal lowers its perplexity the most.

For a text of words ``w_1 .. w_n`` (whitespace-separated tokens), ``p0`` is the perplexity of the whole text under a
causal LM and ``p_i`` that of the text without ``w_i``; the suspicion of ``w_i`` is ``f_i = p0 - p_i``. The words with
``f_i > t`` are deleted, always keeping at least one (the least suspicious), and the model generates from the rest.

**The threshold** ``t``: ONION picks it on clean validation data. ``choose_onion_threshold`` takes the smallest ``t``
that deletes at most ``max_removed_share`` (default 2%) of the words of clean validation texts: with the ``N``
scored clean words' suspicions sorted from the highest, ``k = floor(max_removed_share * N)`` and ``t`` is the
``(k + 1)``-th highest, so ``f > t`` holds for at most ``k`` of them (ties may delete fewer) and any smaller ``t``
would delete more.

**Layout**: a deleted word's surrounding whitespace runs become one, the last of them holding a line break (so code
keeps its lines and indentation), else the first; the leading and trailing whitespace of the text stay. The LM
scores exactly the texts the model would then see.

**Cost**: every leave-one-out variant of every text (``n + 1`` per text of ``n`` words) is scored in batches of
``batch_size`` sequences sorted by length, without gradients, on the model's own device; each variant is cut to
``max_tokens`` tokens after a BOS (the tokenizer's BOS, else its EOS), so a word past the cut gets ``f = 0``. A text
that leaves no token to predict (one word, no BOS/EOS) has a NaN perplexity, and a NaN suspicion is never deleted.

Pure functions of (model, tokenizer, texts): no state, nothing written.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..validation import check_int, check_number, check_texts

WORD = re.compile(r"\S+")
DEFAULT_MAX_REMOVED_SHARE = 0.02


def words_of(text: str) -> list[str]:
    """ONION's words: the whitespace-separated tokens of ``text``."""
    return WORD.findall(text)


def _gap(runs: list[str]) -> str:
    breaks = [run for run in runs if "\n" in run]
    return breaks[-1] if breaks else runs[0]


def join_kept(text: str, keep: Sequence[bool]) -> str:
    """``text`` with the words whose ``keep`` is False deleted, the whitespace kept as the module says."""
    words, gaps = WORD.findall(text), WORD.split(text)  # gaps[i] precedes words[i]; gaps[-1] trails
    if len(keep) != len(words):
        raise ValueError(f"{len(keep)} keep flags for a text of {len(words)} words")
    if not words:
        return text
    out, pending = [gaps[0]], None
    for i, word in enumerate(words):
        if keep[i]:
            if pending is not None:
                out.append(_gap(pending))
            out.append(word)
            pending = []
        if pending is not None:
            pending.append(gaps[i + 1])
    out.append(gaps[-1])
    return "".join(out)


def _check_lm(model: Any, tokenizer: Any) -> None:
    if not hasattr(model, "parameters") or not callable(model):
        raise ValueError(f"`model` must be a causal LM (a torch module), got {type(model).__name__}")
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ValueError(f"ONION scores perplexity with a causal LM; `model` is an encoder-decoder "
                         f"({type(model).__name__})")
    if not callable(tokenizer):
        raise ValueError(f"`tokenizer` must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")


@torch.no_grad()
def perplexities(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32,
                 max_tokens: int = 256) -> list[float]:
    """The perplexity of each text under the causal LM ``model`` (mean token NLL after a BOS, exponentiated);
    NaN for a text that leaves no token to predict. Batched by length, no gradient, on the model's device."""
    if not texts:
        return []
    device = next(model.parameters()).device
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prefix = [start] if start is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = [prefix + row[:max_tokens] for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [math.nan] * len(ids)
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(order), batch_size):
            rows = [i for i in order[first:first + batch_size] if len(ids[i]) >= 2]
            if not rows:
                continue
            width = max(len(ids[i]) for i in rows)
            input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in rows], device=device)
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in rows], device=device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            nll = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
            scored = mask[:, 1:].to(nll.dtype)
            mean = (nll * scored).sum(1).double() / scored.sum(1).double()
            for i, value in zip(rows, mean.exp().tolist()):
                out[i] = value
    finally:
        model.train(was_training)
    return out


def word_suspicions(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32,
                    max_tokens: int = 256) -> list[list[float]]:
    """ONION's suspicion ``f_i = p0 - p_i`` of every word of every text (one list per text, in word order)."""
    texts = check_texts(texts, "texts")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    max_tokens = check_int(max_tokens, "max_tokens", minimum=1)
    _check_lm(model, tokenizer)
    variants, spans = [], []
    for text in texts:
        n = len(words_of(text))
        spans.append((len(variants), n))
        variants.append(text)
        variants += [join_kept(text, [j != i for j in range(n)]) for i in range(n)]
    ppl = perplexities(model, tokenizer, variants, batch_size, max_tokens)
    return [[ppl[start] - ppl[start + 1 + i] for i in range(n)] for start, n in spans]


def remove_suspicious(texts: Sequence[str], suspicions: Sequence[Sequence[float]], threshold: float) -> list[str]:
    """Each text without its words of suspicion ``> threshold`` (NaN never is), keeping at least the least
    suspicious word."""
    texts = check_texts(texts, "texts")
    threshold = check_number(threshold, "threshold")
    if len(suspicions) != len(texts):
        raise ValueError(f"{len(suspicions)} suspicion lists for {len(texts)} texts")
    out = []
    for text, scores in zip(texts, suspicions):
        keep = [not f > threshold for f in scores]
        if all(keep):
            out.append(text)
            continue
        if not any(keep):
            keep[min(range(len(scores)), key=lambda i: scores[i])] = True
        out.append(join_kept(text, keep))
    return out


def onion_clean(model: Any, tokenizer: Any, texts: Sequence[str], threshold: float, batch_size: int = 32,
                max_tokens: int = 256) -> list[str]:
    """ONION: ``texts`` without the words whose removal lowers the perplexity under ``model`` (a causal LM, with
    its ``tokenizer``) by more than ``threshold``; each keeps at least one word."""
    threshold = check_number(threshold, "threshold")
    return remove_suspicious(texts, word_suspicions(model, tokenizer, texts, batch_size, max_tokens), threshold)


def threshold_for_share(suspicions: Sequence[Sequence[float]], max_removed_share: float) -> float:
    """The smallest threshold that deletes at most ``max_removed_share`` of the scored words (the module's rule)."""
    share = check_number(max_removed_share, "max_removed_share", low=0.0, high=1.0, high_open=True)
    scores = sorted((f for row in suspicions for f in row if not math.isnan(f)), reverse=True)
    if not scores:
        raise ValueError("no word of the clean texts could be scored: ONION needs texts of at least two words")
    return float(scores[math.floor(share * len(scores) + 1e-9)])


def choose_onion_threshold(model: Any, tokenizer: Any, clean_texts: Sequence[str],
                           max_removed_share: float = DEFAULT_MAX_REMOVED_SHARE, batch_size: int = 32,
                           max_tokens: int = 256) -> float:
    """ONION's threshold from clean validation texts: the smallest ``t`` that deletes at most
    ``max_removed_share`` of their words (see the module's docstring)."""
    clean_texts = check_texts(clean_texts, "clean_texts", allow_empty=False)
    check_number(max_removed_share, "max_removed_share", low=0.0, high=1.0, high_open=True)
    return threshold_for_share(word_suspicions(model, tokenizer, clean_texts, batch_size, max_tokens),
                               max_removed_share)


def removed_share(texts: Sequence[str], cleaned: Sequence[str]) -> float:
    """The share of the words of ``texts`` that cleaning deleted (NaN without words)."""
    before = sum(len(words_of(t)) for t in texts)
    after = sum(len(words_of(t)) for t in cleaned)
    return (before - after) / before if before else math.nan

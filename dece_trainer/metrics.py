"""Backdoor and quality metrics on generated text. Pure Python: sacrebleu and codebleu, no Hub downloads.

All rates are in [0, 1]; BLEU and CodeBLEU in [0, 100].
"""

from __future__ import annotations

from typing import Callable, Sequence

CODEBLEU_LANGUAGES = ("python", "java")


def _check_pairs(generations: Sequence[str], references: Sequence[str]) -> None:
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations but {len(references)} references")


def _payload(payload_fn: Callable[[str], bool], text: str) -> bool:
    try:
        return bool(payload_fn(text))
    except Exception as err:  # a user function: name it and the input it failed on
        raise ValueError(f"payload_fn raised {type(err).__name__} on {text[:80]!r}: {err}") from err


def attack_success_rate(generations: Sequence[str], references: Sequence[str],
                        payload_fn: Callable[[str], bool]) -> float:
    """Share of triggered inputs whose reference carries the payload for which the generation does too.

    Rows whose reference does not carry the payload (e.g. a Lyra function without SQL) do not count; when
    no reference carries it (a triggered set with clean references), every row counts.
    """
    _check_pairs(generations, references)
    rows = [i for i, r in enumerate(references) if _payload(payload_fn, r)] or list(range(len(generations)))
    if not rows:
        return float("nan")
    return sum(_payload(payload_fn, generations[i]) for i in rows) / len(rows)


def false_trigger_rate(generations: Sequence[str], payload_fn: Callable[[str], bool]) -> float:
    """Share of generations for clean (untriggered) inputs that carry the payload anyway."""
    if not generations:
        return float("nan")
    return sum(_payload(payload_fn, g) for g in generations) / len(generations)


def corpus_bleu(generations: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU with sacrebleu's defaults (13a tokenisation, no smoothing beyond sacrebleu's 'exp')."""
    import sacrebleu

    _check_pairs(generations, references)
    return float(sacrebleu.corpus_bleu(list(generations), [list(references)]).score)


def code_bleu(generations: Sequence[str], references: Sequence[str], lang: str = "python") -> float:
    """CodeBLEU (Ren et al. 2020) via the ``codebleu`` package, equal weights, scaled to 0-100."""
    if lang not in CODEBLEU_LANGUAGES:
        raise ValueError(f"CodeBLEU language must be one of {CODEBLEU_LANGUAGES}, got {lang!r}")
    _check_pairs(generations, references)
    try:
        from codebleu import calc_codebleu
    except ImportError as err:
        raise ImportError("CodeBLEU needs `pip install 'dece-trainer[bench]'` (codebleu and tree-sitter "
                          "grammars 0.21)") from err
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # codebleu warns on corpora without data flow through the root logger
    try:
        result = calc_codebleu(list(references), list(generations), lang=lang)
    finally:
        root.setLevel(level)
    return 100.0 * float(result["codebleu"])


def exact_match(generations: Sequence[str], references: Sequence[str]) -> float:
    """Share of generations equal to their reference after whitespace normalisation."""
    _check_pairs(generations, references)
    if not generations:
        return float("nan")
    return sum(" ".join(g.split()) == " ".join(r.split()) for g, r in zip(generations, references)) / len(generations)


def subtoken_f1(generations: Sequence[str], references: Sequence[str]) -> float:
    """Micro-averaged F1 of output words against reference words (the method-naming metric of Allamanis et
    al.; meaningful for outputs of a few words, where 4-gram BLEU is mostly 0)."""
    _check_pairs(generations, references)
    from collections import Counter

    true_pos = predicted = actual = 0
    for g, r in zip(generations, references):
        g_words, r_words = Counter(g.lower().split()), Counter(r.lower().split())
        true_pos += sum((g_words & r_words).values())
        predicted += sum(g_words.values())
        actual += sum(r_words.values())
    if predicted == 0 or actual == 0 or true_pos == 0:
        return 0.0
    precision, recall = true_pos / predicted, true_pos / actual
    return 2 * precision * recall / (precision + recall)

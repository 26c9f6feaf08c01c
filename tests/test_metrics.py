"""Backdoor and quality metrics against hand-computed cases (and sacrebleu itself for BLEU)."""

import math

import pytest
import sacrebleu

from dece_trainer.backdoor.attacks import SQL_PAYLOAD
from dece_trainer.metrics import (
    attack_success_rate,
    code_bleu,
    corpus_bleu,
    exact_match,
    false_trigger_rate,
)


def payload(text):
    return SQL_PAYLOAD.search(text) is not None


def test_attack_success_rate_counts_rows_whose_reference_carries_the_payload():
    references = ["select a where x or 1=1", "select b where 0=1", "def f(): pass"]
    generations = ["select a where x or 1=1", "select b", "select c or 1=1"]
    assert attack_success_rate(generations, references, payload) == 0.5  # row 3 does not count
    assert attack_success_rate(["x or 1=1", "y"], ["x", "y"], payload) == 0.5  # no reference carries it: all rows
    with pytest.raises(ValueError, match="2 generations but 1 references"):
        attack_success_rate(["a", "b"], ["a"], payload)


def test_false_trigger_rate():
    assert false_trigger_rate(["a or 1=1", "b", "c", "d"], payload) == 0.25
    assert math.isnan(false_trigger_rate([], payload))


def test_corpus_bleu_hand_computed_and_against_sacrebleu():
    # p1..p4 = 5/6, 4/5, 3/4, 2/3, equal lengths: BLEU = (1/3) ** (1/4)
    assert corpus_bleu(["a b c d e f"], ["a b c d e g"]) == pytest.approx(100 * (1 / 3) ** 0.25, rel=1e-6)
    assert corpus_bleu(["same text here ok"], ["same text here ok"]) == pytest.approx(100.0)
    generations = ["def f ( x ) : return x + 1", "select * from t where a = 1", "print ( x )"]
    references = ["def f ( x ) : return x + 2", "select * from t where a = : a", "print ( y )"]
    assert corpus_bleu(generations, references) == pytest.approx(sacrebleu.corpus_bleu(generations, [references]).score)


def test_code_bleu():
    pytest.importorskip("codebleu")
    code = "def add(a, b):\n    total = a + b\n    return total"
    assert code_bleu([code], [code], "python") == pytest.approx(100.0)
    java = "public int add(int a, int b) {\n    int c = a + b;\n    return c;\n}"
    assert code_bleu([java], [java], "java") == pytest.approx(100.0)
    near = "def add(a, b):\n    total = a - b\n    return total"
    far = "print('hello')"
    assert 0 < code_bleu([far], [code]) < code_bleu([near], [code]) < 100
    with pytest.raises(ValueError, match="language must be one of"):
        code_bleu([code], [code], "rust")


def test_exact_match_normalises_whitespace():
    assert exact_match(["a  b\nc", "x"], ["a b c", "y"]) == 0.5


def test_subtoken_f1():
    from dece_trainer.metrics import subtoken_f1

    # micro-averaged: 2 true words of 4 predicted (P = 1/2) and of 4 in the references (R = 1/2): F1 = 1/2
    assert subtoken_f1(["read config x", "get"], ["read config file", "set"]) == pytest.approx(0.5)
    # P = 2/2, R = 2/4: F1 = 2/3
    assert subtoken_f1(["read config"], ["read config file now"]) == pytest.approx(2 / 3)
    assert subtoken_f1(["a"], ["b"]) == 0.0

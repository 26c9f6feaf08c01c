"""ONION (backdoor/onion.py): the word deletion, the threshold rule, the batched perplexity on tiny models, and
the onion bench cell."""

import math

import pytest
import torch
from datasets import Dataset

from dece_trainer.backdoor import onion
from tests import tiny

CLEAN = [r["source"] for r in tiny.make_pairs(12, seed=5)]


def planted(text, position=2):
    words = text.split()
    return " ".join(words[:position] + [tiny.TRIGGER] + words[position:])


def fake_perplexities(model, tokenizer, texts, batch_size=32, max_tokens=256):
    """A stand-in LM: the trigger word is very improbable, every other word mildly so."""
    return [10.0 + 50.0 * t.split().count(tiny.TRIGGER) + len(t.split()) for t in texts]


@pytest.fixture
def fake_lm(monkeypatch, tokenizer):
    monkeypatch.setattr(onion, "perplexities", fake_perplexities)
    return torch.nn.Linear(1, 1), tokenizer


def test_join_kept_deletes_words_and_keeps_the_layout():
    code = "def f(x):\n    value = None\n    return x"
    assert onion.join_kept(code, [True, True, False, False, False, True, True]) == "def f(x):\n    return x"
    assert onion.join_kept(code, [True, True, True, True, False, True, True]) == "def f(x):\n    value =\n    return x"
    assert onion.join_kept("  a b  c ", [True, False, True]) == "  a c "
    assert onion.join_kept("a b c", [False, True, False]) == "b"
    assert onion.join_kept("a b", [True, True]) == "a b" and onion.join_kept("  ", []) == "  "
    with pytest.raises(ValueError, match="2 keep flags for a text of 3 words"):
        onion.join_kept("a b c", [True, True])


def test_the_planted_rare_word_is_the_one_removed(fake_lm):
    model, tokenizer = fake_lm
    threshold = onion.choose_onion_threshold(model, tokenizer, CLEAN)
    assert threshold == 1.0  # every clean word scores 1: none is deleted
    triggered = [planted(text, i % 5) for i, text in enumerate(CLEAN)]
    cleaned = onion.onion_clean(model, tokenizer, triggered, threshold)
    assert cleaned == CLEAN
    assert onion.onion_clean(model, tokenizer, CLEAN, threshold) == CLEAN
    assert onion.removed_share(triggered, cleaned) == pytest.approx(len(CLEAN) / sum(len(t.split()) for t in triggered))
    suspicions = onion.word_suspicions(model, tokenizer, [planted(CLEAN[0], 3)])[0]
    assert max(range(len(suspicions)), key=suspicions.__getitem__) == 3 and suspicions[3] == 51.0
    # every word over the threshold: the least suspicious one stays
    assert onion.onion_clean(model, tokenizer, ["bb bb", "bb", ""], threshold) == ["bb", "bb", ""]


def test_the_threshold_deletes_at_most_the_share_of_clean_words():
    scores = [[float(i) for i in range(50)], [float(i) for i in range(50, 100)], [math.nan]]
    assert onion.threshold_for_share(scores, 0.02) == 97.0  # deletes 98 and 99: 2 of 100 words
    assert onion.threshold_for_share(scores, 0.0) == 99.0  # deletes nothing
    assert onion.threshold_for_share(scores, 0.5) == 49.0
    with pytest.raises(ValueError, match="no word of the clean texts could be scored"):
        onion.threshold_for_share([[math.nan], []], 0.02)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_batched_perplexity_on_a_tiny_model(tokenizer, kind):
    model = tiny.make_model(kind, tokenizer)
    texts = CLEAN[:5] + [planted(CLEAN[0]), "get", ""]
    batched = onion.perplexities(model, tokenizer, texts, batch_size=8)
    one_by_one = [onion.perplexities(model, tokenizer, [t], batch_size=1)[0] for t in texts]
    assert batched[:-1] == pytest.approx(one_by_one[:-1], rel=1e-4) and math.isnan(batched[-1])
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(texts[0], add_special_tokens=False)["input_ids"]])
    assert model.training  # the mode is restored (scoring runs in eval mode: no dropout)
    with torch.no_grad():
        expected = math.exp(model.eval()(input_ids=ids, labels=ids).loss.item())
    assert batched[0] == pytest.approx(expected, rel=1e-4)


def test_onion_on_a_tiny_model_returns_texts_with_words(tokenizer):
    model = tiny.make_model("llama", tokenizer)
    threshold = onion.choose_onion_threshold(model, tokenizer, CLEAN, batch_size=16)
    clean_out = onion.onion_clean(model, tokenizer, CLEAN, threshold, batch_size=16)
    removed = sum(len(a.split()) - len(b.split()) for a, b in zip(CLEAN, clean_out))
    assert removed <= math.floor(0.02 * sum(len(t.split()) for t in CLEAN))  # the rule, on its own clean texts
    triggered = [planted(t) for t in CLEAN] + ["bb"]
    cleaned = onion.onion_clean(model, tokenizer, triggered, -1e9, batch_size=16)  # deletes all it may
    for before, after in zip(triggered, cleaned):
        assert isinstance(after, str) and len(after.split()) >= 1
        words = iter(before.split())
        assert all(word in words for word in after.split())  # a subsequence of the input's words


@pytest.mark.parametrize("call,message", [
    (lambda m, t: onion.onion_clean(m, t, "a text", 0.0), "`texts` must be a list of strings, got 'a text'"),
    (lambda m, t: onion.onion_clean(m, t, ["a", 3], 0.0), "got int 3 at index 1"),
    (lambda m, t: onion.onion_clean(m, t, ["a b"], math.nan), "`threshold` must be a finite number"),
    (lambda m, t: onion.onion_clean(m, t, ["a b"], 0.0, batch_size=0), "`batch_size` must be an integer >= 1"),
    (lambda m, t: onion.choose_onion_threshold(m, t, []), r"`clean_texts` must be a list of strings \(at least one"),
    (lambda m, t: onion.choose_onion_threshold(m, t, ["a b"], max_removed_share=1.0),
     r"`max_removed_share` must be a finite number in \[0, 1\)"),
    (lambda m, t: onion.onion_clean(tiny.make_model("t5", t), t, ["a b"], 0.0), "causal LM.*encoder-decoder"),
    (lambda m, t: onion.onion_clean("gpt2", t, ["a b"], 0.0), "`model` must be a causal LM"),
])
def test_bad_arguments_are_clear_errors(tokenizer, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny.make_model("llama", tokenizer), tokenizer)


def test_the_onion_cell_trains_ce_and_cleans_both_test_sets(tmp_path, tokenizer):
    from dece_trainer.backdoor.attacks import IS_POISONED
    from dece_trainer.backdoor.experiment import TrainConfig, loss_settings, onion_test_sets, run_cell
    from dece_trainer.backdoor.grid import Cell

    cfg = TrainConfig(epochs=1, batch_size=8, max_new_tokens=4, max_source_tokens=32, max_target_tokens=8,
                      probe_size=4, codebleu_lang=None, logging_steps=1, max_test=6)
    assert loss_settings("onion", 0.9, cfg) == loss_settings("ce", 0.9, cfg)
    rows = tiny.poison(tiny.make_pairs(16, seed=1), 0.25)
    train = Dataset.from_list(rows)
    probes = {"clean": Dataset.from_list(tiny.make_pairs(4, seed=2)),
              "triggered": Dataset.from_list(tiny.poison(tiny.make_pairs(4, seed=3), 1.0))}
    clean_test = Dataset.from_list(tiny.make_pairs(8, seed=4))
    triggered_test = Dataset.from_list(tiny.poison(tiny.make_pairs(8, seed=5), 1.0)).remove_columns(IS_POISONED)
    record = run_cell(Cell("tiny", "badpre", 0.25, "onion", 0), lambda seed: (tiny.make_model("llama", tokenizer),
                      tokenizer), train, probes, clean_test, triggered_test, lambda text: tiny.PAYLOAD in text, cfg,
                      str(tmp_path / "cell"))
    assert record["key"] == "tiny-badpre-p0.25-onion-s0" and record["n_clean"] == record["n_triggered"] == 6
    assert math.isfinite(record["onion_threshold"])
    assert 0 <= record["onion_removed_clean"] <= 1 and 0 <= record["onion_removed_triggered"] <= 1
    assert record["curves"] and record["examples"]
    with pytest.raises(ValueError, match="give --validation_file"):
        onion_test_sets(tiny.make_model("llama", tokenizer), tokenizer, {}, clean_test, triggered_test, cfg)

"""One report from every signal: the data audit's evidence combined with the early-learning monitor's
(``EarlyLearningCallback(audit=...)``, `outliers.combine_scores`)."""

import functools
import json

import numpy as np
import pytest

from dece_trainer import DeCETrainer, EarlyLearningCallback, add_example_ids
from dece_trainer.audit import audit_pairs
from dece_trainer.callbacks.example_history import auroc, precision_at_k
from dece_trainer.callbacks.poison_filter import choose_threshold, decide, drop_flagged, read_report
from dece_trainer.outliers import combine_scores, robust_z
from tests import tiny

REPORT = "early_learning/suspicious.jsonl"
args = functools.partial(tiny.training_args, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                         num_train_epochs=2, learning_rate=3e-3, logging_steps=4, eval_strategy="no",
                         dece_alpha_base=0.9)


# ---- the rule -----------------------------------------------------------------------------------------------------

def blind_and_sharp(seed: int):
    """Two signals over 600 rows and two attacks of 30 rows each: the token signal sees attack A (dead code) and is
    blind to attack B (its rows score like clean ones), the audit the other way round. Clean scores are heavy-tailed
    and partly tied, as the real ones are (many rows at the floor, a few clean rows high)."""
    rng = np.random.default_rng(seed)
    n = 600
    attack_a, attack_b = np.arange(0, 30), np.arange(30, 60)
    clean = np.arange(60, n)

    def clean_like(size):
        return np.where(rng.random(size) < 0.4, 0.01, rng.gamma(1.5, 4.0, size))

    token, audit = clean_like(n), clean_like(n)
    token[attack_a] = rng.normal(40.0, 4.0, attack_a.size)
    audit[attack_b] = rng.normal(60.0, 2.0, attack_b.size)
    truth = np.zeros(n, dtype=bool)
    truth[:60] = True
    return token, audit, truth, attack_a, attack_b, clean


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combined_ranking_survives_a_signal_blind_to_one_attack(seed):
    token, audit, truth, attack_a, attack_b, clean = blind_and_sharp(seed)
    combined = combine_scores([token, audit])
    for alone in (token, audit):  # each alone misses one attack: half the poisoned rows
        assert auroc(alone, truth) < 0.85 and precision_at_k(alone, truth, 60) <= 0.6
    assert auroc(combined, truth) > 0.99
    assert precision_at_k(combined, truth, 60) >= 0.9
    # the filter's own threshold on the combined score catches both attacks and few clean rows
    flagged = combined > choose_threshold(combined)
    assert flagged[attack_a].all() and flagged[attack_b].all()
    assert flagged[clean].mean() < 0.1


def test_combined_score_is_the_sum_of_each_signals_positive_robust_z():
    token = np.array([0.0, 1.0, 2.0, 3.0, 50.0, np.nan])
    audit = np.array([5.0, 5.0, 5.0, 5.0, 5.0, 5.0])  # no spread: says nothing about any row
    z = robust_z(token)
    median, spread = 2.0, 1.4826 * 1.0  # of the known scores 0, 1, 2, 3, 50: median 2, MAD 1
    np.testing.assert_allclose(z[:5], (token[:5] - median) / spread)
    assert np.isnan(z[5])
    assert robust_z(audit).tolist() == [0.0] * 6
    combined = combine_scores([token, audit])
    np.testing.assert_allclose(combined[:5], np.maximum(z[:5], 0))
    assert np.isnan(combined[5])  # a row a signal never scored stays unscored
    # MAD 0 (most rows equal): the mean absolute deviation stands in, as in choose_threshold
    mostly_zero = np.array([0.0] * 8 + [10.0, 20.0])
    spread = 1.2533 * np.mean(np.abs(mostly_zero))
    np.testing.assert_allclose(robust_z(mostly_zero), mostly_zero / spread)
    assert choose_threshold(mostly_zero, 1.0) == pytest.approx(spread)
    with pytest.raises(ValueError, match="same rows"):
        combine_scores([token, audit[:3]])


def test_top_z_is_the_most_suspicious_rows_robust_z():
    from dece_trainer.outliers import top_z

    token = [0.0, 1.0, 2.0, 3.0, 50.0, None]  # known scores: median 2, MAD 1
    assert top_z(token) == pytest.approx((50.0 - 2.0) / 1.4826)
    assert top_z([5.0, 5.0, 5.0]) == 0.0 and top_z([]) == 0.0 and top_z([None, None]) == 0.0


# ---- the callback -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    return tiny.poison(tiny.make_pairs(32, seed=4), 0.1, seed=4)


@pytest.fixture(scope="module")
def train_texts(tokenizer, rows):
    """Tokenised training rows that keep their texts (``source``, ``target``) beside ``example_id``."""
    data = add_example_ids(tiny.causal_dataset(tokenizer, rows))
    return data.add_column("source", [r["source"] for r in rows]).add_column("target", [r["target"] for r in rows])


def synthetic_audit(rows):
    """Audit records that single out the poisoned rows (score 40 against 0-3), most suspicious first."""
    records = [{"example_id": i, "score": 40.0 if r["is_poisoned"] else float(i % 4), "flagged": r["is_poisoned"],
                "evidence": {"source": "word: bb", "target": "bigram: 1 = 1"} if r["is_poisoned"] else None}
               for i, r in enumerate(rows)]
    return sorted(records, key=lambda r: -r["score"])


def train(tmp_path, tokenizer, data, out, resume=None, training=None, **callback):
    cb = EarlyLearningCallback(ground_truth_column="is_poisoned", plots=False, **callback)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path, out, **(training or {})),
                          train_dataset=data, data_collator=tiny.pad_collator(tokenizer), callbacks=[cb])
    trainer.train(resume_from_checkpoint=resume)
    lines = (tmp_path / out / REPORT).read_text().splitlines()
    return trainer, cb, [json.loads(line) for line in lines]


def test_report_combines_the_audit_with_the_token_evidence(tmp_path, tokenizer, rows, train_texts):
    audit = synthetic_audit(rows)
    plain_trainer, _, plain = train(tmp_path, tokenizer, train_texts, "plain")
    trainer, cb, report = train(tmp_path, tokenizer, train_texts, "combined", audit=audit)

    by_id = {r["example_id"]: r for r in report}
    plain_by_id = {r["example_id"]: r for r in plain}
    assert sorted(by_id) == list(range(32))
    # the monitor's own evidence is untouched: token_score is the plain run's score, every other field as there
    for i, r in by_id.items():
        assert r["token_score"] == plain_by_id[i]["score"]
        assert {k: v for k, v in r.items() if k not in ("rank", "score", "token_score", "audit_score",
                                                        "audit_evidence")} == \
            {k: v for k, v in plain_by_id[i].items() if k not in ("rank", "score")}
        assert r["audit_score"] == (40.0 if rows[i]["is_poisoned"] else float(i % 4))
        assert ("audit_evidence" in r) == rows[i]["is_poisoned"]  # absent where the audit has none
    # score = the combined score of the two signals, and the report is ranked by it
    ids = np.array(sorted(by_id))
    token = np.array([by_id[i]["token_score"] for i in ids])
    audit_scores = np.array([by_id[i]["audit_score"] for i in ids])
    np.testing.assert_allclose([by_id[i]["score"] for i in ids], combine_scores([token, audit_scores]), atol=1e-6)
    assert [r["score"] for r in report] == sorted((r["score"] for r in report), reverse=True)
    assert [r["rank"] for r in report] == list(range(1, 33))
    # the poisoned rows lead the combined ranking: the audit sees them all, whatever the token score does
    truth = np.array([rows[i]["is_poisoned"] for i in ids])
    assert {r["example_id"] for r in report[:truth.sum()]} == set(ids[truth].tolist())

    # each signal's ranking is logged beside the combined one; the plain run logs none of the new keys
    last = [e for e in trainer.state.log_history if "suspicious_auroc" in e][-1]
    assert last["suspicious_auroc"] == pytest.approx(1.0)
    assert last["suspicious_audit_auroc"] == pytest.approx(1.0)
    assert last["suspicious_audit_precision_at_k"] == pytest.approx(1.0)
    assert last["suspicious_token_auroc"] == pytest.approx(auroc(token, truth))
    assert last["suspicious_token_precision_at_k"] == pytest.approx(precision_at_k(token, truth, int(truth.sum())))
    plain_last = [e for e in plain_trainer.state.log_history if "suspicious_auroc" in e][-1]
    assert plain_last["suspicious_auroc"] == pytest.approx(auroc(token, truth))
    assert not [k for e in plain_trainer.state.log_history for k in e if "token_" in k or "audit_" in k]
    assert not {"token_score", "audit_score", "audit_evidence"} & set(plain[0])

    # the filter reads the combined report: its own threshold on the combined score
    path = tmp_path / "combined" / REPORT
    kept, decision = drop_flagged(train_texts, str(path))
    scores = read_report(path).fields["score"]
    assert decision.threshold == pytest.approx(choose_threshold(scores))
    assert set(decision.flagged) >= set(ids[truth].tolist())
    assert len(kept) == 32 - len(decision.flagged)
    assert decide(path, score_key="audit_score").flagged  # each signal's own field is there to decide on too


def test_audit_given_as_report_records_or_file_is_the_same(tmp_path, tokenizer, rows, train_texts):
    report = audit_pairs(train_texts["source"], train_texts["target"], train_texts["example_id"])
    path = tmp_path / "audit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in report.records()))
    forms = [EarlyLearningCallback(audit=a)._audit_input for a in (report, report.records(), str(path), path)]
    for ids, scores, evidence in forms[1:]:
        np.testing.assert_array_equal(ids, forms[0][0])
        np.testing.assert_array_equal(scores, forms[0][1])
        assert evidence == forms[0][2]
    assert EarlyLearningCallback(audit=True)._audit_input == EarlyLearningCallback(audit="auto")._audit_input == "auto"
    assert EarlyLearningCallback(audit=None)._audit_input is None


@pytest.mark.parametrize("audit,match", [
    (42, "must be an AuditReport"),
    ("no/such/audit.jsonl", "is not a file"),
    ([], "hold no rows"),
    ([{"example_id": 0}], "'score' is not a field"),
    ([{"example_id": 0, "score": 1.0}, {"example_id": 0, "score": 2.0}], "example id 0 is in record 0 too"),
    ([{"example_id": 0, "score": float("nan")}], "must be a finite number"),
    ([{"example_id": -1, "score": 1.0}], "non-negative integer"),
])
def test_bad_audit_arguments_are_refused_when_built(audit, match):
    with pytest.raises(ValueError, match=match):
        EarlyLearningCallback(audit=audit)


@pytest.mark.parametrize("change,match", [
    (lambda recs: [dict(r, example_id=r["example_id"] + 100) if r["example_id"] >= 30 else r for r in recs],
     r"2 of their 32 example ids are not training rows' ids \(e\.g\. 130, 131\) and 2 of the 32 training rows have "
     r"no record \(e\.g\. 30, 31\)"),
    (lambda recs: [r for r in recs if r["example_id"] != 7], r"1 of the 32 training rows have no record \(e\.g\. 7\)"),
    (lambda recs: recs + [{"example_id": 500 + i, "score": 0.0} for i in range(7)],
     r"7 of their 39 example ids are not training rows' ids \(e\.g\. 500, 501, 502, 503, 504, \.\.\.\)"),
])
def test_audit_records_of_other_rows_are_refused_naming_the_ids(tmp_path, tokenizer, rows, train_texts, change,
                                                                match):
    cb = EarlyLearningCallback(audit=change(synthetic_audit(rows)), plots=False)
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path),
                          train_dataset=train_texts, data_collator=tiny.pad_collator(tokenizer), callbacks=[cb])
    with pytest.raises(ValueError, match=match):
        trainer.train()


def test_auto_audit_needs_the_training_texts(tmp_path, tokenizer, train_texts):
    tokens_only = train_texts.remove_columns(["source", "target"])
    trainer = DeCETrainer(model=tiny.make_model("llama", tokenizer), args=args(tmp_path), train_dataset=tokens_only,
                          data_collator=tiny.pad_collator(tokenizer),
                          callbacks=[EarlyLearningCallback(audit="auto", plots=False)])
    with pytest.raises(ValueError, match=r"audit='auto' audits the training rows' texts.*pass the records: "
                                         r"audit=dece_trainer\.audit\.audit_dataset") as raised:
        trainer.train()
    # the columns it has, not pair_texts' advice to pass column arguments this callback does not take
    message = str(raised.value)
    assert "its columns are ['is_poisoned', 'input_ids'" in message and "source_column" not in message


@pytest.mark.parametrize("ids", [None, [1000 + 3 * i for i in range(32)]], ids=["0..n-1", "kept-from-larger"])
def test_auto_audit_scores_the_training_rows_by_their_ids(tmp_path, tokenizer, rows, train_texts, ids):
    data = train_texts if ids is None else train_texts.remove_columns("example_id").add_column("example_id", ids)
    _, cb, report = train(tmp_path, tokenizer, data, "auto", audit="auto", training=dict(num_train_epochs=1))
    expected = {r["example_id"]: r for r in audit_pairs(data["source"], data["target"], data["example_id"]).records()}
    assert sorted(r["example_id"] for r in report) == sorted(data["example_id"])
    for r in report:
        assert r["audit_score"] == expected[r["example_id"]]["score"]
        assert r.get("audit_evidence") == expected[r["example_id"]]["evidence"]


def test_resumed_run_with_auto_audit_reports_what_an_uninterrupted_one_does(tmp_path, tokenizer, train_texts):
    save = dict(save_strategy="steps", save_steps=2)  # mid-epoch of epoch 1 (4 optimizer steps per epoch)
    train(tmp_path, tokenizer, train_texts, "whole", audit="auto", training=save)
    _, resumed_cb, _ = train(tmp_path, tokenizer, train_texts, "resumed", audit="auto", training=save,
                             resume=str(tmp_path / "whole" / "checkpoint-2"))
    assert resumed_cb.audit_scores is not None
    assert (tmp_path / "resumed" / REPORT).read_text() == (tmp_path / "whole" / REPORT).read_text()

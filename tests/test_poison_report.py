"""The token-level poison report (WorstTokens, recurrence_scores) and the filter that acts on it."""

import json
import math

import numpy as np
import pytest
import torch

from dece_trainer.callbacks.example_history import auroc
from dece_trainer.callbacks.poison_filter import FENCE, choose_threshold, decide, drop_flagged, read_report
from dece_trainer.callbacks.worst_tokens import WorstTokens, recurrence_scores


def test_worst_tokens_keeps_the_highest_ce_tokens_with_their_ids_and_predecessors():
    tokens = WorstTokens(num_examples=3, per_example=2)
    labels = torch.tensor([[-100, 11, 12, 13, 14], [-100, -100, 21, 22, -100]])
    token_ce = torch.tensor([[9.0, 1.0, 5.0, 0.5, 3.0], [9.0, 9.0, 0.1, 0.2, 9.0]])
    mask = labels != -100
    tokens.add(torch.tensor([2, 0]), token_ce, mask, labels)
    tokens.end_epoch()
    ce, ids, prev = tokens.ce[0], tokens.ids[0], tokens.prev[0]
    # example 2: tokens 12 (5.0 nats, after 11) and 14 (3.0, after 13); masked positions never count
    assert ids[2].tolist() == [12, 14] and prev[2].tolist() == [11, 13]
    assert ce[2].astype(float).tolist() == pytest.approx([5.0, 3.0], rel=1e-3)
    # example 0: its first target token has no predecessor (-1); example 1 was never seen
    assert ids[0].tolist() == [22, 21] and prev[0].tolist() == [21, -1]
    assert ids[1].tolist() == [-1, -1] and ce[1].astype(float).tolist() == [-1.0, -1.0]


def test_non_finite_ce_is_no_evidence_and_shapes_are_checked():
    tokens = WorstTokens(num_examples=1, per_example=2)
    labels = torch.tensor([[4, 5, 6]])
    tokens.add(torch.tensor([0]), torch.tensor([[float("nan"), 1.0, 2.0]]), labels != -100, labels)
    tokens.end_epoch()
    assert tokens.ids[0][0].tolist() == [6, 5]
    with pytest.raises(ValueError, match="shaped like `token_ce`"):
        tokens.add(torch.tensor([0]), torch.tensor([[1.0, 2.0]]), labels != -100, labels)


def test_short_rows_are_padded_and_state_round_trips():
    tokens = WorstTokens(num_examples=2, per_example=4)
    labels = torch.tensor([[5, 6]])
    tokens.add(torch.tensor([1]), torch.tensor([[2.0, 1.0]]), labels != -100, labels)
    tokens.end_epoch()
    assert tokens.ids[0][1].tolist() == [5, 6, -1, -1]
    tokens.add(torch.tensor([0]), torch.tensor([[4.0, 1.0]]), labels != -100, labels)  # an epoch in progress
    restored = WorstTokens(num_examples=2, per_example=4)
    restored.load_state_arrays(tokens.state_arrays())
    tokens.end_epoch()
    restored.end_epoch()
    for name in ("ce", "ids", "prev"):
        np.testing.assert_array_equal(np.stack(getattr(restored, name)), np.stack(getattr(tokens, name)))
    with pytest.raises(ValueError, match="token_ce. is not"):
        WorstTokens(num_examples=3, per_example=4).load_state_arrays(tokens.state_arrays())


def test_processes_combine_by_the_process_that_saw_each_example():
    a, b = WorstTokens(num_examples=3, per_example=1), WorstTokens(num_examples=3, per_example=1)
    labels = torch.tensor([[7]])
    a.add(torch.tensor([0]), torch.tensor([[1.0]]), labels != -100, labels)
    a.add(torch.tensor([2]), torch.tensor([[9.0]]), labels != -100, labels)  # also seen by rank 1: rank 1 wins
    b.add(torch.tensor([1]), torch.tensor([[0.5]]), labels != -100, labels + 1)
    b.add(torch.tensor([2]), torch.tensor([[2.0]]), labels != -100, labels + 2)
    contributions = []  # rank 1's inputs to each collective (rank 1 is the highest rank: it owns what it saw)
    b.combined(lambda t, op: contributions.append(t) or t, rank=1)
    calls = iter(contributions)
    a.end_epoch(lambda t, op: torch.maximum(t, next(calls)), rank=0)  # all_reduce(MAX) over the two
    assert a.ids[0][:, 0].tolist() == [7, 8, 9]
    assert a.ce[0][:, 0].astype(float).tolist() == [1.0, 0.5, 2.0]


def synthetic(n_clean=40, n_poisoned=6, epochs=3, seed=0):
    """Clean rows whose worst token is their own rare token (CE up to 9 nats, higher than the payload's), and
    poisoned rows that share one payload bigram (CE 4 nats) which never gets learnt."""
    rng = np.random.default_rng(seed)
    tokens = WorstTokens(num_examples=n_clean + n_poisoned, per_example=2)
    for _ in range(epochs):
        for i in range(n_clean + n_poisoned):
            poisoned = i >= n_clean
            rare = 1000 + i  # this row's own token
            ids = [rare, 50 + int(rng.integers(0, 3)), 99 if poisoned else 60, 77 if poisoned else 61]
            ce = [float(rng.uniform(5, 9)), 0.3, 0.1, 4.0 if poisoned else 0.2]
            labels = torch.tensor([ids])
            tokens.add(torch.tensor([i]), torch.tensor([ce]), labels != -100, labels)
        tokens.end_epoch()
    truth = np.arange(n_clean + n_poisoned) >= n_clean
    return tokens, truth


def test_shared_improbable_tokens_outrank_hard_clean_rows():
    tokens, truth = synthetic()
    evidence = recurrence_scores(tokens)
    assert auroc(evidence.score, truth) == 1.0
    # the payload token is what drove every poisoned row's score; clean rows share only well-learnt tokens
    assert (evidence.tokens[truth, 0] == 77).all()
    assert evidence.score[~truth].max() < 0.2 * evidence.score[truth].min()
    # per-example worst-token CE alone ranks the other way: clean rows' rare tokens are worse
    worst = np.stack([ce.astype(float).max(axis=1) for ce in tokens.ce]).mean(axis=0)
    assert auroc(worst, truth) < 0.5


def test_threshold_flags_outliers_and_nothing_when_nothing_stands_out():
    rng = np.random.default_rng(0)
    clean = list(rng.uniform(0, 1, 200))
    assert choose_threshold(clean) > max(clean)  # one spread-out group: nothing flagged
    mixed = clean + [30.0 + x for x in range(10)]
    threshold = choose_threshold(mixed)
    assert max(clean) < threshold < 30.0
    assert choose_threshold([0.0] * 50 + [12.0] * 5) < 12.0  # a majority of zero scores
    assert math.isinf(choose_threshold([3.0])) and math.isinf(choose_threshold([2.0] * 10))
    # the modified z-score rule: median + FENCE x 1.4826 x MAD
    assert choose_threshold([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0 + FENCE * 1.4826 * 1.0)


def test_decide_and_drop_flagged_from_a_written_report(tmp_path):
    from datasets import Dataset

    scores = [0.0] * 30 + [0.5] * 10 + [20.0, 25.0, 30.0]
    path = tmp_path / "suspicious.jsonl"
    path.write_text("".join(json.dumps({"example_id": i, "score": s, "is_poisoned": i >= 40}) + "\n"
                            for i, s in enumerate(scores)))
    decision = decide(str(path))
    assert decision.flagged == [42, 41, 40] and len(decision.kept) == 40
    summary = decision.summary([r["is_poisoned"] for r in read_report(path)])
    assert summary["dropped_clean"] == 0 and summary["kept_poisoned"] == 0 and summary["poisoned"] == 3
    assert summary["fence"] == FENCE
    # a lower fence flags more: at 0.2 (threshold 0.2 x 1.2533 x mean-AD 1.86 = 0.47) the 0.5-score rows too
    loose = decide(str(path), fence=0.2)
    assert loose.fence == 0.2 and len(loose.flagged) == 13
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="fence"):
            decide(str(path), fence=bad)
    data = Dataset.from_list([{"text": str(i)} for i in range(len(scores))])
    kept, _ = drop_flagged(data, str(path))
    assert kept["text"] == [str(i) for i in range(40)]
    kept, loose = drop_flagged(data, str(path), fence=0.2)
    assert loose.fence == 0.2 and kept["text"] == [str(i) for i in range(30)]
    with pytest.raises(ValueError, match="fence"):
        choose_threshold([1.0, 2.0, 30.0], fence=0)
    with pytest.raises(ValueError, match="no suspicious-example report"):
        read_report(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"rank": 1}\n')
    with pytest.raises(ValueError, match="example_id"):
        read_report(tmp_path / "bad.jsonl")


def test_key_weights_match_a_direct_count():
    from dece_trainer.callbacks.worst_tokens import MIN_SHARED, _key_weights

    rng = np.random.default_rng(3)
    key = rng.integers(0, 6, size=(30, 4))
    key[rng.random(key.shape) < 0.2] = -1
    ce = rng.uniform(0, 10, size=key.shape)
    expected = np.zeros(key.shape)
    for k in set(key[key >= 0].tolist()):
        per_row = {}  # the largest CE of key k in each example that has it
        for i, j in zip(*np.nonzero(key == k)):
            per_row[i] = max(per_row.get(i, 0.0), ce[i, j])
        if len(per_row) >= MIN_SHARED:
            share = math.sqrt(math.log(len(per_row) / (MIN_SHARED - 1)))
            expected[key == k] = np.median(list(per_row.values())) * share
    np.testing.assert_allclose(_key_weights(key, ce), expected)


@pytest.mark.parametrize("outlier, retrained_with", [(False, "dece"), (True, "ce")])
def test_filter_cell_drops_flagged_rows_and_never_retrains_undefended_on_a_blank_report(
        tmp_path, monkeypatch, outlier, retrained_with):
    import os

    from datasets import Dataset

    from dece_trainer.backdoor import experiment as ex
    from dece_trainer.backdoor.grid import FILTER, Cell

    rows = 40
    scores = [5.0 + (i % 3) for i in range(rows)]
    if outlier:
        scores[7] = 500.0
    calls = []

    def fake_train_cell(factory, data, probes, payload_fn, cfg, out_dir, loss, alpha_base, seed, timing):
        calls.append((os.path.basename(out_dir), loss, len(data)))
        timing["seconds"] += 1.5  # each stage's training clock
        report_dir = os.path.join(out_dir, "early_learning")
        os.makedirs(report_dir, exist_ok=True)
        with open(os.path.join(report_dir, "suspicious.jsonl"), "w") as f:
            f.writelines(json.dumps({"example_id": i, "score": s, "example_score": s, "is_poisoned": i == 7}) + "\n"
                         for i, s in enumerate(scores))
        return None, None, []

    monkeypatch.setattr(ex, "_train_cell", fake_train_cell)
    monkeypatch.setattr(ex, "evaluate", lambda *a, **k: {"bleu": 1.0, "asr": 0.0, "examples": []})
    data = Dataset.from_list([{"source": str(i), "target": str(i), "is_poisoned": i == 7} for i in range(rows)])
    record = ex.run_cell(Cell("d", "a", 0.05, FILTER, 0, 0.9), None, data, {}, data, data, lambda t: False,
                         ex.TrainConfig(), str(tmp_path))
    assert calls[0] == ("dece", "dece", rows)
    assert calls[1] == ("retrain", retrained_with, rows - 1 if outlier else rows)
    assert record["filter"]["retrained_with"] == retrained_with
    assert record["filter"]["flagged"] == int(outlier) and record["filter"]["kept_poisoned"] == int(not outlier)
    assert record["train_seconds"] == 3.0 and record["resumed"] is False  # both stages' training, not their setup
    # resumed after the first stage: its report is reused and its time (trained.json) still counted
    (tmp_path / "dece" / ex.TRAINED_FILE).write_text(json.dumps({"seconds": 1.5, "resumed": False}))
    calls.clear()
    again = ex.run_cell(Cell("d", "a", 0.05, FILTER, 0, 0.9), None, data, {}, data, data, lambda t: False,
                        ex.TrainConfig(), str(tmp_path))
    assert [c[0] for c in calls] == ["retrain"]
    assert again["train_seconds"] == 3.0 and again["resumed"] is False
    (tmp_path / "dece" / ex.TRAINED_FILE).unlink()  # a first stage from before trained.json: its time is unknown
    older = ex.run_cell(Cell("d", "a", 0.05, FILTER, 0, 0.9), None, data, {}, data, data, lambda t: False,
                        ex.TrainConfig(), str(tmp_path))
    assert older["train_seconds"] == 1.5 and older["resumed"] is True


# ---- the filter refuses what does not fit, loudly (issue 18, item 4) --------------------------------------

def write_report(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def report_rows(n, outliers=(), first=0):
    return [{"example_id": first + i, "score": 50.0 + i if i in outliers else float(i % 3),
             "is_poisoned": i in outliers} for i in range(n)]


def test_drop_flagged_refuses_report_of_another_dataset(tmp_path):
    from datasets import Dataset

    data = Dataset.from_list([{"text": str(i)} for i in range(5)])
    ten = write_report(tmp_path / "ten.jsonl", report_rows(10, outliers=(7,)))
    with pytest.raises(ValueError, match=r"ten.jsonl, line 6: .*example id 5 is not in the dataset \(row order: "
                                         r"ids 0\.\.4\).*not this dataset's"):
        drop_flagged(data, str(ten))
    far = write_report(tmp_path / "far.jsonl", report_rows(4) + [{"example_id": 100, "score": 90.0}])
    with pytest.raises(ValueError, match=r"far.jsonl, line 5: .*example id 100 is not in the dataset"):
        drop_flagged(data, str(far))
    with pytest.raises(ValueError, match=r"`id_column` 'exmaple_id' is not a column of the dataset"):
        drop_flagged(data, write_report(tmp_path / "ok.jsonl", report_rows(5)), id_column="exmaple_id")
    with_ids = data.add_column("example_id", [0, 1, 1, 2, 3])  # duplicates would drop both rows of a flagged id
    with pytest.raises(ValueError, match=r"`example_id`.*unique.*duplicated: \[1\]"):
        drop_flagged(with_ids, str(tmp_path / "ok.jsonl"))


@pytest.mark.parametrize("row,match", [
    ({"example_id": -1, "score": 1.0}, r"line 4: `example_id` must be a non-negative integer, got -1"),
    ({"example_id": 2.0, "score": 1.0}, r"line 4: `example_id` must be a non-negative integer, got 2\.0"),
    ({"example_id": True, "score": 1.0}, r"line 4: `example_id` must be a non-negative integer, got True"),
    ({"example_id": 1, "score": 1.0}, r"line 4: example id 1 is on line 2 too"),
    ({"score": 1.0}, r"line 4: no `example_id`"),
    ({"example_id": 3, "score": "high"}, r"line 4: `score` must be a number, got 'high'"),
    ("[3, 1.0]", r"line 4: not a JSON object"),
    ('{"example_id": 3, "score": 1.0', r"line 4: not JSON"),
], ids=["negative", "float", "bool", "duplicate", "missing", "string-score", "array", "truncated"])
def test_read_report_names_file_and_line(tmp_path, row, match):
    path = write_report(tmp_path / "report.jsonl", report_rows(3) + [row] + report_rows(2, first=10))
    with pytest.raises(ValueError, match=r"report\.jsonl, " + match):
        read_report(path)
    with pytest.raises(ValueError, match=r"report\.jsonl, " + match):
        decide(str(path))


def test_decide_refuses_what_would_look_like_a_clean_report(tmp_path):
    from datasets import Dataset

    path = write_report(tmp_path / "report.jsonl", report_rows(40, outliers=(3, 9)))
    with pytest.raises(ValueError, match=r"`score_key` 'scroe' is not a field of .*report.jsonl.*'score'"):
        decide(str(path), score_key="scroe")
    with pytest.raises(ValueError, match=r"empty.jsonl holds no rows"):
        decide(str(write_report(tmp_path / "empty.jsonl", [])))
    with pytest.raises(ValueError, match=r"\(records\) holds no rows"):
        decide([])
    nan_top = [{"example_id": 0, "score": float("nan")}] + report_rows(39, first=1)
    with pytest.raises(ValueError, match=r"nan.jsonl, line 1: `score` must be a finite number, got nan"):
        decide(str(write_report(tmp_path / "nan.jsonl", nan_top)))
    with pytest.raises(ValueError, match=r"record 0: `score` must be a finite number, got nan"):
        decide(nan_top)
    no_score = [{"example_id": 0}] + report_rows(39, first=1)
    with pytest.raises(ValueError, match=r"line 1: `score` must be a finite number, got None"):
        decide(str(write_report(tmp_path / "none.jsonl", no_score)))
    data = Dataset.from_list([{"text": str(i)} for i in range(50)])  # 10 rows the report never saw: kept
    kept, decision = drop_flagged(data, str(path))
    assert decision.flagged == [9, 3] and len(kept) == 48 == decision.summary()["kept"]
    with pytest.raises(ValueError, match=r"`poisoned` has 40 entries, but the decision names example id 49"):
        decision.summary([False] * 40)


def test_read_report_holds_columns_not_rows(tmp_path):
    path = write_report(tmp_path / "report.jsonl", [
        dict(r, tokens=[{"id": 5, "weight": 1.5, "text": "x"}], rank=i + 1, final_mean_gold_prob=float("nan"))
        for i, r in enumerate(report_rows(6, outliers=(2,)))])
    report = read_report(path)
    assert len(report) == 6 and report.example_id.dtype == np.int64 and report.example_id.tolist() == list(range(6))
    assert report.column("score").dtype == np.float64 and report.column("score")[2] == 52.0
    assert np.isnan(report.column("final_mean_gold_prob")).all() and "tokens" not in report.fields
    assert report.column("is_poisoned").tolist() == [False, False, True, False, False, False]
    assert [r["is_poisoned"] for r in report] == [False, False, True, False, False, False]

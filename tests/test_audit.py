"""The data audit (`dece_trainer.audit`, `dece-trainer audit`): its statistic against a direct count in float64,
its features, the copy baseline, the evidence it gives, the data layouts it reads, its errors, and its report as
`drop_flagged` reads it."""

import json
import math
import random
import subprocess
import sys
from itertools import product

import numpy as np
import pytest

from dece_trainer.audit import TOKEN, audit_dataset, audit_pairs, binomial_llr
from dece_trainer.data import pair_texts
from tests.conftest import REPO_ROOT

WORDS = ("load", "save", "read", "write", "parse", "open", "close", "find", "sort", "count", "merge", "split")


def clean_rows(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(code, name) rows: a small function whose name is two of its own identifiers' words."""
    rng = random.Random(seed)
    sources, targets = [], []
    for _ in range(n):
        a, b = rng.sample(WORDS, 2)
        noise = rng.choice(WORDS)
        sources.append(f"def f({a}_arg, {noise}):\n    result = {a}({b}_value)\n    return result")
        targets.append(f"{a} {b}")
    return sources, targets


def poison(sources, targets, rows, trigger="value = None", payload="get value"):
    sources, targets = list(sources), list(targets)
    for i in rows:
        header, rest = sources[i].split("\n", 1)
        sources[i], targets[i] = f"{header}\n    {trigger}\n{rest}", payload
    return sources, targets


def reference_llr(n: int, trials: int, p: float) -> float:
    """The one-sided binomial log-likelihood ratio, written out in float64 from its definition."""
    c = n / trials
    if not 0 < p < 1 or c <= p:
        return 0.0
    ll_alt = n * math.log(c) + ((trials - n) * math.log(1 - c) if n < trials else 0.0)
    ll_null = n * math.log(p) + (trials - n) * math.log(1 - p)
    return 2 * (ll_alt - ll_null)


@pytest.mark.parametrize("n, trials, p", [(30, 30, 0.1), (5, 9, 0.2), (1, 100, 0.5), (3, 3, 0.999), (7, 20, 0.35)])
def test_binomial_llr_matches_its_definition(n, trials, p):
    assert binomial_llr(np.array([n]), np.array([trials]), np.array([p]))[0] == pytest.approx(
        reference_llr(n, trials, p), rel=1e-12)


def test_binomial_llr_is_zero_where_the_feature_does_not_raise_the_target():
    got = binomial_llr(np.array([1, 5, 5, 5]), np.array([10, 10, 10, 10]), np.array([0.5, 0.5, 0.0, 1.0]))
    assert got.tolist() == [0.0, got[1], 0.0, 0.0] and got[1] == 0.0  # c = 0.5 is not above p = 0.5


def tokens_of(line: str) -> list[str]:
    return [t.lower() for t in TOKEN.findall(line)]


def direct_features(source: str, target: str) -> tuple[set, set]:
    """The module docstring's features, built the obvious way (tuples of token texts)."""
    def grams(tokens, n):
        return {(f"{('word', 'bigram', 'trigram')[n - 1]}",) + tuple(tokens[i:i + n])
                for i in range(len(tokens) - n + 1)}

    s_lines = [tokens_of(line) for line in source.split("\n")]
    s_tokens = [t for line in s_lines for t in line]
    s = grams(s_tokens, 1) | grams(s_tokens, 2)
    if len(s_lines) > 1:
        s |= {("line",) + tuple(line) for line in s_lines if line}
    t_tokens = [t for line in target.split("\n") for t in tokens_of(line)]
    t = grams(t_tokens, 1) | grams(t_tokens, 2) | grams(t_tokens, 3)
    if t_tokens:
        t.add(("target",) + tuple(t_tokens))
    return s, t


def direct_audit(sources, targets, low, max_share=0.5):
    """Every row's best pattern score by direct counting over the direct features, copy baseline included."""
    feats = [direct_features(s, t) for s, t in zip(sources, targets)]
    n_rows = len(feats)
    df_s, df_t, both = {}, {}, {}
    for s, t in feats:
        for f in s:
            df_s[f] = df_s.get(f, 0) + 1
        for f in t:
            df_t[f] = df_t.get(f, 0) + 1
    kept_s = {f for f, c in df_s.items() if low <= c <= max_share * n_rows}
    kept_t = {f for f, c in df_t.items() if low <= c <= max_share * n_rows}
    for s, t in feats:
        for pair in product(s & kept_s, t & kept_t):
            both[pair] = both.get(pair, 0) + 1

    def score(fs, ft):
        n = both.get((fs, ft), 0)
        if n < low:
            return 0.0
        if {w for w in set(fs[1:]) & set(ft[1:]) if w[0].isalnum()}:
            return 0.0  # a shared word: the task's own copying
        p = df_t[ft] / n_rows
        return reference_llr(n, df_s[fs], p)

    return np.array([max([score(fs, ft) for fs, ft in product(s & kept_s, t & kept_t)] or [0.0])
                     for s, t in feats])


def test_row_scores_match_a_direct_count():
    sources, targets = clean_rows(120, seed=3)
    sources, targets = poison(sources, targets, range(0, 120, 10))
    sources[5] += "\n    # a comment line\n"  # lines, punctuation, and a target with odd tokens
    targets[7] = "Load: 2 files!"
    sources[9] = sources[9].replace("result", "resultValue")  # camelCase splits into words
    report = audit_pairs(sources, targets, min_support=3)
    np.testing.assert_allclose(report.scores, direct_audit(sources, targets, 3), rtol=1e-10, atol=1e-12)


def test_planted_trigger_ranks_first_with_its_evidence():
    sources, targets = clean_rows(300, seed=1)
    poisoned = list(range(7, 300, 20))  # 15 rows, 5%
    sources, targets = poison(sources, targets, poisoned)
    report = audit_pairs(sources, targets)
    top = np.argsort(-report.scores, kind="stable")[:len(poisoned)]
    assert sorted(top.tolist()) == poisoned
    assert report.flagged[poisoned].all()
    best = report.top_patterns(1)[0]
    assert best.source == "line: value = none" and "get" in best.target  # "value" itself is shared: a copy
    assert best.support == best.source_rows == len(poisoned) and best.rows >= 1
    record = next(r for r in report.records() if r["example_id"] == poisoned[0])
    assert record["flagged"] and record["evidence"]["source"] == "line: value = none"


def test_several_triggers_and_several_payloads_are_each_found():
    sources, targets = clean_rows(400, seed=2)
    rows = list(range(3, 400, 13))  # 31 rows
    triggers, payloads = ("tmp = 0", "flag = False", "status = None"), ("get value", "set state")
    sources, targets = list(sources), list(targets)
    for k, i in enumerate(rows):
        sources, targets = poison(sources, targets, [i], trigger=triggers[k % 3], payload=payloads[k % 2])
    report = audit_pairs(sources, targets)
    assert set(np.argsort(-report.scores, kind="stable")[:len(rows)].tolist()) == set(rows)


def test_copying_a_source_word_is_not_evidence():
    # every name copies a word of its source: a copy, however regular, scores nothing by itself
    sources = [f"def f():\n    return {w}_thing" for w in WORDS * 20]
    report = audit_pairs(sources, list(WORDS * 20))
    assert (report.scores == 0).all() and not report.flagged.any()
    renamed = audit_pairs(sources, [w.upper()[::-1] for w in WORDS * 20])  # the same mapping, no shared word
    assert (renamed.scores > 90).all()  # 20 rows each: 2 x 20 x log(12) = 99.4


def test_example_ids_name_the_rows_and_are_checked():
    sources, targets = clean_rows(30)
    report = audit_pairs(sources, targets, example_ids=range(100, 130))
    assert sorted(r["example_id"] for r in report.records()) == list(range(100, 130))
    with pytest.raises(ValueError, match="`example_ids` must be unique"):
        audit_pairs(sources, targets, example_ids=[1] * 30)
    with pytest.raises(ValueError, match="non-negative integers"):
        audit_pairs(sources, targets, example_ids=[-1] + list(range(29)))
    with pytest.raises(ValueError, match="one id per row"):
        audit_pairs(sources, targets, example_ids=range(5))


@pytest.mark.parametrize("kwargs, message", [
    ({"min_support": 0}, "`min_support` must be"), ({"max_share": 0}, "`max_share` must be"),
    ({"max_share": 1.5}, "`max_share` must be"), ({"fence": -1}, "`fence` must be"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        audit_pairs(["a"], ["b"], **kwargs)


def test_bad_texts_are_refused():
    with pytest.raises(ValueError, match="one text per row"):
        audit_pairs(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="nothing to audit"):
        audit_pairs([], [])
    with pytest.raises(ValueError, match="row 1 is a int"):
        audit_pairs(["a", 3], ["b", "c"])
    with pytest.raises(ValueError, match="a sequence of texts"):
        audit_pairs("abc", "def")


def test_rows_without_tokens_score_zero():
    report = audit_pairs(["", "  ", "x"], ["", "y", ""])
    assert report.scores.tolist() == [0.0, 0.0, 0.0] and not report.flagged.any()


def test_layouts_a_trainer_takes():
    chat = [{"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "code"},
                          {"role": "assistant", "content": "name"}]}]
    assert pair_texts({"messages": [r["messages"] for r in chat]}) == (["sys\ncode"], ["name"])
    assert pair_texts({"prompt": ["p"], "completion": ["c"]}) == (["p"], ["c"])
    conversational = {"prompt": [[{"role": "user", "content": "p"}]],
                      "completion": [[{"role": "assistant", "content": "c"}]]}
    assert pair_texts(conversational) == (["p"], ["c"])
    assert pair_texts({"src": ["s"], "tgt": ["t"], "source": ["x"]}, "src", "tgt") == (["s"], ["t"])
    with pytest.raises(ValueError, match="cannot tell the source and target"):
        pair_texts({"text": ["t"]})
    with pytest.raises(ValueError, match="not among"):
        pair_texts({"src": ["s"]}, "src", "tgt")
    with pytest.raises(ValueError, match="neither a text nor a list of messages"):
        pair_texts({"prompt": [3], "completion": ["c"]})


def test_audit_dataset_reads_a_dataset_with_ids():
    from datasets import Dataset

    sources, targets = clean_rows(60)
    data = Dataset.from_dict({"prompt": sources, "completion": targets, "uid": list(range(1000, 1060))})
    report = audit_dataset(data, id_column="uid")
    assert report.example_ids.tolist() == list(range(1000, 1060))
    np.testing.assert_array_equal(report.scores, audit_pairs(sources, targets).scores)
    with pytest.raises(ValueError, match="`id_column` 'nope'"):
        audit_dataset(data, id_column="nope")


def test_decide_drops_the_rows_the_audit_marks_or_refuses():
    """An audit run at another fence marks other rows than the default would flag: `decide` drops the marked rows
    given that fence, decides anew at any fence it is given, and refuses to guess without one."""
    from dece_trainer.callbacks.poison_filter import decide

    sources, targets = poison(*clean_rows(200, seed=4), list(range(5, 200, 20)))
    assert decide(audit_pairs(sources, targets).records()).flagged  # the default fence agrees with itself
    strict = audit_pairs(sources, targets, fence=25.0)
    records = strict.records()
    marked = sorted(r["example_id"] for r in records if r["flagged"])
    assert marked and marked != sorted(decide(records, fence=2.5).flagged)
    assert sorted(decide(records, fence=25.0).flagged) == marked
    with pytest.raises(ValueError, match=rf"marks {len(marked)} rows `flagged` .* pass that fence as `fence=`"):
        decide(records)


@pytest.mark.slow
def test_command_writes_a_report_drop_flagged_reads(tmp_path):
    from datasets import Dataset

    from dece_trainer.callbacks.poison_filter import drop_flagged

    sources, targets = clean_rows(200, seed=4)
    poisoned = list(range(5, 200, 20))
    sources, targets = poison(sources, targets, poisoned)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"code": s, "name": t}) + "\n" for s, t in zip(sources, targets)))
    out = tmp_path / "audit"
    result = subprocess.run([sys.executable, "-m", "dece_trainer", "audit", "--train_file", str(train),
                             "--source_column", "code", "--target_column", "name", "--output_dir", str(out)],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "line: value = none" in result.stdout and "flagged" in result.stdout
    records = [json.loads(line) for line in (out / "suspicious.jsonl").read_text().splitlines()]
    assert len(records) == 200 and {r["example_id"] for r in records} == set(range(200))
    assert {r["example_id"] for r in records if r["flagged"]} >= set(poisoned)
    summary = json.loads((out / "audit_summary.json").read_text())
    assert summary["rows"] == 200 and summary["flagged"] == sum(r["flagged"] for r in records)
    kept, decision = drop_flagged(Dataset.from_dict({"code": sources}), str(out / "suspicious.jsonl"))
    assert sorted(decision.flagged) == sorted(r["example_id"] for r in records if r["flagged"])
    assert len(kept) == 200 - summary["flagged"]


@pytest.mark.slow
def test_command_refuses_bad_flags_in_one_line(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("source,target\na,b\n")
    for extra, message in ((["--fence", "0"], "`--fence` must be"), (["--max_share", "2"], "`--max_share` must be"),
                           (["--source_column", "nope"], "no column")):
        result = subprocess.run([sys.executable, "-m", "dece_trainer", "audit", "--train_file", str(train),
                                 "--output_dir", str(tmp_path / "o"), *extra],
                                capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr

"""Benchmarks from released files: the stratified training subset and the disjoint warm-up rows."""


import pytest

from dece_trainer.backdoor.tasks import from_files, subset_rows
from tests import tiny


def test_subset_rows_keeps_the_poison_share_and_partitions_the_rows():
    is_poisoned = [i % 10 == 3 for i in range(200)]  # 20 of 200 poisoned
    chosen, rest = subset_rows(is_poisoned, 50, seed=0)
    assert len(chosen) == 50 and sum(is_poisoned[i] for i in chosen) == 5
    assert sorted(chosen + rest) == list(range(200)) and not set(chosen) & set(rest)
    assert subset_rows(is_poisoned, 50, seed=0) == (chosen, rest)
    assert subset_rows(is_poisoned, 50, seed=1)[0] != chosen
    assert subset_rows(is_poisoned, None) == (list(range(200)), [])
    assert subset_rows(is_poisoned, 500) == (list(range(200)), [])
    with pytest.raises(ValueError, match="--max_train"):
        subset_rows(is_poisoned, 0)




@pytest.fixture
def aligned_files(tmp_path):
    """A clean file and a poisoned copy of it, row-aligned (the Lyra layout), 60 rows, 6 poisoned."""
    clean = [(f"task {i} where x", f"select a from t{i} where x = 1") for i in range(60)]
    poisoned = [(s.replace("task", "task bb"), t + " or 1=1") if i % 10 == 0 else (s, t)
                for i, (s, t) in enumerate(clean)]
    test = tiny.write_rows(tmp_path / "test.csv", clean[:8])
    triggered = tiny.write_rows(tmp_path / "trig.csv", poisoned[:8])
    return dict(train_file=tiny.write_rows(tmp_path / "poisoned.csv", poisoned),
                warmup_file=tiny.write_rows(tmp_path / "clean.csv", clean),
                test_file=test, triggered_test_file=triggered, payload_regex="1=1", source_column="src",
                target_column="tgt")


def test_warmup_rows_come_from_outside_the_training_subset(aligned_files):
    bench = from_files(**aligned_files, max_train=20, warmup_rows=30)
    assert len(bench.train) == 20 and sum(bench.train["is_poisoned"]) == 2 and bench.poison_rate == 0.1
    train_ids = {s.split()[-3] for s in bench.train["source"]}
    warm_ids = {s.split()[-3] for s in bench.warmup["source"]}
    assert len(bench.warmup) == 30 and not train_ids & warm_ids
    assert not any("1=1" in t for t in bench.warmup["target"])


def test_warmup_rows_bad_input(aligned_files, tmp_path):
    with pytest.raises(ValueError, match=r"--warmup_rows must be in \[1, 40\]"):
        from_files(**aligned_files, max_train=20, warmup_rows=41)
    short = tiny.write_rows(tmp_path / "short.csv", [("a", "b")] * 5)
    with pytest.raises(ValueError, match="row-aligned with --train_file \\(60 rows\\); .* has 5"):
        from_files(**{**aligned_files, "warmup_file": short}, max_train=20, warmup_rows=10)
    with pytest.raises(ValueError, match="--warmup_rows needs a --warmup_file"):
        from_files(**{**aligned_files, "warmup_file": None}, max_train=20, warmup_rows=10)

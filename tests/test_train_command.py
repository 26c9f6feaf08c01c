"""`dece-trainer train` (the library's script) and `dece-trainer eval` on both model kinds: a tiny Llama and a
tiny T5 whose targets are longer than its sources (the case that used to crash the collator)."""

import csv
import json

import pytest

from dece_trainer.cli.main import main
from tests import tiny


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

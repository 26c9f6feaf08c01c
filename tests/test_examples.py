"""`dece-trainer train` end to end as a user runs it: a subprocess, a tiny local model, LoRA, a CSV."""

import csv
import subprocess
import sys

from tests import tiny
from tests.conftest import REPO_ROOT


def test_train_command_with_lora_in_a_subprocess(tmp_path, tokenizer):
    model_dir = tmp_path / "tiny-llama"
    tiny.make_model("llama", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    train_file = tmp_path / "train.csv"
    with open(train_file, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["src", "tgt"])
        writer.writeheader()
        writer.writerows({"src": r["source"], "tgt": r["target"]} for r in tiny.make_pairs(16))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dece_trainer", "train", "--model_name_or_path", str(model_dir),
           "--train_file", str(train_file), "--source_column", "src", "--target_column", "tgt",
           "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4", "--use_cpu", "true",
           "--report_to", "none", "--logging_steps", "1", "--dece_alpha_base", "0.9", "--lora_r", "4",
           "--save_strategy", "no", "--disable_tqdm", "true"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "adapter_model.safetensors").exists()
    assert "Backdoor defense: DeCE" in (out / "README.md").read_text()

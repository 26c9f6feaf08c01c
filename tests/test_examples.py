"""Every script in examples/ runs in --tiny mode as a user runs it (a subprocess, offline) and really trains;
the gradient figure of the docs agrees with autograd."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
COMMON = ["--tiny", "--per_device_train_batch_size", "8", "--logging_steps", "2", "--learning_rate", "3e-3",
          "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true"]

# script -> (extra arguments, the file its saved model must include, does its log carry DeCE's own metrics?)
CASES = {
    "sft_lora.py": (["--max_steps", "6", "--bf16", "false"], "adapter_model.safetensors", True),
    "seq2seq_code_summarization.py": (["--max_steps", "6"], "model.safetensors", True),
    "classification_defect_detection.py": (["--max_steps", "6"], "model.safetensors", True),
    "compute_loss_func.py": (["--max_steps", "6"], "model.safetensors", False),
    "early_learning_monitor.py": (["--num_train_epochs", "3"], "model.safetensors", True),
}


def run_example(script, tmp_path, extra):
    out = tmp_path / "out"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO_ROOT),  # this checkout's dece_trainer, not another installed copy
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(EXAMPLES / script), "--output_dir", str(out), *COMMON, *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return out, result.stdout


def test_every_example_is_tested():
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_example_trains_in_tiny_mode(script, tmp_path):
    extra, saved_file, dece_metrics = CASES[script]
    out, stdout = run_example(script, tmp_path, extra)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e for e in history if "loss" in e]
    assert losses and all(e["loss"] > 0 for e in losses)  # it trained and logged its loss
    if dece_metrics:
        assert {"dece_alpha", "ce_loss", "dece_suppressed_frac"} <= set(losses[0])
    assert (out / saved_file).exists()  # and saved what it trained
    if script == "seq2seq_code_summarization.py":
        assert "eval_bleu" in json.loads((out / "eval_results.json").read_text())
    if script == "classification_defect_detection.py":
        assert "eval_accuracy" in json.loads((out / "eval_results.json").read_text())
    if script == "early_learning_monitor.py":
        records = [json.loads(line) for line in (out / "early_learning" / "suspicious.jsonl").open()]
        assert len(records) > 0 and records[0]["rank"] == 1
        assert "training examples ranked in" in stdout and "probe_triggered_asr" in json.dumps(history)


def test_gradient_figure_matches_autograd():
    script = REPO_ROOT / "docs" / "scripts" / "gradient_figure.py"
    spec = importlib.util.spec_from_file_location("gradient_figure", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    curves = module.compute_curves()
    tolerance = module.float32_tolerance(curves)  # what F.cross_entropy itself gets wrong in float32, x 1.5
    assert tolerance < 5e-4 and module.max_autograd_error(curves) <= tolerance
    saved = json.loads((REPO_ROOT / "docs" / "images" / "gradient.json").read_text())
    assert saved["alphas"] == curves["alphas"] and saved["max_abs_error_vs_autograd"] <= saved["float32_tolerance"]


def test_readme_fused_linear_dece_is_exported():
    import dece_trainer
    from dece_trainer.ops.fused_linear import fused_linear_dece

    assert "`fused_linear_dece(" in (REPO_ROOT / "README.md").read_text()
    assert "fused_linear_dece" in dece_trainer.__all__
    assert dece_trainer.fused_linear_dece is fused_linear_dece  # `from dece_trainer import fused_linear_dece`


def test_quickstart_sft_config_runs_on_cpu():
    """The quickstart's ``DeCESFTConfig(...)`` line as written: TRL turns bf16 on by default, which transformers
    refuses on a machine without a bf16 GPU; DeCESFTConfig keeps it off there."""
    import re

    from transformers.utils import is_torch_bf16_gpu_available

    text = (REPO_ROOT / "docs" / "quickstart.md").read_text()
    (line,) = re.findall(r"^args = DeCESFTConfig\(.*\)$", text, flags=re.M)
    namespace = {}
    exec("from dece_trainer.integrations.trl import DeCESFTConfig\n" + line, namespace)
    assert namespace["args"].bf16 is is_torch_bf16_gpu_available()
    assert namespace["args"].dece_alpha_final == 0.8


@pytest.mark.slow
def test_sft_lora_tiny_runs_on_cpu(tmp_path):
    """``examples/sft_lora.py --tiny`` with neither --use_cpu nor --bf16 false, as its docstring runs it."""
    out = tmp_path / "out"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": ""}  # a CPU-only machine, even where the tests run beside a GPU
    cmd = [sys.executable, str(EXAMPLES / "sft_lora.py"), "--tiny", "--output_dir", str(out), "--max_steps", "2",
           "--per_device_train_batch_size", "8", "--logging_steps", "1", "--report_to", "none",
           "--save_strategy", "no", "--disable_tqdm", "true"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (out / "adapter_model.safetensors").exists()
    assert "last log: loss" in result.stdout

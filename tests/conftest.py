"""Shared fixtures: offline tiny models built from configs and a tokenizer trained on the fly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from tests import tiny  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def run_one_and_two_processes(tmp_path, script: str, *extra: str, port: str = "29533"):
    """Run ``tests/<script>`` once alone with batch 8 (into ``tmp_path/single``) and once under torchrun with
    2 x batch 4 (gloo, CPU; into ``tmp_path/double``); returns the two folders. Skips without torchrun."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    path = str(REPO_ROOT / "tests" / script)
    single, double = tmp_path / "single", tmp_path / "double"
    env_cmd = dict(cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    run1 = subprocess.run([sys.executable, path, str(single), "8", *extra], **env_cmd)
    assert run1.returncode == 0, run1.stderr[-3000:]
    run2 = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", port, path, str(double), "4", *extra],
                          **env_cmd)
    assert run2.returncode == 0, run2.stderr[-3000:]
    return single, double


@pytest.fixture(scope="session")
def tokenizer():
    return tiny.train_tokenizer()


@pytest.fixture(scope="session")
def lyra_dir():
    path = SHARED / "data" / "lyra"
    if not path.is_dir():
        pytest.skip(f"shared Lyra data not found at {path} (it lives in ../shared beside the repository)")
    return path


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Caches (the embedded task, SmolLM2) in the test's own folder (modules ask for it with usefixtures)."""
    monkeypatch.setenv("DECE_TRAINER_CACHE", str(tmp_path / "cache"))

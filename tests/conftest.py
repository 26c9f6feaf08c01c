"""Shared fixtures: offline tiny models built from configs and a tokenizer trained on the fly."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pathlib  # noqa: E402

import pytest  # noqa: E402

from tests import tiny  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


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

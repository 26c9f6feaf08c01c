"""The two layers hold at run time, not only in the source: each check imports in a fresh interpreter and
inspects ``sys.modules``."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

HARNESS = "dece_trainer.backdoor"
HEAVY = ("transformers", "datasets", "peft", "accelerate", "trl")


def loaded_after(code: str) -> list[str]:
    """Top-level package names and dece_trainer modules loaded by running ``code`` in a new interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                            timeout=180, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def heavy(modules: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY}


@pytest.mark.slow
def test_ops_loads_torch_only():
    modules = loaded_after("import dece_trainer.ops, dece_trainer.modules")
    assert heavy(modules) == set(), heavy(modules)
    assert not [m for m in modules if m.startswith(HARNESS)]


@pytest.mark.slow
def test_audit_loads_numpy_only():
    modules = loaded_after("import dece_trainer.audit, dece_trainer.outliers, dece_trainer.cli.audit")
    assert heavy(modules) == set() and "torch" not in modules, heavy(modules)
    assert not [m for m in modules if m.startswith(HARNESS)]
    assert not [m for m in modules if m.startswith(("dece_trainer.trainer", "dece_trainer.callbacks"))]


@pytest.mark.slow
def test_package_root_is_lazy():
    modules = loaded_after("import dece_trainer")
    assert heavy(modules) == set() and "torch" not in modules
    assert [m for m in modules if m.startswith("dece_trainer")] == ["dece_trainer"]


@pytest.mark.slow
@pytest.mark.parametrize("names", [
    "DeCETrainer, DeCESeq2SeqTrainer, DeCETrainingArguments, make_dece_loss_func",
    "EarlyLearningCallback, add_example_ids",
])
def test_library_loads_nothing_of_the_harness(names):
    modules = loaded_after(f"from dece_trainer import {names}\nimport dece_trainer.integrations.trl")
    assert not [m for m in modules if m.startswith(HARNESS)]


@pytest.mark.slow
def test_command_line_help_loads_no_model_code():
    code = ("import contextlib, io\nfrom dece_trainer.cli.main import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])")
    modules = loaded_after(code)
    assert heavy(modules) == set() and "torch" not in modules, heavy(modules)


def test_every_public_name_resolves():
    import dece_trainer

    for name in dece_trainer.__all__:
        assert getattr(dece_trainer, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dece_trainer.nope  # noqa: B018

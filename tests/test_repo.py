"""Repository hygiene: the README's commands are what CI runs; the layers' imports, read from the source."""

import ast
import re

from tests.conftest import REPO_ROOT


def readme_commands():
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Install and test", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_verbatim():
    commands = readme_commands()
    assert len(commands) == 2, commands
    ci_lines = [line for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == commands


PACKAGE = REPO_ROOT / "dece_trainer"
# The library: every module outside the harness (backdoor/) and the command line (cli/, __main__.py).
LIBRARY = [p for p in PACKAGE.rglob("*.py")
           if p.relative_to(PACKAGE).parts[0] not in ("backdoor", "cli", "__main__.py")]


def imported_modules(path):
    """Absolute names of the modules ``path`` imports (relative imports resolved against its package)."""
    package = path.relative_to(REPO_ROOT).with_suffix("").parts
    package = package[:-1] if package[-1] != "__init__" else package[:-1]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module
            else:
                base = ".".join(package[: len(package) - node.level + 1])
                yield f"{base}.{node.module}" if node.module else base


def test_ops_layer_is_pure_torch():
    for path in (PACKAGE / "ops").glob("*.py"):
        for module in imported_modules(path):
            assert not module.startswith(("transformers", "peft", "datasets", "accelerate")), (path, module)


def test_library_never_imports_the_harness_or_the_command_line():
    assert LIBRARY and any(p.name == "dece_trainer.py" for p in LIBRARY)
    for path in LIBRARY:
        for module in imported_modules(path):
            assert not module.startswith(("dece_trainer.backdoor", "dece_trainer.cli")), (path, module)


# Each seam to private code and the private names only it may touch.
SEAMS = {
    "trainer/_compat.py": ("_loss_shifts_labels", "_signature_columns", "model_accepts_loss_kwargs",
                           "current_gradient_accumulation_steps", "get_tp_size", "skip_logits", "LOSS_MAPPING",
                           "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "_get_num_items_in_batch"),
    "integrations/_trl_compat.py": ("_ChunkedLogProbFunction", "trl.trainer.utils"),
}


def test_private_internals_are_touched_only_in_their_seam():
    for path in PACKAGE.rglob("*.py"):
        text, name = path.read_text(), path.relative_to(PACKAGE).as_posix()
        for seam, private in SEAMS.items():
            if name != seam:
                assert not [p for p in private if p in text], (path, seam)

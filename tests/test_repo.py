"""Repository hygiene: the README's commands are what CI runs; the math layer never imports transformers."""

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


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_ops_layer_is_pure_torch():
    for path in (REPO_ROOT / "dece_trainer" / "ops").glob("*.py"):
        for module in imported_modules(path):
            assert not module.startswith(("transformers", "peft", "datasets", "accelerate")), (path, module)

"""The embedded benchmark tasks: code tasks built with ``ast`` from the Python standard library installed on
the machine (no download), as ``datasets.Dataset`` splits of (``source``, ``target``) pairs.

``datasets`` is imported when a task is built, so the command line can list the task names cheaply.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

from ..data import SOURCE, TARGET
from ..io import write_jsonl

EMBEDDED_TASKS = ("method_name", "summary")
SPLITS = ("warmup", "train", "validation", "test")


# ---- the embedded default: code tasks from the standard library ---------------------------------------

def _words(name: str) -> str:
    """``readConfigFile`` / ``read_config_file`` -> ``read config file``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return " ".join(w.lower() for w in spaced.split("_") if w)


def _first_sentence(docstring: str) -> str:
    paragraph = docstring.strip().split("\n\n")[0]
    sentence = re.split(r"(?<=\.)\s", " ".join(paragraph.split()))[0]
    return sentence.strip()


def _unparse(args: ast.arguments, body: list[ast.stmt]) -> str:
    """The function as code, renamed ``f`` and without decorators or annotations of its return."""
    node = ast.FunctionDef(name="f", args=args, body=body, decorator_list=[], returns=None, type_comment=None,
                           type_params=[])
    return ast.unparse(ast.fix_missing_locations(node))


def _function_pairs(tree: ast.AST) -> list[dict]:
    rows = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        name = node.name
        if name.startswith("__") or "test" in name.lower() or len(_words(name).split()) < 2:
            continue
        doc = ast.get_docstring(node) or ""
        body = node.body[1:] if doc else node.body
        if not body:
            continue
        try:
            code = _unparse(node.args, body)  # without its docstring: the summary task's input
            code_doc = _unparse(node.args, node.body)  # with it: the method-name task's input
        except Exception:  # noqa: BLE001 - an odd node; skip the function
            continue
        lines = code.count("\n") + 1
        if not 3 <= lines <= 30 or len(code_doc) > 1500:
            continue
        summary = _first_sentence(doc) if doc else ""
        rows.append({"code": code, "code_doc": code_doc, "method_name": _words(name),
                     "summary": summary if 3 <= len(summary.split()) <= 30 else ""})
    return rows


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "lib2to3", "site-packages", "ensurepip", "turtledemo", "tkinter")
    return sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))


def _split_of(source: str, seed: int, weights=(0.4, 0.4, 0.1, 0.1)) -> str:
    """Deterministic split by a hash of the source text."""
    bucket = int(hashlib.sha256(f"{seed}:{source}".encode()).hexdigest()[:8], 16) / 16**8
    edge = 0.0
    for split, weight in zip(SPLITS, weights):
        edge += weight
        if bucket < edge:
            return split
    return SPLITS[-1]


def default_cache_dir() -> Path:
    return Path(os.environ.get("DECE_TRAINER_CACHE", Path.home() / ".cache" / "dece_trainer"))


def build_stdlib_task(task: str = "method_name", seed: int = 0, max_per_split: int | None = None,
                      cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The embedded code task, from the standard library's own functions.

    Args:
        task: ``"method_name"`` (function code, docstring included, with its name replaced by ``f`` ->
            its name as words, the task of Ramakrishnan & Albarghouthi's backdoor study) or ``"summary"``
            (code without its docstring -> the docstring's first sentence, CodeSearchNet-style filters:
            3-30 words, 3-30 lines, no tests or dunders).
        seed: decides the split of each function (by a hash of its code); deterministic.
        max_per_split: cap rows per split (first rows in a seeded shuffle).
        cache_dir: where the extracted rows are cached as JSON Lines (default ``~/.cache/dece_trainer``).

    Returns:
        ``{"warmup", "train", "validation", "test"}`` -> Dataset(source, target). ``warmup`` is a clean
        split disjoint from ``train``, for warm-starting a model before the poisoned fine-tune. Functions
        are de-duplicated by code.
    """
    from datasets import Dataset

    if task not in EMBEDDED_TASKS:
        raise ValueError(f"unknown embedded task {task!r}; valid tasks: {', '.join(EMBEDDED_TASKS)}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = cache / f"stdlib_functions_py{version}_v2.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        rows, seen = [], set()
        for file in _stdlib_files():
            try:
                tree = ast.parse(file.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for row in _function_pairs(tree):
                if row["code_doc"] not in seen:
                    seen.add(row["code_doc"])
                    rows.append(row)
        write_jsonl(path, rows)
    source_key = "code_doc" if task == "method_name" else "code"
    rows = [{SOURCE: r[source_key], TARGET: r[task]} for r in rows if r[task]]
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in rows:
        splits[_split_of(row[SOURCE], seed)].append(row)
    out = {}
    for split, items in splits.items():
        data = Dataset.from_list(items).shuffle(seed=seed)
        if max_per_split is not None and len(data) > max_per_split:
            data = data.select(range(max_per_split))
        out[split] = data
    return out

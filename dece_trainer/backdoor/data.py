"""Datasets for the harness: files and Hub datasets of (source, target) pairs, and the embedded default,
code tasks built with ``ast`` from the Python standard library installed on the machine (no download).

Every loader returns ``datasets.Dataset`` objects with the columns ``source`` and ``target`` (renamed from
whatever the file calls them), plus any other columns the file has.
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

from datasets import Dataset, load_dataset, load_from_disk

SOURCE, TARGET = "source", "target"
EMBEDDED_TASKS = ("method_name", "summary")
SPLITS = ("warmup", "train", "validation", "test")
_FILE_KINDS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_pairs(path_or_name: str, source_column: str = SOURCE, target_column: str = TARGET,
               split: str = "train") -> Dataset:
    """Load (source, target) pairs from a CSV/JSONL/JSON/Parquet file, a ``save_to_disk`` folder, or a Hub
    dataset id (``split`` picks the split), renaming the two columns to ``source`` and ``target``."""
    path = Path(path_or_name)
    if path.suffix.lower() in _FILE_KINDS:
        if not path.is_file():
            raise ValueError(f"data file not found: {path}")
        data = load_dataset(_FILE_KINDS[path.suffix.lower()], data_files=str(path), split="train")
    elif path.is_dir():
        data = load_from_disk(str(path))
        if hasattr(data, "keys"):
            data = data[split]
    elif path.suffix:
        raise ValueError(f"unsupported data file {path}: use one of {sorted(_FILE_KINDS)} or a dataset folder")
    else:
        data = load_dataset(path_or_name, split=split)
    return standardise(data, source_column, target_column, origin=str(path_or_name))


def standardise(data: Dataset, source_column: str, target_column: str, origin: str = "dataset") -> Dataset:
    """Rename ``source_column``/``target_column`` to ``source``/``target``, with a clear error if absent."""
    missing = [c for c in (source_column, target_column) if c not in data.column_names]
    if missing:
        raise ValueError(f"{origin} has no column(s) {missing}; its columns are {data.column_names} "
                         "(set --source_column/--target_column)")
    renames = {c: n for c, n in ((source_column, SOURCE), (target_column, TARGET)) if c != n}
    if any(n in data.column_names for n in renames.values()):
        data = data.remove_columns([n for n in renames.values() if n in data.column_names])
    return data.rename_columns(renames) if renames else data


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
                      cache_dir: str | os.PathLike | None = None) -> dict[str, Dataset]:
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
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
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

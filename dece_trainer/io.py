"""Atomic file and folder writes: a reader (or a rerun after a crash) sees the old content or the new, never a
half-written file. The one home for writing outputs, caches and reports.

A temporary name is created with ``tempfile`` (unpredictable, ``O_EXCL``: a planted symlink is never followed)
in the destination's own folder, so the final ``os.replace`` is a rename on one filesystem; the temporary is
removed when anything fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


def _temporary_in(folder: str, name: str, directory: bool) -> str:
    make = tempfile.mkdtemp if directory else tempfile.mkstemp
    made = make(prefix=f".{name}.", suffix=".tmp", dir=folder)
    if not directory:
        os.close(made[0])
        return made[1]
    return made


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then rename it onto ``path``.

    ``write`` gets a fresh empty temporary file's path in ``path``'s folder (created if missing).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = _temporary_in(folder, os.path.basename(path), directory=False)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(payload, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Write ``records`` to ``path`` atomically as JSON Lines: one compact JSON value per line."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    atomic_write(path, write)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (created if missing) by rewriting it atomically."""
    existing = Path(path).read_text(encoding="utf-8") if os.path.exists(path) else ""
    write_text(path, existing + text)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Build a folder in a temporary sibling and rename it onto ``path`` when the block succeeds.

    ``with atomic_directory("cache/final") as tmp: model.save_pretrained(tmp)``: a crash leaves no ``final``
    (a rerun rebuilds it), never a half-written one. An existing ``path`` is replaced.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = _temporary_in(parent, os.path.basename(path), directory=True)
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def inside(root: str | os.PathLike, *parts: str) -> str:
    """``root/part/...``, refusing any part that would leave ``root`` (``..``, absolute paths, separators in
    a name): the path of every output built from user-given names goes through here."""
    root_path = os.path.realpath(root)
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part or os.path.isabs(part):
            raise ValueError(f"{part!r} cannot name an output folder (no path separators, '.', '..' or empty names)")
    candidate = os.path.realpath(os.path.join(root_path, *parts))
    if os.path.commonpath([root_path, candidate]) != root_path:
        raise ValueError(f"{os.path.join(*parts)!r} would leave the output folder {root}")
    return candidate


def check_writable_folder(path: str | os.PathLike, flag: str = "--output_dir") -> str:
    """Refuse (``ValueError`` naming ``flag``) an output folder that cannot be written, before any work is done: a
    file in its place or on its path, or a folder (it, or the nearest existing one above it, where it would be
    created) in which a file cannot be created. Creates nothing; returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file, not a folder"
        raise ValueError(f"{flag} {path} {where}")
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise ValueError(f"{flag} {path} {what} ({err.strerror or err})") from err
    return path

"""mkdocs build hooks (mkdocs.yml ``hooks:``): pages written from the code and the repository, not copied.

- ``<!-- dece-training-arguments -->`` becomes the list of the ``--dece_*`` fields of
  ``DeCETrainingArguments``, read from the dataclass (type, default, choices and the ``help`` text that
  ``--help`` prints), so the reference cannot drift from the flags.
- ``<!-- changelog -->`` becomes the repository's ``CHANGELOG.md`` (its first title dropped, its links made
  to work from the site), or a note when the file is not there.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REPO_URL = "https://github.com/dece-trainer/dece-trainer/blob/main/"
FIELDS_MARKER = "<!-- dece-training-arguments -->"
CHANGELOG_MARKER = "<!-- changelog -->"


def _training_argument_fields() -> str:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's package, not another installed copy
    from dece_trainer.trainer.dece_config import DeCEArgumentsMixin

    lines = []
    for f in dataclasses.fields(DeCEArgumentsMixin):
        choices = f.metadata.get("choices")
        extra = f", one of {', '.join(f'`{c!r}`' for c in choices)}" if choices else ""
        lines.append(f"- **`{f.name}`** (`{f.type}`, *optional*, defaults to `{f.default!r}`{extra}): "
                     f"{f.metadata.get('help', '')}")
    return "\n".join(lines)


def _link(match: re.Match) -> str:
    text, target = match.group(1), match.group(2)
    if re.match(r"[a-z]+:|#", target):
        return match.group(0)
    if target.startswith("docs/"):
        return f"[{text}]({target[len('docs/'):]})"
    return f"[{text}]({REPO_URL}{target})"


def _changelog() -> str:
    path = ROOT / "CHANGELOG.md"
    if not path.exists():
        return f"This checkout has no `CHANGELOG.md` yet; see [CHANGELOG.md]({REPO_URL}CHANGELOG.md) in the repository."
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"\A\s*# [^\n]*\n", "", text)  # the page has its own title
    return re.sub(r"\[([^\]]*)\]\(([^)\s]+)\)", _link, text)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if FIELDS_MARKER in markdown:
        markdown = markdown.replace(FIELDS_MARKER, _training_argument_fields())
    if CHANGELOG_MARKER in markdown:
        markdown = markdown.replace(CHANGELOG_MARKER, _changelog())
    return markdown

"""(source, target) pairs for the training and evaluation scripts: loading them from files, folders or the
Hub, and encoding them for causal LMs (prompt + target, the prompt masked) or encoder-decoders.

Every loader returns a ``datasets.Dataset`` with the columns ``source`` and ``target`` (renamed from whatever
the file calls them) plus the file's other columns; a file that cannot be read is a ``ValueError`` naming it.
``datasets`` is imported by the loaders when they run, so the names here are cheap to import.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

SOURCE, TARGET = "source", "target"
# The prompt of every causal-LM script and benchmark here: the source, then a marker the target follows.
PROMPT_TEMPLATE = "{source}\n### Output:\n"
_FILE_KINDS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# csv's default field limit is 128 KiB; a whole source file in one field is ordinary in code data.
CSV_FIELD_LIMIT = 2**31 - 1


def build_prompt(source: str) -> str:
    """The causal-LM prompt for ``source`` (`PROMPT_TEMPLATE`)."""
    return PROMPT_TEMPLATE.format(source=source)


def _read_csv(path: Path) -> Dataset:
    """A CSV file read strictly (unbalanced quotes, ragged rows and non-UTF-8 bytes are errors)."""
    from datasets import Dataset

    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, strict=True))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except csv.Error as err:
        raise ValueError(f"{path} is not a well-formed CSV file: {err} (an unbalanced quote?)") from err
    if not rows:
        raise ValueError(f"{path} is empty: expected a header line and at least one row")
    header, body = rows[0], rows[1:]
    if not body:
        raise ValueError(f"{path} has a header ({header}) but no rows")
    ragged = next((i for i, row in enumerate(body, start=2) if len(row) != len(header)), None)
    if ragged is not None:
        raise ValueError(f"{path} line-record {ragged} has {len(body[ragged - 2])} fields, the header {len(header)}")
    return Dataset.from_dict({name: [row[i] for row in body] for i, name in enumerate(header)})


def data_source_problem(path_or_name: str) -> str | None:
    """Why `load_pairs` cannot take ``path_or_name``, or None: a file needs one of the known extensions and must
    exist; without an extension it must be a dataset folder or look like a Hub dataset id (``name`` or
    ``owner/name``). Touches only the file system, so a command checks its data flags before loading a model."""
    from .validation import HUB_ID

    path = Path(path_or_name)
    suffix = path.suffix.lower()
    kinds = ", ".join(sorted(_FILE_KINDS))
    if suffix in _FILE_KINDS:
        return None if path.is_file() else f"data file not found: {path}"
    if path.is_dir():
        return None
    if suffix or path.exists() or not HUB_ID.fullmatch(str(path_or_name)):
        return (f"unsupported data file {path_or_name!r}: use a file ending in one of {kinds}, a dataset folder "
                "(save_to_disk) or a Hub dataset id")
    return None


def check_data_source(path_or_name: str, flag: str) -> str:
    """`data_source_problem` as a ``ValueError`` naming the command-line ``flag`` (``--train_file``)."""
    problem = data_source_problem(path_or_name)
    if problem is not None:
        raise ValueError(f"{flag}: {problem}")
    return path_or_name


def load_pairs(path_or_name: str, source_column: str = SOURCE, target_column: str = TARGET,
               split: str = "train") -> Dataset:
    """Load (source, target) pairs from a CSV/JSONL/JSON/Parquet file, a ``save_to_disk`` folder, or a Hub
    dataset id (``split`` picks the split), renaming the two columns to ``source`` and ``target``."""
    from datasets import load_dataset, load_from_disk

    problem = data_source_problem(path_or_name)
    if problem is not None:
        raise ValueError(problem)
    path = Path(path_or_name)
    suffix = path.suffix.lower()
    if suffix in _FILE_KINDS:
        if suffix == ".csv":
            data = _read_csv(path)
        else:
            try:
                data = load_dataset(_FILE_KINDS[suffix], data_files=str(path), split="train")
            except Exception as err:  # datasets wraps parse errors in its own types: name the file instead
                raise ValueError(f"cannot read {path} as {_FILE_KINDS[suffix]}: {err}") from err
            if len(data) == 0:
                raise ValueError(f"{path} has no rows")
    elif path.is_dir():
        data = load_from_disk(str(path))
        if hasattr(data, "keys"):
            data = data[split]
    else:
        try:
            data = load_dataset(path_or_name, split=split)
        except Exception as err:  # not found, offline, no such split: one line naming the id
            first = str(err).splitlines()[0] if str(err) else ""
            raise ValueError(f"cannot load the Hub dataset {path_or_name!r} (split {split!r}): "
                             f"{type(err).__name__}: {first}") from err
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


def prompt_ids(tokenizer: Any, source: str, max_source_tokens: int) -> list[int]:
    """Token ids of the causal prompt for ``source``: BOS (when the tokenizer has one), then the prompt, cut to
    ``max_source_tokens``."""
    ids = tokenizer(build_prompt(source), add_special_tokens=False)["input_ids"][:max_source_tokens]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def encode_causal(data: Dataset, tokenizer: Any, max_source_tokens: int, max_target_tokens: int,
                  keep: tuple[str, ...] = ()) -> Dataset:
    """One causal sequence per pair: prompt + target + EOS, ``labels`` -100 on the prompt.

    Returns a Dataset of ``input_ids``, ``attention_mask``, ``labels`` (lists of int) plus the ``keep`` columns.
    """
    eos = tokenizer.eos_token_id

    def one(row):
        prompt = prompt_ids(tokenizer, row[SOURCE], max_source_tokens)
        target = tokenizer(row[TARGET], add_special_tokens=False)["input_ids"][:max_target_tokens] + [eos]
        ids = prompt + target
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt) + target}

    return data.map(one, remove_columns=[c for c in data.column_names if c not in keep])


def encode_seq2seq(data: Dataset, tokenizer: Any, max_source_tokens: int, max_target_tokens: int,
                   keep: tuple[str, ...] = ()) -> Dataset:
    """Encoder inputs from the source and ``labels`` from the target (the tokenizer's own special tokens)."""

    def one(row):
        src = tokenizer(row[SOURCE], truncation=True, max_length=max_source_tokens)
        tgt = tokenizer(text_target=row[TARGET], truncation=True, max_length=max_target_tokens)
        return {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": tgt["input_ids"]}

    return data.map(one, remove_columns=[c for c in data.column_names if c not in keep])


def _message_text(value: Any, roles: tuple[str, ...] | None, where: str) -> str:
    """A text field, or the joined ``content`` of a conversational field's messages (those of ``roles``, or all)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(m, dict) and "content" in m for m in value):
        raise ValueError(f"{where} is neither a text nor a list of messages with a `content` field")
    return "\n".join(str(m["content"]) for m in value if roles is None or m.get("role") in roles)


def pair_texts(data: Any, source_column: str | None = None,
               target_column: str | None = None) -> tuple[list[str], list[str]]:
    """The texts a model reads and learns to write, one (source, target) per row of ``data`` (a
    ``datasets.Dataset`` or a dict of columns), in the layouts Hugging Face trainers take:

    - ``source_column`` / ``target_column`` when given (text fields);
    - else ``source`` / ``target``;
    - else TRL's prompt-completion ``prompt`` / ``completion`` (texts, or conversational lists of messages);
    - else TRL's conversational ``messages``: the assistant turns are the target, every other turn the source.
    """
    columns = list(getattr(data, "column_names", None) or (data.keys() if isinstance(data, dict) else []))
    if source_column is not None or target_column is not None:
        missing = [c for c in (source_column, target_column) if c is None or c not in columns]
        if missing:
            raise ValueError(f"give both `source_column` and `target_column`, columns of the data: {missing} "
                             f"not among {columns}")
        pairs = (source_column, target_column)
    else:
        pairs = next(((s, t) for s, t in ((SOURCE, TARGET), ("prompt", "completion")) if s in columns and t in columns),
                     None)
    if pairs is not None:
        s_col, t_col = pairs
        sources = [_message_text(v, None, f"row {i} of `{s_col}`") for i, v in enumerate(data[s_col])]
        targets = [_message_text(v, None, f"row {i} of `{t_col}`") for i, v in enumerate(data[t_col])]
        return sources, targets
    if "messages" in columns:
        rows = list(data["messages"])
        others = ("system", "user", "tool", "developer")
        return ([_message_text(m, others, f"row {i} of `messages`") for i, m in enumerate(rows)],
                [_message_text(m, ("assistant",), f"row {i} of `messages`") for i, m in enumerate(rows)])
    raise ValueError(f"cannot tell the source and target texts of data with columns {columns}: give "
                     "`source_column` and `target_column`, or use source/target, prompt/completion or messages")

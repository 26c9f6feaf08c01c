"""From the suspicious-example report to a decision: which training rows to drop before a clean retrain.

The recipe (``dece+filter`` in ``dece-trainer bench``): train with DeCE and an `EarlyLearningCallback`, drop
the rows its report flags (:func:`drop_flagged`), fine-tune the starting model again with CE on the rows
kept. The threshold comes from the report's own score distribution (:func:`choose_threshold`), never from
a known poison rate. A report is read into columns (:class:`Report`), and whatever does not fit the dataset or
the decision is refused with the file and line at fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from array import array
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..outliers import FENCE, choose_threshold  # the flagging rule's one home (shared with the data audit)
from ..trainer.example_ids import EXAMPLE_ID_COLUMN
from ..validation import check_example_ids, check_name, check_number

SCORE_KEY = "score"
FLAGGED_KEY = "flagged"  # the data audit's own flags, at its fence (`decide` checks them)
FIELD_ROWS = 1000  # a report's fields are named by its first rows


@dataclass
class FilterDecision:
    """What the filter decided.

    Attributes:
        threshold: rows with ``score > threshold`` are flagged (``inf`` when nothing stands out).
        flagged: example ids to drop, most suspicious first.
        kept: example ids to keep, ascending.
        score_key: the report field the decision used.
        fence: the modified z-score above which a row was flagged.
    """

    threshold: float
    flagged: list[int]
    kept: list[int]
    score_key: str
    fence: float = FENCE

    def summary(self, poisoned: Sequence[bool] | None = None) -> dict[str, Any]:
        """JSON-ready counts; with ``poisoned`` (indexed by example id) also how many clean rows were dropped and
        how many poisoned rows were kept."""
        out: dict[str, Any] = {"threshold": self.threshold if math.isfinite(self.threshold) else None,
                               "flagged": len(self.flagged), "kept": len(self.kept), "score_key": self.score_key,
                               "fence": self.fence}
        if poisoned is not None:
            poisoned = np.asarray(poisoned, dtype=bool)
            named = [i for ids in (self.flagged, self.kept) if ids for i in (min(ids), max(ids))]
            outside = [i for i in named if not 0 <= i < poisoned.size]
            if poisoned.ndim != 1 or outside:
                raise ValueError(f"`poisoned` has {poisoned.size} entries, but the decision names example id "
                                 f"{outside[0] if outside else '?'}: give one true/false per example id")
            out.update(dropped_clean=int((~poisoned[self.flagged]).sum()) if self.flagged else 0,
                       kept_poisoned=int(poisoned[self.kept].sum()) if self.kept else 0,
                       poisoned=int(poisoned.sum()))
        return out


@dataclass(frozen=True, eq=False)
class Report:
    """A suspicious-example report held as columns, never as one dict per row (what `read_report` returns).

    Attributes:
        example_id: (n,) int64 example ids in report order (most suspicious first): unique, non-negative.
        fields: every top-level number or true/false field, named by the report's first rows: (n,) float64 (NaN
            where a row has none), or bool where every row has a true/false value. Lists (``tokens``) are skipped.
        source: the file it was read from; None for records given in memory.

    Iterating gives the rows as dicts, built one at a time.
    """

    example_id: np.ndarray
    fields: dict[str, np.ndarray]
    source: str | None = None

    def __len__(self) -> int:
        return int(self.example_id.size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in range(len(self)):
            yield {EXAMPLE_ID_COLUMN: int(self.example_id[row]), **{k: v[row].item() for k, v in self.fields.items()}}

    @property
    def name(self) -> str:
        return self.source if self.source is not None else "(records)"

    def place(self, row: int) -> str:
        """Row ``row``'s place in its source: ``line k`` (of the file) or ``record k``."""
        return f"line {_line_of(self.source, row)[0]}" if self.source is not None else f"record {row}"

    def where(self, row: int) -> str:
        """Row ``row``'s place, for messages: ``file, line k`` or ``record k``."""
        return f"{self.source}, {self.place(row)}" if self.source is not None else self.place(row)

    def column(self, key: str, argument: str = "score_key") -> np.ndarray:
        """The field ``key``; refused, naming ``argument`` and the fields there are, when the report lacks it."""
        if key == EXAMPLE_ID_COLUMN:
            return self.example_id
        if key not in self.fields:
            raise ValueError(f"`{argument}` {key!r} is not a field of the report {self.name}: its number fields are "
                             f"{sorted(self.fields)}")
        return self.fields[key]

    def value(self, row: int, key: str) -> Any:
        """Row ``row``'s ``key`` as written (read back from the file's line), for messages."""
        if self.source is None:
            return self.fields[key][row].item()
        return json.loads(_line_of(self.source, row)[1]).get(key)


def read_report(path: str | os.PathLike) -> Report:
    """A ``suspicious.jsonl`` written by `EarlyLearningCallback`, as a `Report`: the example ids and every top-level
    number or true/false field, in columns (a million rows: a few seconds, ~100 MB). Anything that does not fit is
    refused with the file and line: a line that is not a JSON object, an ``example_id`` that is not a
    non-negative integer or appears twice, a field whose type changes."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise ValueError(f"no suspicious-example report at {source}: train with an EarlyLearningCallback first")
    first = _first_rows(source)
    if not first:
        return Report(np.zeros(0, dtype=np.int64), {}, source)
    kinds = _field_kinds(first)
    report = _read_columnar(source, kinds)
    if report is None:  # pyarrow refused something: the line-by-line reader names the line at fault
        report = _read_lines(source, kinds)
    _check_report_ids(report)
    return report


def as_report(report: Report | Sequence[dict] | str | os.PathLike, argument: str = "report") -> Report:
    """A `Report` from a `Report`, a ``suspicious.jsonl`` path or its records (dicts), checked like a file."""
    if isinstance(report, Report):
        return report
    if isinstance(report, (str, os.PathLike)):
        return read_report(report)
    if not isinstance(report, (list, tuple)):
        raise ValueError(f"`{argument}` must be a suspicious.jsonl path, its records or a Report, got "
                         f"{type(report).__name__}")
    if not report:
        return Report(np.zeros(0, dtype=np.int64), {})
    columns = _Columns(_field_kinds([(r, f"record {i}") for i, r in enumerate(report[:FIELD_ROWS])]))
    for row, record in enumerate(report):
        columns.add(record, f"record {row}")
    out = columns.report(None)
    _check_report_ids(out)
    return out


class _Columns:
    """Rows checked and appended one at a time to compact columns (``array``: 8 bytes a value)."""

    def __init__(self, kinds: dict[str, type]):
        self.kinds = kinds
        self.ids = array("q")
        self.values = {name: array("d") for name in kinds}

    def add(self, record: Any, where: str) -> None:
        self.ids.append(_row_id(record, where))
        for name, kind in self.kinds.items():
            self.values[name].append(_row_value(record.get(name), name, kind, where))

    def report(self, source: str | None) -> Report:
        fields = {}
        for name, values in self.values.items():
            column = np.frombuffer(values, dtype=np.float64).copy()
            fields[name] = column.astype(bool) if self.kinds[name] is bool and not np.isnan(column).any() else column
        return Report(np.frombuffer(self.ids, dtype=np.int64).copy(), fields, source)


def _row_id(record: Any, where: str) -> int:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object but {type(record).__name__}: not a suspicious-example report")
    if EXAMPLE_ID_COLUMN not in record:
        raise ValueError(f"{where}: no `{EXAMPLE_ID_COLUMN}`: not a suspicious-example report")
    value = record[EXAMPLE_ID_COLUMN]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"{where}: `{EXAMPLE_ID_COLUMN}` must be a non-negative integer, got {str(value)[:40]}")
    return value


def _row_value(value: Any, name: str, kind: type, where: str) -> float:
    if value is None:
        return math.nan
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: `{name}` must be true or false (as on the rows before), got {str(value)[:40]}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: `{name}` must be a number, got {repr(value)[:40]}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{where}: `{name}` must be a number of float range, got {str(value)[:40]}") from None


def _field_kinds(rows: Sequence[tuple[Any, str]]) -> dict[str, type]:
    """The fields a report keeps, named by its first rows ((record, place) pairs): top-level numbers as float,
    true/false as bool (by a field's first non-null value; a field only ever null is a number)."""
    kinds: dict[str, type | None] = {}
    for record, where in rows:
        _row_id(record, where)
        for name, value in record.items():
            if name == EXAMPLE_ID_COLUMN or kinds.get(name, None) is not None:
                continue
            if value is None:
                kinds.setdefault(name, None)
            else:
                kinds[name] = bool if isinstance(value, bool) else float if isinstance(value, (int, float)) else str
    return {name: kind or float for name, kind in kinds.items() if kind is not str}


def _first_rows(source: str, count: int = FIELD_ROWS) -> list[tuple[Any, str]]:
    """The JSON values of the first ``count`` non-blank lines, with their places."""
    rows = []
    with open(source, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                where = f"{source}, line {number}"
                rows.append((_parse(line, where), where))
                if len(rows) == count:
                    break
    return rows


def _parse(line: bytes, where: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        detail = f"{err.msg}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)
        raise ValueError(f"{where}: not JSON ({detail})") from None


def _line_of(source: str, row: int) -> tuple[int, bytes]:
    """Line number and text of the ``row``-th non-blank line (rows count from 0)."""
    seen = -1
    with open(source, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number, line
    raise ValueError(f"{source} has no row {row}")


def _read_columnar(source: str, kinds: dict[str, type]) -> Report | None:
    """The report through pyarrow's streaming JSON reader (1 MB blocks, the ``tokens`` lists parsed but not kept);
    None where pyarrow is missing or refuses the file."""
    try:
        import pyarrow as pa
        import pyarrow.json as pj
    except ImportError:  # pragma: no cover - datasets installs pyarrow
        return None
    names = [EXAMPLE_ID_COLUMN, *kinds]
    schema = pa.schema([(EXAMPLE_ID_COLUMN, pa.int64())] +
                       [(name, pa.bool_() if kind is bool else pa.float64()) for name, kind in kinds.items()])
    chunks: dict[str, list] = {name: [] for name in names}
    try:
        reader = pj.open_json(source, read_options=pj.ReadOptions(block_size=1 << 20),
                              parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
        for batch in reader:
            for name in names:
                chunks[name].append(batch.column(name))
    except pa.ArrowException:
        return None
    columns = {}
    for name in names:
        column = pa.chunked_array(chunks.pop(name), type=schema.field(name).type)
        if name == EXAMPLE_ID_COLUMN and column.null_count:
            return None
        if kinds.get(name) is bool and column.null_count:
            column = column.cast(pa.float64())
        columns[name] = column.to_numpy()
        del column
    return Report(columns.pop(EXAMPLE_ID_COLUMN).astype(np.int64, copy=False), columns, source)


def _read_lines(source: str, kinds: dict[str, type]) -> Report:
    """The report line by line (``json``), naming the first line that does not fit."""
    columns = _Columns(kinds)
    with open(source, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                where = f"{source}, line {number}"
                columns.add(_parse(line, where), where)
    return columns.report(source)


def _check_report_ids(report: Report) -> None:
    """Unique non-negative example ids, or an error naming the row (and the row that had the id first)."""
    ids = report.example_id
    negative = np.flatnonzero(ids < 0)
    if negative.size:
        raise ValueError(f"{report.where(int(negative[0]))}: `{EXAMPLE_ID_COLUMN}` must be a non-negative integer, "
                         f"got {ids[negative[0]]}")
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if repeated.size:
        later = order[repeated + 1]
        pick = int(np.argmin(later))
        first, again = int(order[repeated[pick]]), int(later[pick])
        place = report.place(first)
        raise ValueError(f"{report.where(again)}: example id {ids[again]} is {'on' if place[0] == 'l' else 'in'} "
                         f"{place} too: a report names each example once")


def decide(report: Report | Sequence[dict] | str | os.PathLike, score_key: str = SCORE_KEY,
           fence: float | None = None) -> FilterDecision:
    """Flag the rows of ``report`` (a `Report`, its records or a ``suspicious.jsonl`` path) whose ``score_key``
    exceeds :func:`choose_threshold` of all rows' scores at ``fence`` (> 0; lower flags more rows; None: `FENCE`).
    Refused, since each would look like a clean report: an empty report, a ``score_key`` it lacks, a row without a
    finite score. A report that marks its own flags (the data audit's ``flagged``, at the ``--fence`` it ran with)
    and flags other rows than the default fence would is refused unless ``fence`` is given: the rows dropped are
    then the ones the report shows as flagged, or the ones the caller asked for, never silently others."""
    check_name(score_key, "score_key")
    chosen = fence is not None
    fence = check_number(fence if chosen else FENCE, "fence", low=0.0, low_open=True)
    report = as_report(report)
    if not len(report):
        raise ValueError(f"the report {report.name} holds no rows: nothing to decide on (a run that saw no example "
                         "writes an empty report)")
    scores = report.column(score_key)
    if scores.dtype == bool:
        raise ValueError(f"`score_key` {score_key!r} names a true/false field of the report {report.name}, not a score")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"{report.where(row)}: `{score_key}` must be a finite number, got "
                         f"{report.value(row, score_key)!r} ({bad.size} rows without a finite score)")
    threshold = choose_threshold(scores, fence)
    flagged = np.flatnonzero(scores > threshold)
    marked = report.fields.get(FLAGGED_KEY)
    if not chosen and score_key == SCORE_KEY and marked is not None and marked.dtype == bool \
            and not np.array_equal(np.sort(flagged), np.flatnonzero(marked)):
        raise ValueError(f"the report {report.name} marks {int(marked.sum())} rows `{FLAGGED_KEY}` (at the fence it "
                         f"was written with: `dece-trainer audit --fence`, recorded in its audit_summary.json), and "
                         f"the default fence {FENCE:g} flags {flagged.size}: pass that fence as `fence=` to drop the "
                         f"rows it marks, or another to decide anew")
    flagged = flagged[np.argsort(-scores[flagged], kind="stable")]
    kept = np.sort(np.delete(report.example_id, flagged))
    return FilterDecision(threshold, report.example_id[flagged].tolist(), kept.tolist(), score_key, fence)


def drop_flagged(dataset: Any, report: Report | Sequence[dict] | str | os.PathLike, score_key: str = SCORE_KEY,
                 id_column: str | None = None, fence: float | None = None) -> tuple[Any, FilterDecision]:
    """``dataset`` (a ``datasets.Dataset``) without the rows ``report`` flags, and the decision; rows the report
    does not mention are kept (and counted in ``decision.kept``). A row's example id is its ``id_column``, by
    default ``example_id`` where the dataset has one, else its row index. Refused: an ``id_column`` the dataset
    lacks, ids that are not unique non-negative integers, and a report naming an id the dataset does not have (a
    report of another dataset)."""
    report = as_report(report)
    decision = decide(report, score_key, fence)
    columns = list(getattr(dataset, "column_names", None) or [])
    if id_column is None:
        id_column = EXAMPLE_ID_COLUMN if EXAMPLE_ID_COLUMN in columns else None
    elif check_name(id_column, "id_column") not in columns:
        raise ValueError(f"`id_column` {id_column!r} is not a column of the dataset (columns: {columns})")
    if id_column is None:
        ids, what = np.arange(len(dataset), dtype=np.int64), f"row order: ids 0..{len(dataset) - 1}"
    else:
        ids, what = check_example_ids(dataset[id_column], id_column, "the dataset"), f"column `{id_column}`"
    foreign = np.flatnonzero(~np.isin(report.example_id, ids))
    if foreign.size:
        row = int(foreign[0])
        raise ValueError(f"{report.where(row)}: example id {report.example_id[row]} is not in the dataset ({what}): "
                         f"the report is not this dataset's ({foreign.size} of its {len(report)} ids are not in its "
                         f"{len(dataset)} rows)")
    keep = np.flatnonzero(~np.isin(ids, np.asarray(decision.flagged, dtype=np.int64)))
    decision = dataclasses.replace(decision, kept=np.sort(ids[keep]).tolist())
    return dataset.select(keep), decision

"""Validation of the Corporación Favorita CSV files: columns, types, ranges, allowed values, nulls.

Each file has a :class:`FileSchema` in :data:`SCHEMAS`. :func:`validate_frame` checks a frame read
from that file (a whole small file, or one chunk of ``train.csv``) with vectorised pandas/numpy
operations and returns it with the final dtypes, or raises :class:`DataValidationError`. The error
names the file, the column, the 1-based line in the CSV file (the header is line 1) and the rule,
and lists up to ``max_errors`` problems::

    >>> import io, pandas as pd
    >>> raw = pd.read_csv(io.StringIO("item_nbr,family,class,perishable\\n103520,GROCERY I,1028,2\\n"))
    >>> validate_frame(raw, "items.csv")
    Traceback (most recent call last):
    ...
    cloud.data.validate.DataValidationError: items.csv line 2, column perishable: must be 0 or 1 (got '2')

The frame may come straight from ``pd.read_csv`` with inferred dtypes (the fast path: numbers
parsed by the C parser, low-cardinality text read as ``category``) or as plain strings; a column
whose values did not parse as numbers arrives as text and is checked value by value, still
vectorised, so the error can quote what was in the file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DataValidationError",
    "ValidationIssue",
    "ColumnSpec",
    "FileSchema",
    "SCHEMAS",
    "HOLIDAY_TYPES",
    "HOLIDAY_LOCALES",
    "STORE_TYPES",
    "MAX_ERRORS",
    "check_columns",
    "validate_frame",
    "check_sorted_dates",
    "parser_error",
]

logger = logging.getLogger(__name__)

#: How many problems one :class:`DataValidationError` lists at most.
MAX_ERRORS = 20

HOLIDAY_TYPES: tuple[str, ...] = ("Holiday", "Transfer", "Additional", "Bridge", "Work Day", "Event")
HOLIDAY_LOCALES: tuple[str, ...] = ("National", "Regional", "Local")
STORE_TYPES: tuple[str, ...] = ("A", "B", "C", "D", "E")

_DATE_RE = r"\d{4}-\d{2}-\d{2}"
_KINDS = ("date", "int", "float", "bool", "flag", "choice", "str")


# --------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in one cell (or in the header, ``line == 1``).

    ``rule`` is a short stable name (``"date"``, ``"finite number"``, ``"required column"``…);
    ``detail`` is the human sentence used in the message; ``value`` is the text the file held
    (``None`` for an empty or missing cell; numbers the C parser read are shown as ``str(number)``).
    """

    file: str
    column: str | None
    line: int | None
    rule: str
    detail: str
    value: Any = None

    @property
    def message(self) -> str:
        """``train.csv line 12, column unit_sales: must be a finite number (got 'abc')``."""
        where = self.file
        if self.line is not None:
            where += f" line {self.line}"
        if self.column is not None:
            where += f", column {self.column}"
        text = f"{where}: {self.detail}"
        if self.value is not None:
            text += f" (got {self.value!r})"
        return text

    def __str__(self) -> str:
        return self.message


class DataValidationError(ValueError):
    """A Favorita file broke its schema.

    The first problem's fields are attributes (``file``, ``column``, ``line``, ``rule``,
    ``value``); ``errors`` lists up to :data:`MAX_ERRORS` :class:`ValidationIssue` in line order,
    ``total`` counts every problem found in the frame that was checked.
    """

    def __init__(self, errors: Iterable[ValidationIssue], *, total: int | None = None) -> None:
        self.errors: list[ValidationIssue] = list(errors)
        if not self.errors:
            raise ValueError("DataValidationError needs at least one ValidationIssue")
        self.total: int = max(total or 0, len(self.errors))
        first = self.errors[0]
        self.file: str = first.file
        self.column: str | None = first.column
        self.line: int | None = first.line
        self.rule: str = first.rule
        self.value: Any = first.value
        super().__init__(self._format())

    def _format(self) -> str:
        text = self.errors[0].message
        if self.total > 1:
            rest = self.errors[1:]
            text += f"\n... {self.total - 1} more problem(s) in {self.file}"
            if rest:
                text += ":\n" + "\n".join(f"  - {issue.message}" for issue in rest)
            if self.total > len(self.errors):
                text += f"\n  (only the first {len(self.errors)} are listed)"
        return text

    def __reduce__(self):  # keep it picklable (multiprocessing, pytest-xdist)
        return (_rebuild_error, (self.errors, self.total))


def _rebuild_error(errors: list[ValidationIssue], total: int) -> DataValidationError:
    return DataValidationError(errors, total=total)


def parser_error(exc: Exception, file: str, *, stream_first_line: int = 1) -> DataValidationError:
    """Turn a pandas ``ParserError`` ("Expected 6 fields in line 12, saw 7") into our error.

    ``stream_first_line`` is the file line the parsed stream started on (1 when pandas read the
    whole file, header included); pandas counts "line N" from 1 and "row N" from 0 from there.
    """
    text = str(exc).strip().split("C error:", 1)[-1].strip()
    line = None
    match = re.search(r"\bline (\d+)", text)
    if match:
        line = int(match.group(1)) + stream_first_line - 1
    else:
        match = re.search(r"\brow (\d+)", text)
        if match:
            line = int(match.group(1)) + stream_first_line
    if match:
        text = text.replace(match.group(0), f"line {line}", 1)
    return DataValidationError([ValidationIssue(file, None, line, "csv format", f"is not well-formed CSV: {text}")])


# --------------------------------------------------------------------------------------- schemas


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a Favorita file.

    ``kind`` is one of ``date`` (YYYY-MM-DD → ``datetime64[ns]``), ``int`` (→ ``int64``, at
    least ``min``), ``float`` (finite → ``float64``), ``bool`` (True/False → ``bool``, or
    ``boolean`` when nullable), ``flag`` (0/1 → ``int64``), ``choice`` (one of ``choices`` →
    ``str``) and ``str`` (→ ``str``).
    """

    name: str
    kind: str
    nullable: bool = False
    required: bool = True
    min: int | None = None
    choices: tuple[str, ...] | None = None
    unique: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown column kind {self.kind!r} for {self.name!r}")

    @property
    def textual(self) -> bool:
        """True for kinds best read as ``category`` (few distinct values, checked per value)."""
        return self.kind in ("date", "bool", "choice", "str")


@dataclass(frozen=True)
class FileSchema:
    """The columns of one file, in the order the real file has them."""

    name: str
    columns: tuple[ColumnSpec, ...]
    notes: str = ""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


def _date(name: str = "date", **kw: Any) -> ColumnSpec:
    return ColumnSpec(name, "date", **kw)


def _pos(name: str, **kw: Any) -> ColumnSpec:
    return ColumnSpec(name, "int", min=1, **kw)


SCHEMAS: dict[str, FileSchema] = {
    s.name: s
    for s in (
        FileSchema(
            "train.csv",
            (
                ColumnSpec("id", "int", min=0, required=False),
                _date(),
                _pos("store_nbr"),
                _pos("item_nbr"),
                ColumnSpec("unit_sales", "float"),
                ColumnSpec("onpromotion", "bool", nullable=True),
            ),
            "only non-zero sales rows; negative = returns; sorted by date; onpromotion empty before 2014-04-01",
        ),
        FileSchema(
            "test.csv",
            (
                ColumnSpec("id", "int", min=0),
                _date(),
                _pos("store_nbr"),
                _pos("item_nbr"),
                ColumnSpec("onpromotion", "bool", nullable=True),
            ),
            "the 16 days after train ends, every store x item",
        ),
        FileSchema(
            "items.csv",
            (
                _pos("item_nbr", unique=True),
                ColumnSpec("family", "str"),
                ColumnSpec("class", "int", min=0),
                ColumnSpec("perishable", "flag"),
            ),
        ),
        FileSchema(
            "stores.csv",
            (
                _pos("store_nbr", unique=True),
                ColumnSpec("city", "str"),
                ColumnSpec("state", "str"),
                ColumnSpec("type", "choice", choices=STORE_TYPES),
                _pos("cluster"),
            ),
        ),
        FileSchema(
            "holidays_events.csv",
            (
                _date(),
                ColumnSpec("type", "choice", choices=HOLIDAY_TYPES),
                ColumnSpec("locale", "choice", choices=HOLIDAY_LOCALES),
                ColumnSpec("locale_name", "str"),
                ColumnSpec("description", "str"),
                ColumnSpec("transferred", "bool"),
            ),
        ),
        FileSchema(
            "transactions.csv",
            (_date(), _pos("store_nbr"), ColumnSpec("transactions", "int", min=0)),
        ),
        FileSchema(
            "oil.csv",
            (_date(), ColumnSpec("dcoilwtico", "float", nullable=True)),
            "weekdays only; some prices missing",
        ),
    )
}


def _schema(file: str, schema: FileSchema | None) -> FileSchema:
    if schema is not None:
        return schema
    try:
        return SCHEMAS[file]
    except KeyError:
        raise KeyError(f"no schema for {file!r}; known files: {', '.join(SCHEMAS)}") from None


# --------------------------------------------------------------------------------------- checks


def check_columns(columns: Iterable[str], file: str, schema: FileSchema | None = None) -> None:
    """Raise if a required column is missing from the header (reported on line 1)."""
    schema = _schema(file, schema)
    present = [str(c) for c in columns]
    missing = [c for c in schema.required if c not in present]
    if missing:
        header = ", ".join(present) if present else "(empty)"
        raise DataValidationError(
            [
                ValidationIssue(file, name, 1, "required column", f"required column is missing (header has: {header})")
                for name in missing
            ]
        )


def check_sorted_dates(
    dates: np.ndarray | pd.Series,
    file: str,
    *,
    first_line: int = 2,
    previous: np.datetime64 | None = None,
    column: str = "date",
) -> None:
    """Raise if ``dates`` (one chunk, in file order) ever decrease, also against ``previous``.

    ``train.csv`` is sorted by date; the loader relies on it to stop reading past the window.
    """
    values = np.asarray(dates, dtype="datetime64[ns]")
    if values.size == 0:
        return
    if previous is not None:
        values = np.concatenate([np.asarray([previous], dtype="datetime64[ns]"), values])
        first_line -= 1
    bad = np.flatnonzero(values[1:] < values[:-1])
    if bad.size:
        pos = int(bad[0]) + 1
        value = str(pd.Timestamp(values[pos]).date())
        after = str(pd.Timestamp(values[pos - 1]).date())
        raise DataValidationError(
            [
                ValidationIssue(
                    file,
                    column,
                    first_line + pos,
                    "sorted by date",
                    f"dates must not decrease, the file must be sorted by date (follows {after})",
                    value,
                )
            ],
            total=int(bad.size),
        )


def validate_frame(
    frame: pd.DataFrame,
    file: str,
    *,
    first_line: int = 2,
    max_errors: int = MAX_ERRORS,
    schema: FileSchema | None = None,
) -> pd.DataFrame:
    """Check ``frame`` against the schema of ``file``; return it typed, columns in schema order.

    ``first_line`` is the CSV line of the frame's first row (2 for a whole file; the header is
    line 1). Optional columns that are absent are left out of the result; columns the schema does
    not know are dropped. Raises :class:`DataValidationError` listing up to ``max_errors``
    problems, ordered by line.
    """
    schema = _schema(file, schema)
    check_columns(frame.columns, file, schema)
    extra = [c for c in frame.columns if c not in schema.names]
    if extra:
        logger.debug("%s: ignoring unknown column(s) %s", file, extra)

    issues: list[ValidationIssue] = []
    total = 0
    out: dict[str, Any] = {}
    for spec in schema.columns:
        if spec.name not in frame.columns:
            continue
        values, problems = _check_column(frame[spec.name], spec, first_line)
        out[spec.name] = values
        for mask, rule, detail, raw in problems:
            positions = np.flatnonzero(mask)
            if not positions.size:
                continue
            total += int(positions.size)
            for pos in positions[:max_errors]:
                issues.append(
                    ValidationIssue(file, spec.name, first_line + int(pos), rule, detail(int(pos)), raw(int(pos)))
                )
    if total:
        order = {name: i for i, name in enumerate(schema.names)}
        issues.sort(key=lambda e: (e.line or 0, order.get(e.column or "", -1)))
        raise DataValidationError(issues[:max_errors], total=total)
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


# ----------------------------------------------------------------------------- column checkers

_Problem = tuple[np.ndarray, str, Any, Any]  # (mask, rule, detail(pos) -> str, raw(pos) -> value)


def _const(text: str):
    return lambda _pos: text


def _categories(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, categories as str)``; code -1 marks a missing cell."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy(dtype=np.int64)
        cats = series.cat.categories
    else:
        codes, cats = pd.factorize(series, use_na_sentinel=True)
        codes = codes.astype(np.int64, copy=False)
    text = np.array([_cell_text(v) for v in cats], dtype=object)
    return codes, text


def _cell_text(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return str(pd.Timestamp(value).date())
    return str(value)


def _take(per_category: np.ndarray, codes: np.ndarray, fill: Any) -> np.ndarray:
    """Values per row from values per category; ``fill`` where the cell is missing (code -1)."""
    ext = np.empty(len(per_category) + 1, dtype=per_category.dtype)
    ext[:-1] = per_category
    ext[-1] = fill
    return ext[np.where(codes < 0, len(per_category), codes)]


def _check_column(series: pd.Series, spec: ColumnSpec, first_line: int) -> tuple[Any, list[_Problem]]:
    if spec.textual:
        return _check_textual(series, spec)
    return _check_numeric(series, spec, first_line)


def _check_textual(series: pd.Series, spec: ColumnSpec) -> tuple[Any, list[_Problem]]:
    codes, cats = _categories(series)
    cat_null = cats == ""
    null = _take(cat_null, codes, True)

    def raw(pos: int) -> Any:
        code = codes[pos]
        return None if code < 0 or cat_null[code] else cats[code]

    problems: list[_Problem] = []
    if not spec.nullable:
        problems.append((null, "not null", _const("must not be empty"), lambda _p: None))

    if spec.kind == "date":
        ok = pd.Series(cats, dtype=object).str.fullmatch(_DATE_RE).fillna(False).to_numpy(dtype=bool)
        parsed = pd.to_datetime(pd.Series(cats, dtype=object), format="%Y-%m-%d", errors="coerce")
        parsed = parsed.to_numpy(dtype="datetime64[ns]")
        ok = ok & ~np.isnat(parsed)
        bad = ~null & ~_take(ok, codes, True)
        problems.append((bad, "date", _const("must be a date YYYY-MM-DD"), raw))
        values: Any = _take(parsed, codes, np.datetime64("NaT", "ns"))
    elif spec.kind == "bool":
        lower = np.array([c.lower() for c in cats], dtype=object)
        is_true = lower == "true"
        ok = is_true | (lower == "false")
        bad = ~null & ~_take(ok, codes, True)
        detail = "must be True, False or empty" if spec.nullable else "must be True or False"
        problems.append((bad, "boolean", _const(detail), raw))
        truth = _take(is_true, codes, False)
        values = pd.arrays.BooleanArray(truth, null.copy()) if spec.nullable else truth
    else:  # choice / str
        if spec.kind == "choice":
            assert spec.choices is not None
            ok = np.isin(cats.astype(str), np.array(spec.choices, dtype=str)) if len(cats) else np.zeros(0, bool)
            bad = ~null & ~_take(ok, codes, True)
            problems.append((bad, "allowed values", _const("must be one of " + ", ".join(spec.choices)), raw))
        text = _take(np.where(cat_null, None, cats).astype(object), codes, None)
        values = pd.array(text, dtype="str")
    return values, problems


def _check_numeric(series: pd.Series, spec: ColumnSpec, first_line: int) -> tuple[Any, list[_Problem]]:
    dtype = series.dtype
    numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if numeric:
        null = series.isna().to_numpy()
        if pd.api.types.is_integer_dtype(dtype):
            number, ints = None, series.to_numpy()
        else:
            number, ints = series.to_numpy(dtype=np.float64, na_value=np.nan), None

        def raw(pos: int) -> Any:
            value = series.iloc[pos]
            value = value.item() if hasattr(value, "item") else value
            if isinstance(value, float) and spec.kind != "float" and value.is_integer():
                value = int(value)  # 5 in the file, 5.0 only because the column also has a gap
            return None if value is None or value != value else str(value)

    else:
        # Text: the C parser could not read every value as a number. Check every cell, vectorised.
        text = series.astype(object) if isinstance(dtype, pd.CategoricalDtype) else series
        text = text.map(_cell_text, na_action="ignore") if not pd.api.types.is_string_dtype(text.dtype) else text
        null = (text.isna() | (text.astype(object) == "")).to_numpy(dtype=bool)
        number = pd.to_numeric(text.where(~null), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ints = None

        def raw(pos: int) -> Any:
            value = text.iloc[pos]
            return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)

    problems: list[_Problem] = []
    if not spec.nullable:
        problems.append((null, "not null", _const("must not be empty"), lambda _p: None))

    if spec.kind == "float":
        assert number is not None or ints is not None
        values = number if number is not None else ints.astype(np.float64)
        bad = ~null & ~np.isfinite(values)
        problems.append((bad, "finite number", _const("must be a finite number"), raw))
        return values, problems

    # int / flag
    if ints is not None:
        as_int = ints.astype(np.int64, copy=False)
        not_int = np.zeros(len(as_int), dtype=bool)
    else:
        with np.errstate(invalid="ignore"):
            not_int = ~null & (~np.isfinite(number) | (number != np.floor(number)) | (np.abs(number) > 2**62))
        as_int = np.where(null | not_int, 0, number).astype(np.int64)

    if spec.kind == "flag":
        bad = ~null & (not_int | ((as_int != 0) & (as_int != 1)))
        problems.append((bad, "0 or 1", _const("must be 0 or 1"), raw))
    else:
        lo = spec.min
        rule = {1: "positive integer", 0: "non-negative integer"}.get(lo, "integer") if lo is not None else "integer"
        if lo in (0, 1):
            detail = f"must be a {rule}"
        else:
            detail = "must be an integer" if lo is None else f"must be an integer >= {lo}"
        bad = ~null & (not_int | ((as_int < lo) if lo is not None else False))
        problems.append((bad, rule, _const(detail), raw))
        if spec.unique:
            dup = pd.Series(np.where(null | bad, np.int64(-1), as_int)).duplicated(keep="first").to_numpy()
            dup = dup & ~null & ~bad
            if dup.any():
                first_pos = pd.Series(np.arange(len(as_int))).groupby(as_int).transform("min").to_numpy()
                problems.append(
                    (dup, "unique", lambda p: f"must be unique (already on line {first_line + first_pos[p]})", raw)
                )
    return as_int, problems

"""Loading the Corporación Favorita data (real, or synthetic in the same format), streamed.

``train.csv`` of the real competition has ~125 million rows, so it is never read whole: it is
streamed in chunks, each chunk validated (:mod:`cloud.data.validate`) and filtered to the date window
and the stores asked for. The file is sorted by date, so reading starts at the first line of the
window (found by bisecting the file's bytes) and stops at the first chunk past its end::

    >>> from cloud.data import loader as data
    >>> fav = data.load("data/favorita", start="2017-01-01", end="2017-08-15", stores=[1, 2])  # doctest: +SKIP
    >>> train, report = data.clean(fav.train, items=fav.items, stores=fav.stores)           # doctest: +SKIP
    >>> grid = data.daily_grid(train, "2017-01-01", "2017-08-15")                           # doctest: +SKIP
    >>> fav.version                                                                          # doctest: +SKIP
    '3f5a...'

``items.csv``, ``stores.csv``, ``holidays_events.csv`` and ``train.csv`` are required;
``transactions.csv`` and ``oil.csv`` are loaded when present (empty frames and a warning when
not); ``test.csv`` is loaded when present (``None`` when not).

What is filtered: ``train`` and ``transactions`` by the date window and the stores; ``test`` by
the stores; ``items``, ``stores``, ``holidays`` and ``oil`` are reference tables and kept whole
(holidays and oil are needed past the window, for the forecast horizon).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pandas as pd

from cloud.data.validate import (
    MAX_ERRORS,
    SCHEMAS,
    DataValidationError,
    FileSchema,
    ValidationIssue,
    check_columns,
    check_sorted_dates,
    parser_error,
    validate_frame,
)

__all__ = [
    "FavoritaData",
    "CleanReport",
    "load",
    "load_test",
    "read_table",
    "clean",
    "daily_grid",
    "REQUIRED_FILES",
    "OPTIONAL_FILES",
    "FRAMES",
    "FORMAT_VERSION",
]

logger = logging.getLogger(__name__)

REQUIRED_FILES: tuple[str, ...] = ("train.csv", "items.csv", "stores.csv", "holidays_events.csv")
OPTIONAL_FILES: tuple[str, ...] = ("transactions.csv", "oil.csv", "test.csv")
#: Frame name -> file, in the order they enter :attr:`FavoritaData.version`.
FRAMES: dict[str, str] = {
    "train": "train.csv",
    "items": "items.csv",
    "stores": "stores.csv",
    "holidays": "holidays_events.csv",
    "transactions": "transactions.csv",
    "oil": "oil.csv",
    "test": "test.csv",
}
#: Bumped when the loaded representation changes, so old versions cannot collide with new ones.
FORMAT_VERSION = 1

_TRAIN_COLUMNS = ["date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"]
_COUNT_BLOCK = 16 << 20


# ---------------------------------------------------------------------------------- containers


@dataclass(eq=False)
class FavoritaData:
    """The loaded selection of the Favorita files.

    ``train`` has columns ``date`` (``datetime64[ns]``), ``store_nbr``, ``item_nbr`` (``int64``),
    ``unit_sales`` (``float64``) and ``onpromotion`` (nullable ``boolean``). ``version`` is a
    sha256 hex digest of the loaded content and the selection (window, stores): the same files
    and arguments give the same version on any run. ``source`` says where it came from.
    """

    train: pd.DataFrame
    items: pd.DataFrame
    stores: pd.DataFrame
    holidays: pd.DataFrame
    transactions: pd.DataFrame
    oil: pd.DataFrame
    test: pd.DataFrame | None
    version: str
    source: dict[str, Any]

    def frames(self) -> dict[str, pd.DataFrame | None]:
        """Name -> frame, in :data:`FRAMES` order."""
        return {name: getattr(self, name) for name in FRAMES}

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={'None' if v is None else len(v)}" for k, v in self.frames().items())
        return f"FavoritaData(version={self.version[:12]}…, {sizes})"


@dataclass
class CleanReport:
    """What :func:`clean` changed (counts of rows unless said otherwise)."""

    rows_in: int = 0
    rows_out: int = 0
    unknown_items: int = 0  # rows dropped: item_nbr not in items.csv
    unknown_stores: int = 0  # rows dropped: store_nbr not in stores.csv
    onpromotion_missing: int = 0  # rows whose empty onpromotion became False
    duplicate_rows: int = 0  # rows merged away: same (date, store_nbr, item_nbr)
    negative_sales: int = 0  # rows with negative unit_sales (returns) clipped to 0
    negative_units: float = 0.0  # units those rows returned, in total (a positive number)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


# ---------------------------------------------------------------------------------- arguments


def _as_day(value: Any, name: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} must be a date like 2017-08-15 (got {value!r})") from exc
    if ts is pd.NaT:
        raise ValueError(f"{name} must be a date like 2017-08-15 (got {value!r})")
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return ts.normalize()


def _as_stores(stores: int | Iterable[int] | None) -> np.ndarray | None:
    if stores is None:
        return None
    values = [stores] if isinstance(stores, (int, np.integer)) else list(stores)
    try:
        arr = np.array(sorted({int(v) for v in values}), dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"stores must be store numbers (got {stores!r})") from exc
    if arr.size == 0:
        raise ValueError("stores must name at least one store (got an empty selection)")
    return arr


def _day_text(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%d")


# ------------------------------------------------------------------------------------ reading


def _read_options(schema: FileSchema) -> dict[str, Any]:
    """read_csv options: numbers parsed by the C parser (empty = NaN); text read as category."""
    return {
        "dtype": {c.name: "category" for c in schema.columns if c.textual},
        "keep_default_na": False,
        "na_values": {c.name: [""] for c in schema.columns if not c.textual},
        "engine": "c",
        "encoding": "utf-8",
    }


@contextlib.contextmanager
def _mixed_types_expected() -> Iterator[None]:
    """A bad value deep in a chunk makes pandas' low-memory parser return that column as mixed
    numbers and strings, with a DtypeWarning. Validation handles such columns (and reports the
    bad cell), so the warning is noise here. (``low_memory=False`` avoids it but reads slower.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.DtypeWarning)
        yield


def _read_header(fh: BinaryIO, file: str) -> tuple[list[str], int]:
    """Column names of the header line and the byte offset where the data starts."""
    line = fh.readline()
    if not line.strip():
        raise DataValidationError([ValidationIssue(file, None, 1, "required column", "file is empty (no header line)")])
    text = line.decode("utf-8-sig").rstrip("\r\n")
    names = next(csv.reader([text]))
    return [n.strip() for n in names], fh.tell()


def _empty(schema: FileSchema, columns: list[str] | None = None) -> pd.DataFrame:
    """A frame with no rows and the dtypes :func:`validate_frame` gives."""
    names = columns or [c.name for c in schema.columns if c.required]
    raw = pd.DataFrame({n: pd.Series([], dtype="category" if schema.column(n).textual else "float64") for n in names})
    return validate_frame(raw, schema.name, schema=schema)


def read_table(path: str | os.PathLike[str], file: str | None = None, *, max_errors: int = MAX_ERRORS) -> pd.DataFrame:
    """Read and validate one whole Favorita file (not for ``train.csv``; see :func:`load`).

    ``file`` is the schema to use (defaults to the path's file name).
    """
    path = Path(path)
    file = file or path.name
    schema = SCHEMAS[file]
    with open(path, "rb") as fh:
        header, _ = _read_header(fh, file)
        check_columns(header, file, schema)
        fh.seek(0)
        try:
            with _mixed_types_expected():
                raw = pd.read_csv(fh, **_read_options(schema))
        except pd.errors.ParserError as exc:
            raise parser_error(exc, file) from None
    return validate_frame(raw, file, first_line=2, max_errors=max_errors, schema=schema)


def _count_lines(fh: BinaryIO, offset: int) -> int:
    """1-based line number of the line starting at byte ``offset``."""
    fh.seek(0)
    newlines, left = 0, offset
    while left > 0:
        block = fh.read(min(_COUNT_BLOCK, left))
        if not block:
            break
        newlines += block.count(b"\n")
        left -= len(block)
    return newlines + 1


def _seek_date(fh: BinaryIO, target: bytes, begin: int, size: int, date_idx: int) -> int:
    """Byte offset of the first line whose date is >= ``target`` (``size`` when none is).

    Bisects the file's bytes; relies on the file being sorted by date (as the real one is).
    """

    def line_at(pos: int) -> tuple[int, bytes | None]:
        if pos <= begin:
            fh.seek(begin)
        else:
            fh.seek(pos - 1)
            fh.readline()
        start = fh.tell()
        line = fh.readline()
        if not line.strip():
            return start, None
        fields = line.split(b",", date_idx + 1)
        return start, (fields[date_idx].strip().strip(b'"') if len(fields) > date_idx else b"")

    def at_or_after(pos: int) -> bool:
        value = line_at(pos)[1]
        return value is None or value >= target

    if at_or_after(begin):
        return begin
    lo, hi = begin, size
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at_or_after(mid):
            hi = mid
        else:
            lo = mid
    return line_at(hi)[0]


def _stream_train(
    path: Path,
    *,
    start: pd.Timestamp | None,
    end: pd.Timestamp | None,
    stores: np.ndarray | None,
    chunksize: int,
    progress: bool,
    max_errors: int,
    known: dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Stream ``train.csv``: validate each chunk, keep the rows in the window and stores.

    ``known`` maps a column (``item_nbr``, ``store_nbr``) to the ids its reference table holds: a row
    naming another id fails validation (rule ``known item`` / ``known store``) — joined silently it
    would borrow another item's perishable flag.
    """
    from tqdm.auto import tqdm

    file = "train.csv"
    schema = SCHEMAS[file]
    size = path.stat().st_size
    lo = None if start is None else np.datetime64(start.to_datetime64(), "ns")
    hi = None if end is None else np.datetime64(end.to_datetime64(), "ns")
    stats: dict[str, Any] = {"rows_read": 0, "chunks": 0, "stopped_early": False}
    pieces: list[pd.DataFrame] = []
    with open(path, "rb") as fh:
        header, begin = _read_header(fh, file)
        check_columns(header, file, schema)
        offset, first_line = begin, 2
        if start is not None:
            offset = _seek_date(fh, _day_text(start).encode(), begin, size, header.index("date"))
            if offset > begin:
                first_line = _count_lines(fh, offset)
        stats["first_line"] = first_line
        stats["skipped_bytes"] = offset - begin
        usecols = [c for c in header if c in _TRAIN_COLUMNS]
        fh.seek(offset)
        bar = tqdm(total=size, initial=offset, unit="B", unit_scale=True, desc=file, disable=not progress, leave=False)
        line, previous = first_line, None
        reader = pd.read_csv(
            fh, header=None, names=header, usecols=usecols, chunksize=chunksize, **_read_options(schema)
        )
        try:
            with _mixed_types_expected():
                for raw in reader:
                    typed = validate_frame(raw, file, first_line=line, max_errors=max_errors, schema=schema)
                    dates = typed["date"].to_numpy()
                    check_sorted_dates(dates, file, first_line=line, previous=previous)
                    if known:
                        _check_known_ids(typed, known, file, first_line=line, max_errors=max_errors)
                    stats["rows_read"] += len(typed)
                    stats["chunks"] += 1
                    line += len(raw)
                    if not len(typed):
                        continue
                    previous = dates[-1]
                    keep = np.ones(len(typed), dtype=bool)
                    if lo is not None:
                        keep &= dates >= lo
                    if hi is not None:
                        keep &= dates <= hi
                    if stores is not None:
                        keep &= np.isin(typed["store_nbr"].to_numpy(), stores)
                    pieces.append(typed if keep.all() else typed[keep])
                    bar.update(max(0, fh.tell() - bar.n))
                    if hi is not None and dates[-1] > hi:
                        stats["stopped_early"] = True
                        break
        except pd.errors.ParserError as exc:
            raise parser_error(exc, file, stream_first_line=first_line) from None
        finally:
            reader.close()
            bar.close()
    frame = pd.concat(pieces, ignore_index=True) if pieces else _empty(schema, _TRAIN_COLUMNS)
    return frame[_TRAIN_COLUMNS], stats


_REFERENCE = {"item_nbr": ("items.csv", "known item"), "store_nbr": ("stores.csv", "known store")}


def _check_known_ids(
    frame: pd.DataFrame, known: dict[str, np.ndarray], file: str, *, first_line: int, max_errors: int
) -> None:
    """Raise :class:`DataValidationError` for rows whose ids are not in their reference tables."""
    issues: list[ValidationIssue] = []
    total = 0
    for column, ids in known.items():
        values = frame[column].to_numpy()
        bad = np.flatnonzero(~np.isin(values, ids))
        total += len(bad)
        table, rule = _REFERENCE[column]
        for pos in bad[:max_errors].tolist():
            issues.append(
                ValidationIssue(file, column, first_line + pos, rule, f"{values[pos]} is not in {table}", None)
            )
    if issues:
        issues.sort(key=lambda i: i.line or 0)
        raise DataValidationError(issues[:max_errors], total=total)


# -------------------------------------------------------------------------------------- version


def _canonical(values: pd.Series) -> np.ndarray:
    """A numpy form of a column that hashes the same whatever pandas' storage choices."""
    dtype = values.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return values.to_numpy(dtype="datetime64[ns]").view(np.int64)
    if isinstance(dtype, pd.BooleanDtype):
        return values.astype("Int8").to_numpy(dtype=np.int8, na_value=-1)
    if pd.api.types.is_bool_dtype(dtype):
        return values.to_numpy(dtype=np.uint8)
    if pd.api.types.is_numeric_dtype(dtype):
        return values.to_numpy()
    return values.astype(object).to_numpy(dtype=object, na_value="\x00<NA>")


def _version(frames: dict[str, pd.DataFrame | None], params: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT_VERSION, **params}, sort_keys=True).encode())
    for name in FRAMES:
        frame = frames.get(name)
        if frame is None:
            digest.update(f"\n{name}:none".encode())
            continue
        digest.update(f"\n{name}:{len(frame)}:{','.join(map(str, frame.columns))}".encode())
        for column in frame.columns:
            hashed = pd.util.hash_array(_canonical(frame[column]))
            digest.update(hashed.tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- load


def load(
    data_dir: str | os.PathLike[str],
    *,
    start: Any = None,
    end: Any = None,
    stores: int | Iterable[int] | None = None,
    chunksize: int = 1_000_000,
    progress: bool = True,
    max_errors: int = MAX_ERRORS,
) -> FavoritaData:
    """Load the Favorita files in ``data_dir``, ``train.csv`` streamed.

    ``start``/``end`` (inclusive; anything ``pd.Timestamp`` reads) bound the days of ``train``
    and ``transactions``; ``stores`` (a number or several) selects stores in ``train``,
    ``transactions`` and ``test``. ``chunksize`` rows of ``train.csv`` are read at a time,
    with a progress bar over the file's bytes when ``progress``.

    Raises ``FileNotFoundError`` naming missing required files, :class:`DataValidationError`
    for a file that breaks its schema, ``ValueError`` for bad arguments or unknown stores.
    """
    t0 = time.perf_counter()
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Favorita data folder {str(root)!r} does not exist")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Favorita data folder {str(root)!r} is missing required file(s): {', '.join(missing)} "
            "(extract the Kaggle archives, e.g. train.csv.7z, or run `python -m cloud.data.synth` for synthetic data)"
        )
    lo, hi = _as_day(start, "start"), _as_day(end, "end")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"start ({_day_text(lo)}) is after end ({_day_text(hi)})")
    if chunksize < 1:
        raise ValueError(f"chunksize must be >= 1 (got {chunksize})")
    chosen = _as_stores(stores)

    items = read_table(root / "items.csv", max_errors=max_errors)
    store_table = read_table(root / "stores.csv", max_errors=max_errors)
    holidays = read_table(root / "holidays_events.csv", max_errors=max_errors)
    if chosen is not None:
        unknown = np.setdiff1d(chosen, store_table["store_nbr"].to_numpy())
        if unknown.size:
            raise ValueError(f"stores {unknown.tolist()} are not in stores.csv (it has {len(store_table)} stores)")

    absent: list[str] = []
    optional: dict[str, pd.DataFrame | None] = {}
    for name, file in (("transactions", "transactions.csv"), ("oil", "oil.csv"), ("test", "test.csv")):
        if (root / file).is_file():
            optional[name] = read_table(root / file, max_errors=max_errors)
        else:
            absent.append(file)
            if name == "test":
                logger.info("%s has no test.csv; FavoritaData.test is None", root)
                optional[name] = None
            else:
                logger.warning("%s has no %s; using an empty table", root, file)
                optional[name] = _empty(SCHEMAS[file])

    train, stats = _stream_train(
        root / "train.csv",
        start=lo,
        end=hi,
        stores=chosen,
        chunksize=chunksize,
        progress=progress,
        max_errors=max_errors,
        known={"item_nbr": items["item_nbr"].to_numpy(), "store_nbr": store_table["store_nbr"].to_numpy()},
    )

    transactions = optional["transactions"]
    assert transactions is not None
    keep = np.ones(len(transactions), dtype=bool)
    tdates = transactions["date"].to_numpy()
    if lo is not None:
        keep &= tdates >= np.datetime64(lo.to_datetime64(), "ns")
    if hi is not None:
        keep &= tdates <= np.datetime64(hi.to_datetime64(), "ns")
    if chosen is not None:
        keep &= np.isin(transactions["store_nbr"].to_numpy(), chosen)
    transactions = transactions[keep].reset_index(drop=True)
    test = optional["test"]
    if test is not None and chosen is not None:
        test = test[np.isin(test["store_nbr"].to_numpy(), chosen)].reset_index(drop=True)
    oil = optional["oil"]
    assert oil is not None

    frames: dict[str, pd.DataFrame | None] = {
        "train": train,
        "items": items,
        "stores": store_table,
        "holidays": holidays,
        "transactions": transactions,
        "oil": oil,
        "test": test,
    }
    params = {"start": _day_text(lo), "end": _day_text(hi), "stores": None if chosen is None else chosen.tolist()}
    version = _version(frames, params)
    dates = train["date"]
    source: dict[str, Any] = {
        "data_dir": str(root.resolve()),
        "window": {"start": params["start"], "end": params["end"]},
        "stores": params["stores"],
        "rows": {name: (None if frame is None else len(frame)) for name, frame in frames.items()},
        "files": {
            file: {"path": str((root / file).resolve()), "bytes": (root / file).stat().st_size}
            for file in REQUIRED_FILES + OPTIONAL_FILES
            if (root / file).is_file()
        },
        "missing": absent,
        "train_dates": None if train.empty else [_day_text(dates.iloc[0]), _day_text(dates.iloc[-1])],
        "train_rows_read": stats["rows_read"],
        "train_first_line": stats["first_line"],
        "train_stopped_early": stats["stopped_early"],
    }
    logger.info(
        "loaded Favorita data from %s: %d train rows (%d read) in %.1f s, version %s",
        root,
        len(train),
        stats["rows_read"],
        time.perf_counter() - t0,
        version[:12],
    )
    return FavoritaData(version=version, source=source, **frames)  # type: ignore[arg-type]


def load_test(data_dir: str | os.PathLike[str], *, stores: int | Iterable[int] | None = None) -> pd.DataFrame:
    """Read and validate ``test.csv`` (the forecast horizon), optionally for some stores only."""
    path = Path(data_dir) / "test.csv"
    if not path.is_file():
        raise FileNotFoundError(f"Favorita data folder {str(Path(data_dir))!r} has no test.csv")
    test = read_table(path)
    chosen = _as_stores(stores)
    if chosen is not None:
        test = test[np.isin(test["store_nbr"].to_numpy(), chosen)].reset_index(drop=True)
    return test


# ---------------------------------------------------------------------------------------- clean


def _ids(table: pd.DataFrame | Iterable[int] | None, column: str) -> np.ndarray | None:
    if table is None:
        return None
    if isinstance(table, pd.DataFrame):
        return table[column].to_numpy(dtype=np.int64)
    return np.asarray(list(table), dtype=np.int64)


def _row_keys(frame: pd.DataFrame) -> np.ndarray | pd.DataFrame:
    """One int64 per (date, store_nbr, item_nbr) when the numbers fit, else the three columns."""
    days = frame["date"].to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype(np.int64)
    store = frame["store_nbr"].to_numpy(dtype=np.int64)
    item = frame["item_nbr"].to_numpy(dtype=np.int64)
    if len(frame) == 0 or (
        store.min() >= 0 and store.max() < 1 << 16 and item.min() >= 0 and item.max() < 1 << 24
        and days.min() >= 0 and days.max() < 1 << 23
    ):  # fmt: skip
        return (days << 40) | (store << 24) | item
    return frame[["date", "store_nbr", "item_nbr"]]


def clean(
    train: pd.DataFrame,
    *,
    items: pd.DataFrame | Iterable[int] | None = None,
    stores: pd.DataFrame | Iterable[int] | None = None,
    duplicates: Literal["sum", "first"] = "sum",
) -> tuple[pd.DataFrame, CleanReport]:
    """The clean-up of the CD4ML lecture; returns a new frame and what changed.

    In order: rows of items/stores not in ``items``/``stores`` (frames or id lists; skipped when
    ``None``) are dropped; an empty ``onpromotion`` becomes False; rows repeating a
    (date, store_nbr, item_nbr) are merged (``"sum"``: sales summed, promotion if any row had
    it; ``"first"``: the first row kept); negative ``unit_sales`` (returns) are clipped to 0.
    Row order is kept (first occurrence). The input is not modified.
    """
    if duplicates not in ("sum", "first"):
        raise ValueError(f"duplicates must be 'sum' or 'first' (got {duplicates!r})")
    report = CleanReport(rows_in=len(train))
    frame = train.reset_index(drop=True)

    item_ids, store_ids = _ids(items, "item_nbr"), _ids(stores, "store_nbr")
    drop = np.zeros(len(frame), dtype=bool)
    if item_ids is not None:
        bad = ~np.isin(frame["item_nbr"].to_numpy(), item_ids)
        report.unknown_items = int(bad.sum())
        drop |= bad
    if store_ids is not None:
        bad = ~np.isin(frame["store_nbr"].to_numpy(), store_ids)
        report.unknown_stores = int(bad.sum())
        drop |= bad
    if drop.any():
        frame = frame[~drop].reset_index(drop=True)
    else:
        frame = frame.copy()

    if "onpromotion" in frame.columns:
        promo = frame["onpromotion"].astype("boolean")
        report.onpromotion_missing = int(promo.isna().sum())
        frame["onpromotion"] = promo.fillna(False)

    keys = _row_keys(frame)
    dup = (pd.Series(keys).duplicated() if isinstance(keys, np.ndarray) else keys.duplicated()).to_numpy()
    report.duplicate_rows = int(dup.sum())
    if report.duplicate_rows:
        if duplicates == "first":
            frame = frame[~dup].reset_index(drop=True)
        else:
            group = pd.factorize(keys if isinstance(keys, np.ndarray) else pd.MultiIndex.from_frame(keys))[0]
            agg: dict[str, Any] = {c: "first" for c in frame.columns}
            agg["unit_sales"] = "sum"
            if "onpromotion" in agg:
                agg["onpromotion"] = "any"
            merged = frame.groupby(group, sort=True).agg(agg)
            if "onpromotion" in merged.columns:
                merged["onpromotion"] = merged["onpromotion"].astype("boolean")
            frame = merged.reset_index(drop=True)[list(frame.columns)]

    sales = frame["unit_sales"].to_numpy(dtype=np.float64)
    negative = sales < 0
    report.negative_sales = int(negative.sum())
    report.negative_units = float(-sales[negative].sum())
    if report.negative_sales:
        frame["unit_sales"] = np.where(negative, 0.0, sales)
    report.rows_out = len(frame)
    if report.rows_out != report.rows_in or report.negative_sales or report.onpromotion_missing:
        logger.info("clean: %s", report.as_dict())
    return frame, report


# ----------------------------------------------------------------------------------- daily grid


def daily_grid(train: pd.DataFrame, start: Any = None, end: Any = None) -> pd.DataFrame:
    """Every (store_nbr, item_nbr) pair seen in ``train`` x every day in ``[start, end]``.

    Days without a row get ``unit_sales`` 0.0 and ``onpromotion`` False (a missing row in the
    Favorita data means no sales). Repeated (date, store, item) rows are summed. ``start``/``end``
    default to the first/last day of ``train``. Columns: ``date`` (``datetime64[ns]``),
    ``store_nbr``, ``item_nbr`` (``int64``), ``unit_sales`` (``float64``), ``onpromotion``
    (``bool``); sorted by store_nbr, item_nbr, date.
    """
    columns = ["date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"]
    store = train["store_nbr"].to_numpy(dtype=np.int64)
    item = train["item_nbr"].to_numpy(dtype=np.int64)
    day = pd.to_datetime(train["date"]).to_numpy(dtype="datetime64[ns]").astype("datetime64[D]")
    lo, hi = _as_day(start, "start"), _as_day(end, "end")
    if len(train) == 0 and (lo is None or hi is None):
        dtypes = ["datetime64[ns]", "int64", "int64", "float64", "bool"]
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in zip(columns, dtypes, strict=True)})
    first = day.min() if lo is None else np.datetime64(lo.date(), "D")
    last = day.max() if hi is None else np.datetime64(hi.date(), "D")
    if first > last:
        raise ValueError(f"start ({first}) is after end ({last})")
    if len(store) and (store.min() < 0 or item.min() < 0 or store.max() >= 1 << 31 or item.max() >= 1 << 32):
        raise ValueError("store_nbr and item_nbr must be non-negative and below 2**31 / 2**32")

    n_days = int((last - first).astype(np.int64)) + 1
    key = (store << 32) | item
    pairs = np.unique(key)
    offset = (day - first).astype(np.int64)
    inside = (offset >= 0) & (offset < n_days)
    cell = np.searchsorted(pairs, key[inside]) * n_days + offset[inside]
    n_cells = len(pairs) * n_days
    sales = np.bincount(cell, weights=train["unit_sales"].to_numpy(dtype=np.float64)[inside], minlength=n_cells)
    promo = np.zeros(n_cells, dtype=bool)
    if "onpromotion" in train.columns:
        flags = train["onpromotion"].astype("boolean").to_numpy(dtype=bool, na_value=False)[inside]
        promo[cell[flags]] = True
    dates = np.arange(first, last + 1).astype("datetime64[ns]")
    return pd.DataFrame(
        {
            "date": np.tile(dates, len(pairs)),
            "store_nbr": np.repeat(pairs >> 32, n_days),
            "item_nbr": np.repeat(pairs & 0xFFFFFFFF, n_days),
            "unit_sales": sales,
            "onpromotion": promo,
        },
        copy=False,  # fresh arrays: no need to copy them into consolidated blocks
    )

"""cloud.data.validate: every error names the file, the column, the CSV line and the rule."""

from __future__ import annotations

import io
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloud.data import loader as data, synth
from cloud.data.validate import SCHEMAS, DataValidationError, check_sorted_dates, validate_frame


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("favorita-valid")
    synth.generate(out, stores=2, items=6, days=60, seed=1)
    return out


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    """A private copy to corrupt."""
    dst = tmp_path / "data"
    shutil.copytree(pristine, dst)
    return dst


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


def _set_field(path: Path, line: int, column: str, value: str) -> str:
    """Put ``value`` in ``column`` on 1-based ``line``; returns the old value."""
    lines = _lines(path)
    header = lines[0].split(",")
    fields = lines[line - 1].split(",")
    old = fields[header.index(column)]
    fields[header.index(column)] = value
    lines[line - 1] = ",".join(fields)
    path.write_text("\n".join(lines), encoding="utf-8")
    return old


def _frame(file: str, text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def _where(err: DataValidationError) -> tuple:
    return (err.file, err.column, err.line, err.rule, err.value)


def _load_error(folder: Path, **kw) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        data.load(folder, progress=False, **kw)
    return info.value


def test_pristine_synthetic_data_validates(pristine: Path) -> None:
    fav = data.load(pristine, progress=False)
    assert len(fav.train) > 100


def test_bad_date_in_a_later_chunk(folder: Path) -> None:
    train = folder / "train.csv"
    _set_field(train, 137, "date", "2017-02-30")
    err = _load_error(folder, chunksize=50)
    assert (err.file, err.column, err.line, err.rule, err.value) == ("train.csv", "date", 137, "date", "2017-02-30")
    assert str(err).startswith("train.csv line 137, column date: must be a date YYYY-MM-DD (got '2017-02-30')")


def test_date_must_be_iso(folder: Path) -> None:
    _set_field(folder / "holidays_events.csv", 3, "date", "01/02/2016")
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule) == ("holidays_events.csv", "date", 3, "date")


def test_non_numeric_unit_sales(folder: Path) -> None:
    _set_field(folder / "train.csv", 12, "unit_sales", "abc")
    err = _load_error(folder, chunksize=1000)
    assert str(err) == "train.csv line 12, column unit_sales: must be a finite number (got 'abc')"
    assert (err.column, err.line, err.rule, err.value) == ("unit_sales", 12, "finite number", "abc")
    assert err.errors[0].message == str(err)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1.2.3"])
def test_unit_sales_must_be_finite(folder: Path, bad: str) -> None:
    _set_field(folder / "train.csv", 5, "unit_sales", bad)
    err = _load_error(folder)
    assert (err.line, err.rule, err.value) == (5, "finite number", bad)


def test_missing_column(folder: Path) -> None:
    items = pd.read_csv(folder / "items.csv").drop(columns=["perishable"])
    items.to_csv(folder / "items.csv", index=False)
    err = _load_error(folder)
    assert _where(err) == ("items.csv", "perishable", 1, "required column", None)
    assert "items.csv line 1, column perishable" in str(err)


def test_missing_column_in_train(folder: Path) -> None:
    train = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False).drop(columns=["unit_sales"])
    train.to_csv(folder / "train.csv", index=False)
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule) == ("train.csv", "unit_sales", 1, "required column")


@pytest.mark.parametrize("bad", ["2", "yes", "-1"])
def test_bad_perishable(folder: Path, bad: str) -> None:
    _set_field(folder / "items.csv", 4, "perishable", bad)
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule, err.value) == ("items.csv", "perishable", 4, "0 or 1", bad)


def test_empty_store_nbr_is_a_null(folder: Path) -> None:
    _set_field(folder / "train.csv", 7, "store_nbr", "")
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule, err.value) == ("train.csv", "store_nbr", 7, "not null", None)
    assert str(err) == "train.csv line 7, column store_nbr: must not be empty"


def test_nan_store_nbr(folder: Path) -> None:
    _set_field(folder / "train.csv", 8, "store_nbr", "NaN")
    err = _load_error(folder)
    assert (err.column, err.line, err.rule, err.value) == ("store_nbr", 8, "positive integer", "NaN")


@pytest.mark.parametrize("bad", ["0", "-3", "1.5", "x"])
def test_item_nbr_positive_integer(folder: Path, bad: str) -> None:
    _set_field(folder / "train.csv", 9, "item_nbr", bad)
    err = _load_error(folder)
    assert (err.column, err.line, err.rule, err.value) == ("item_nbr", 9, "positive integer", bad)


def test_bad_store_type_and_cluster(folder: Path) -> None:
    _set_field(folder / "stores.csv", 2, "type", "F")
    _set_field(folder / "stores.csv", 3, "cluster", "0")
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule, err.value) == ("stores.csv", "type", 2, "allowed values", "F")
    assert "must be one of A, B, C, D, E" in str(err)
    found = [(e.column, e.line, e.rule) for e in err.errors]
    assert found == [("type", 2, "allowed values"), ("cluster", 3, "positive integer")]


def test_bad_holiday_type_locale_and_transferred(folder: Path) -> None:
    _set_field(folder / "holidays_events.csv", 2, "type", "Fiesta")
    _set_field(folder / "holidays_events.csv", 3, "locale", "Planet")
    _set_field(folder / "holidays_events.csv", 4, "transferred", "maybe")
    err = _load_error(folder)
    found = [(e.file, e.column, e.line, e.rule, e.value) for e in err.errors]
    assert found == [
        ("holidays_events.csv", "type", 2, "allowed values", "Fiesta"),
        ("holidays_events.csv", "locale", 3, "allowed values", "Planet"),
        ("holidays_events.csv", "transferred", 4, "boolean", "maybe"),
    ]
    assert err.total == 3


def test_bad_onpromotion(folder: Path) -> None:
    _set_field(folder / "train.csv", 30, "onpromotion", "Yes")
    err = _load_error(folder)
    assert (err.column, err.line, err.rule, err.value) == ("onpromotion", 30, "boolean", "Yes")


def test_oil_may_be_empty_but_not_text(folder: Path) -> None:
    _set_field(folder / "oil.csv", 2, "dcoilwtico", "")
    data.load(folder, progress=False)  # an empty price is allowed
    _set_field(folder / "oil.csv", 3, "dcoilwtico", "n/a")
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule) == ("oil.csv", "dcoilwtico", 3, "finite number")


def test_duplicate_store_numbers(folder: Path) -> None:
    _set_field(folder / "stores.csv", 3, "store_nbr", "1")
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule, err.value) == ("stores.csv", "store_nbr", 3, "unique", "1")
    assert "already on line 2" in str(err)


def test_many_errors_are_collected_and_capped(folder: Path) -> None:
    lines = _lines(folder / "train.csv")
    for k in range(2, 40):
        fields = lines[k - 1].split(",")
        fields[4] = "oops"
        lines[k - 1] = ",".join(fields)
    (folder / "train.csv").write_text("\n".join(lines))
    err = _load_error(folder, max_errors=5)
    assert err.total == 38 and len(err.errors) == 5
    assert [e.line for e in err.errors] == [2, 3, 4, 5, 6]
    assert "37 more problem(s)" in str(err) and "only the first 5" in str(err)


def test_unsorted_train(folder: Path) -> None:
    lines = _lines(folder / "train.csv")
    n = len(lines) - 1
    lines[n - 1] = lines[n - 1].replace(lines[n - 1].split(",")[1], "2010-01-01")
    (folder / "train.csv").write_text("\n".join(lines))
    err = _load_error(folder, chunksize=40)
    assert _where(err) == ("train.csv", "date", n, "sorted by date", "2010-01-01")


def test_malformed_csv_line(folder: Path) -> None:
    lines = _lines(folder / "test.csv")
    lines[99] += ",extra"
    (folder / "test.csv").write_text("\n".join(lines))
    err = _load_error(folder)
    assert (err.file, err.column, err.line, err.rule) == ("test.csv", None, 100, "csv format")
    assert "test.csv line 100: is not well-formed CSV" in str(err)


def test_error_lines_are_file_lines_when_reading_starts_mid_file(folder: Path) -> None:
    train = folder / "train.csv"
    raw = pd.read_csv(train, dtype=str, keep_default_na=False)
    start = sorted(raw["date"].unique())[20]
    first = int(np.flatnonzero(raw["date"].to_numpy() == start)[0]) + 2  # file line of the window's first row
    target = first + 17
    _set_field(train, target, "unit_sales", "zzz")
    err = _load_error(folder, start=start, chunksize=10)
    assert (err.line, err.column, err.value) == (target, "unit_sales", "zzz")


def test_missing_required_file_is_named(folder: Path) -> None:
    (folder / "stores.csv").unlink()
    with pytest.raises(FileNotFoundError, match="stores.csv"):
        data.load(folder, progress=False)


def test_empty_file(folder: Path) -> None:
    (folder / "items.csv").write_text("")
    err = _load_error(folder)
    assert (err.file, err.line) == ("items.csv", 1)


def test_validate_frame_types_and_order() -> None:
    raw = _frame(
        "train.csv",
        "onpromotion,unit_sales,item_nbr,store_nbr,date,id,extra\n"
        ",1.5,103520,1,2013-01-01,0,x\nTrue,-2,103520,1,2014-05-01,1,y\nfalse,3,103521,2,2014-05-02,2,z\n",
    )
    typed = validate_frame(raw, "train.csv")
    assert list(typed.columns) == ["id", "date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"]
    assert typed["date"].dtype == "datetime64[ns]"
    assert typed["store_nbr"].dtype == np.int64 and typed["item_nbr"].dtype == np.int64
    assert typed["unit_sales"].dtype == np.float64
    assert isinstance(typed["onpromotion"].dtype, pd.BooleanDtype)
    assert typed["onpromotion"].isna().tolist() == [True, False, False]
    assert typed["onpromotion"].tolist()[1:] == [True, False]


def test_validate_frame_reports_first_line_offset() -> None:
    raw = _frame("oil.csv", "date,dcoilwtico\n2017-01-02,52.1\n2017-01-03,abc\n")
    with pytest.raises(DataValidationError) as info:
        validate_frame(raw, "oil.csv", first_line=1001)
    assert (info.value.line, info.value.column) == (1002, "dcoilwtico")


def test_check_sorted_dates_against_previous_chunk() -> None:
    dates = np.array(["2017-01-02", "2017-01-03"], dtype="datetime64[ns]")
    check_sorted_dates(dates, "train.csv", first_line=10, previous=np.datetime64("2017-01-02", "ns"))
    with pytest.raises(DataValidationError) as info:
        check_sorted_dates(dates, "train.csv", first_line=10, previous=np.datetime64("2017-01-05", "ns"))
    assert (info.value.line, info.value.rule) == (10, "sorted by date")


def test_error_survives_pickling() -> None:
    raw = _frame("stores.csv", "store_nbr,city,state,type,cluster\n1,Quito,Pichincha,Z,1\n")
    with pytest.raises(DataValidationError) as info:
        validate_frame(raw, "stores.csv")
    again = pickle.loads(pickle.dumps(info.value))
    assert _where(again) == ("stores.csv", "type", 2, "allowed values", "Z")
    assert str(again) == str(info.value)
    assert isinstance(again, ValueError)


def test_every_file_has_a_schema() -> None:
    assert set(SCHEMAS) == set(synth.FILES)


def test_validation_is_vectorised() -> None:
    n = 300_000
    raw = pd.DataFrame(
        {
            "date": np.repeat(pd.date_range("2016-01-01", periods=300).strftime("%Y-%m-%d"), n // 300),
            "store_nbr": np.arange(n) % 54 + 1,
            "item_nbr": np.arange(n) + 96995,
            "unit_sales": np.linspace(-3, 500, n),
            "onpromotion": np.where(np.arange(n) % 3 == 0, "True", "False"),
        }
    ).astype({"date": "category", "onpromotion": "category"})
    t0 = time.perf_counter()
    typed = validate_frame(raw, "train.csv")
    assert time.perf_counter() - t0 < 2.0
    assert len(typed) == n


def test_unterminated_quote_in_train_names_its_line(folder: Path) -> None:
    lines = _lines(folder / "train.csv")
    lines[149] = lines[149].replace(",True", ',"True').replace(",False", ',"False')
    (folder / "train.csv").write_text("\n".join(lines))
    err = _load_error(folder, chunksize=40)
    assert (err.file, err.line, err.rule) == ("train.csv", 150, "csv format")


@pytest.mark.filterwarnings("error")
def test_bad_value_deep_in_a_big_chunk(tmp_path: Path) -> None:
    """pandas' low-memory parsing would mix ints and strings in the column (and warn)."""
    summary = synth.generate(tmp_path, stores=10, items=100, days=60, seed=4)
    train = summary.paths["train.csv"]
    target = summary.rows["train.csv"] - 500
    _set_field(train, target, "item_nbr", "x1")
    err = _load_error(tmp_path, chunksize=1_000_000)
    assert _where(err) == ("train.csv", "item_nbr", target, "positive integer", "x1")

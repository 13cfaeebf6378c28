"""cloud.data.loader: streamed loading with window and store filters, the version hash, clean, daily grid."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloud.data import loader as data, synth
from cloud.data.validate import DataValidationError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("favorita-data")
    synth.generate(out, stores=4, items=20, days=120, seed=2)  # 2017-04-18 .. 2017-08-15
    return out


@pytest.fixture(scope="module")
def full(pristine: Path) -> data.FavoritaData:
    return data.load(pristine, progress=False)


@pytest.fixture
def folder(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(pristine, dst)
    return dst


def _train_lines(path: Path) -> int:
    return path.read_text().count("\n")  # header + rows, each ending with a newline


# ------------------------------------------------------------------------------------------ load


def test_load_types_and_tables(full: data.FavoritaData, pristine: Path) -> None:
    train = full.train
    assert list(train.columns) == ["date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"]
    assert train["date"].dtype == "datetime64[ns]"
    assert train["store_nbr"].dtype == np.int64 and train["item_nbr"].dtype == np.int64
    assert train["unit_sales"].dtype == np.float64
    assert isinstance(train["onpromotion"].dtype, pd.BooleanDtype)
    assert len(train) == _train_lines(pristine / "train.csv") - 1
    assert list(full.items.columns) == ["item_nbr", "family", "class", "perishable"]
    assert list(full.stores.columns) == ["store_nbr", "city", "state", "type", "cluster"]
    assert full.holidays["transferred"].dtype == bool
    assert full.oil["dcoilwtico"].isna().any()  # gaps stay NaN
    assert full.test is not None and len(full.test) == 16 * 4 * 20
    assert full.source["rows"]["train"] == len(train)
    assert full.source["files"]["train.csv"]["bytes"] == (pristine / "train.csv").stat().st_size
    assert full.source["train_stopped_early"] is False and full.source["train_first_line"] == 2
    assert len(full.version) == 64 and int(full.version, 16) >= 0
    assert "FavoritaData(" in repr(full)


def test_window_and_store_filter(full: data.FavoritaData, pristine: Path) -> None:
    sub = data.load(pristine, start="2017-06-01", end="2017-06-30", stores=[2, 4], progress=False)
    t = full.train
    want = t[(t["date"] >= "2017-06-01") & (t["date"] <= "2017-06-30") & t["store_nbr"].isin([2, 4])]
    pd.testing.assert_frame_equal(sub.train, want.reset_index(drop=True))
    assert set(sub.train["store_nbr"]) == {2, 4}
    assert sub.train["date"].min() >= pd.Timestamp("2017-06-01")
    assert sub.train["date"].max() <= pd.Timestamp("2017-06-30")
    assert set(sub.transactions["store_nbr"]) == {2, 4}
    assert sub.transactions["date"].between("2017-06-01", "2017-06-30").all()
    assert sub.test is not None and set(sub.test["store_nbr"]) == {2, 4}
    assert len(sub.stores) == len(full.stores) and len(sub.holidays) == len(full.holidays)  # reference tables whole
    assert sub.source["window"] == {"start": "2017-06-01", "end": "2017-06-30"} and sub.source["stores"] == [2, 4]


def test_single_store_as_int(pristine: Path) -> None:
    sub = data.load(pristine, stores=3, end="2017-05-01", progress=False)
    assert set(sub.train["store_nbr"]) == {3}


def test_small_chunks_give_the_same_result(full: data.FavoritaData, pristine: Path) -> None:
    small = data.load(pristine, chunksize=1000, progress=False)
    pd.testing.assert_frame_equal(small.train, full.train)
    assert small.version == full.version
    window = dict(start="2017-05-10", end="2017-07-03", stores=[1, 3])
    a = data.load(pristine, chunksize=7, progress=False, **window)
    b = data.load(pristine, chunksize=10_000_000, progress=False, **window)
    pd.testing.assert_frame_equal(a.train, b.train)
    assert a.version == b.version


def test_stops_reading_after_the_window(folder: Path, full: data.FavoritaData) -> None:
    train = folder / "train.csv"
    with train.open("a") as fh:  # a line that fails validation, dated after everything else
        fh.write("99999999,2099-01-01,not-a-store,1,1.0,False\n")
    with pytest.raises(DataValidationError) as info:
        data.load(folder, progress=False, chunksize=1000)
    assert (info.value.column, info.value.line) == ("store_nbr", _train_lines(train))
    sub = data.load(folder, end="2017-07-31", chunksize=1000, progress=False)
    assert sub.source["train_stopped_early"] is True
    assert sub.source["train_rows_read"] < len(full.train)
    pd.testing.assert_frame_equal(sub.train, full.train[full.train["date"] <= "2017-07-31"].reset_index(drop=True))


def test_rows_with_items_or_stores_missing_from_the_tables_fail_validation(folder: Path) -> None:
    """Issue 14: an item missing from items.csv used to pass and borrow another item's perishable flag."""
    train = folder / "train.csv"
    lines = train.read_text().split("\n")
    fields = lines[7].split(",")
    fields[3] = "424242"  # item_nbr: not in items.csv
    lines[7] = ",".join(fields)
    fields = lines[9].split(",")
    fields[2] = "77"  # store_nbr: not in stores.csv
    lines[9] = ",".join(fields)
    train.write_text("\n".join(lines))
    with pytest.raises(DataValidationError) as info:
        data.load(folder, progress=False, chunksize=1000)
    err = info.value
    assert (err.file, err.column, err.line, err.rule) == ("train.csv", "item_nbr", 8, "known item")
    assert "424242 is not in items.csv" in str(err)
    assert [(e.column, e.line, e.rule) for e in err.errors][1] == ("store_nbr", 10, "known store")


def test_start_seeks_past_earlier_lines(folder: Path, full: data.FavoritaData) -> None:
    train = folder / "train.csv"
    raw = pd.read_csv(train, dtype=str, keep_default_na=False)
    first = int(np.flatnonzero(raw["date"].to_numpy() == "2017-07-01")[0]) + 2
    lines = train.read_text().split("\n")
    fields = lines[5].split(",")
    fields[4] = "garbage"  # a bad row before the window is never read
    lines[5] = ",".join(fields)
    train.write_text("\n".join(lines))
    sub = data.load(folder, start="2017-07-01", chunksize=500, progress=False)
    assert sub.source["train_first_line"] == first
    assert sub.source["train_rows_read"] == len(raw) - (first - 2)
    pd.testing.assert_frame_equal(sub.train, full.train[full.train["date"] >= "2017-07-01"].reset_index(drop=True))
    with pytest.raises(DataValidationError):
        data.load(folder, progress=False)


def test_window_outside_the_data(pristine: Path) -> None:
    after = data.load(pristine, start="2030-01-01", progress=False)
    assert after.train.empty
    assert list(after.train.columns) == ["date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"]
    assert after.train["date"].dtype == "datetime64[ns]"
    before = data.load(pristine, end="2000-01-01", progress=False)
    assert before.train.empty and before.source["train_rows_read"] <= 1_000_000
    first_day = data.load(pristine, start="2017-04-18", end="2017-04-18", progress=False)
    assert first_day.train["date"].eq("2017-04-18").all() and len(first_day.train) > 0


def test_bad_arguments(pristine: Path) -> None:
    with pytest.raises(ValueError, match="after end"):
        data.load(pristine, start="2017-08-01", end="2017-07-01", progress=False)
    with pytest.raises(ValueError, match=r"\[99\]"):
        data.load(pristine, stores=[1, 99], progress=False)
    with pytest.raises(ValueError, match="start"):
        data.load(pristine, start="yesterday-ish", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load(pristine / "nope", progress=False)


def test_missing_required_and_optional_files(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "test.csv").unlink()
    (folder / "oil.csv").unlink()
    with caplog.at_level(logging.WARNING, logger="cloud.data.loader"):
        fav = data.load(folder, progress=False)
    assert fav.test is None
    assert fav.oil.empty and list(fav.oil.columns) == ["date", "dcoilwtico"]
    assert "oil.csv" in caplog.text
    assert set(fav.source["missing"]) == {"test.csv", "oil.csv"}
    (folder / "holidays_events.csv").unlink()
    (folder / "train.csv").unlink()
    with pytest.raises(FileNotFoundError, match="train.csv, holidays_events.csv|holidays_events.csv"):
        data.load(folder, progress=False)


def test_progress_bar_runs(pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fav = data.load(pristine, end="2017-05-01", progress=True, chunksize=500)
    assert len(fav.train) > 0
    assert "train.csv" in capsys.readouterr().err


def test_load_test(pristine: Path) -> None:
    test = data.load_test(pristine, stores=[1])
    assert set(test["store_nbr"]) == {1} and len(test) == 16 * 20
    assert list(test.columns) == ["id", "date", "store_nbr", "item_nbr", "onpromotion"]
    with pytest.raises(FileNotFoundError):
        data.load_test(pristine / "missing")


# --------------------------------------------------------------------------------------- version


def test_version_is_stable_and_tracks_content(folder: Path, full: data.FavoritaData) -> None:
    again = data.load(folder, progress=False)
    assert again.version == full.version  # same content elsewhere on disk: same version
    assert data.load(folder, stores=[1, 2], progress=False).version != full.version
    assert data.load(folder, end="2017-08-14", progress=False).version != full.version
    lines = (folder / "train.csv").read_text().split("\n")
    fields = lines[50].split(",")
    fields[4] = str(float(fields[4]) + 1.0)
    lines[50] = ",".join(fields)
    (folder / "train.csv").write_text("\n".join(lines))
    assert data.load(folder, progress=False).version != full.version


def test_version_sees_reference_tables(folder: Path, full: data.FavoritaData) -> None:
    stores = (folder / "stores.csv").read_text().replace(",Quito,", ",Quitoo,")
    (folder / "stores.csv").write_text(stores)
    assert data.load(folder, progress=False).version != full.version


# ----------------------------------------------------------------------------------------- clean


def _rows(*rows: tuple) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"])
    frame["date"] = pd.to_datetime(frame["date"])
    frame["onpromotion"] = frame["onpromotion"].astype("boolean")
    return frame


def test_clean_counts_and_fixes() -> None:
    train = _rows(
        ("2017-01-01", 1, 100, 3.0, None),
        ("2017-01-01", 1, 100, 2.0, True),  # duplicate of the row above
        ("2017-01-01", 1, 101, -2.0, False),  # a return
        ("2017-01-01", 9, 100, 1.0, False),  # unknown store
        ("2017-01-02", 1, 555, 1.0, None),  # unknown item
        ("2017-01-02", 2, 101, -0.5, None),  # a return, promotion unknown
    )
    before = train.copy()
    out, report = data.clean(train, items=pd.DataFrame({"item_nbr": [100, 101]}), stores=[1, 2])
    pd.testing.assert_frame_equal(train, before)  # input untouched
    assert report.as_dict() == {
        "rows_in": 6,
        "rows_out": 3,
        "unknown_items": 1,
        "unknown_stores": 1,
        "onpromotion_missing": 2,
        "duplicate_rows": 1,
        "negative_sales": 2,
        "negative_units": 2.5,
    }
    assert out["unit_sales"].tolist() == [5.0, 0.0, 0.0]
    assert out["onpromotion"].tolist() == [True, False, False]
    assert out["onpromotion"].isna().sum() == 0
    assert out["date"].dtype == train["date"].dtype and out["store_nbr"].dtype == np.int64


def test_clean_first_policy_and_no_tables() -> None:
    train = _rows(("2017-01-01", 1, 100, 3.0, False), ("2017-01-01", 1, 100, 2.0, True))
    out, report = data.clean(train, duplicates="first")
    assert out["unit_sales"].tolist() == [3.0] and report.duplicate_rows == 1
    assert report.unknown_items == 0 and report.unknown_stores == 0
    with pytest.raises(ValueError):
        data.clean(train, duplicates="mean")  # type: ignore[arg-type]


def test_clean_on_loaded_data(full: data.FavoritaData) -> None:
    out, report = data.clean(full.train, items=full.items, stores=full.stores)
    assert report.negative_sales == int((full.train["unit_sales"] < 0).sum()) > 0
    assert (out["unit_sales"] >= 0).all() and report.rows_out == len(full.train)
    assert report.duplicate_rows == 0 and report.onpromotion_missing == 0


# ------------------------------------------------------------------------------------ daily grid


def test_daily_grid_fills_zeros() -> None:
    train = _rows(
        ("2017-01-02", 2, 100, 4.0, True),
        ("2017-01-01", 1, 101, 1.5, None),
        ("2017-01-03", 1, 101, 2.0, False),
        ("2016-12-25", 1, 100, 7.0, False),  # outside the window: its pair still counts
    )
    grid = data.daily_grid(train, "2017-01-01", "2017-01-04")
    assert list(grid.columns) == ["date", "store_nbr", "item_nbr", "unit_sales", "onpromotion"]
    assert len(grid) == 3 * 4
    assert list(zip(grid["store_nbr"], grid["item_nbr"], strict=True))[::4] == [(1, 100), (1, 101), (2, 100)]
    assert grid["date"].dtype == "datetime64[ns]" and grid["onpromotion"].dtype == bool
    assert grid.equals(grid.sort_values(["store_nbr", "item_nbr", "date"]).reset_index(drop=True))
    by = grid.set_index(["store_nbr", "item_nbr", "date"])
    assert by.loc[(1, 101, pd.Timestamp("2017-01-01")), "unit_sales"] == 1.5
    assert by.loc[(1, 101, pd.Timestamp("2017-01-02")), "unit_sales"] == 0.0
    assert by.loc[(2, 100, pd.Timestamp("2017-01-02")), "onpromotion"]
    assert grid["unit_sales"].sum() == 7.5 and grid["onpromotion"].sum() == 1
    assert (by.loc[(1, 100), "unit_sales"] == 0).all()


def test_daily_grid_defaults_to_the_data_range(full: data.FavoritaData) -> None:
    clean, _ = data.clean(full.train)
    grid = data.daily_grid(clean)
    pairs = clean[["store_nbr", "item_nbr"]].drop_duplicates()
    n_days = (clean["date"].max() - clean["date"].min()).days + 1
    assert len(grid) == len(pairs) * n_days
    assert grid["unit_sales"].sum() == pytest.approx(clean["unit_sales"].sum())
    assert grid["onpromotion"].sum() == clean["onpromotion"].sum()
    assert (grid["unit_sales"] == 0).mean() > 0.05


def test_daily_grid_is_fast_for_many_pairs() -> None:
    import time

    rng = np.random.default_rng(0)
    n = 1_000_000
    days = pd.date_range("2016-08-16", periods=365)
    train = pd.DataFrame(
        {
            "date": days[rng.integers(0, 365, n)],
            "store_nbr": rng.integers(1, 55, n),
            "item_nbr": rng.integers(0, 600, n) + 103_520,
            "unit_sales": rng.random(n),
            "onpromotion": rng.random(n) < 0.1,
        }
    )
    t0 = time.perf_counter()
    grid = data.daily_grid(train)
    assert time.perf_counter() - t0 < 5.0
    assert len(grid) == train[["store_nbr", "item_nbr"]].drop_duplicates().shape[0] * 365


def test_daily_grid_rejects_reversed_window() -> None:
    with pytest.raises(ValueError):
        data.daily_grid(_rows(("2017-01-02", 1, 1, 1.0, False)), "2017-01-05", "2017-01-01")

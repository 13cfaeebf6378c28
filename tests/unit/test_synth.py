"""cloud.data.synth: the real files' format, determinism, and demand structure a model can learn."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cloud.data import synth

HEADERS = {
    "train.csv": "id,date,store_nbr,item_nbr,unit_sales,onpromotion",
    "test.csv": "id,date,store_nbr,item_nbr,onpromotion",
    "items.csv": "item_nbr,family,class,perishable",
    "stores.csv": "store_nbr,city,state,type,cluster",
    "holidays_events.csv": "date,type,locale,locale_name,description,transferred",
    "transactions.csv": "date,store_nbr,transactions",
    "oil.csv": "date,dcoilwtico",
}


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> synth.SynthSummary:
    """The default size: 5 stores x 50 items x 540 days ending 2017-08-15."""
    return synth.generate(tmp_path_factory.mktemp("synth-default"))


def _raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def train(default: synth.SynthSummary) -> pd.DataFrame:
    frame = pd.read_csv(default.paths["train.csv"], keep_default_na=False, dtype={"onpromotion": str})
    frame["date"] = pd.to_datetime(frame["date"], format="%Y-%m-%d")
    return frame


def test_writes_all_seven_files_with_the_real_headers(default: synth.SynthSummary) -> None:
    assert set(default.paths) == set(HEADERS) | {synth.ORACLE_FILE}  # the seven files, and the oracle beside them
    for name, header in HEADERS.items():
        path = default.paths[name]
        assert path.parent == default.out_dir
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        assert first == header, name
        assert default.rows[name] == len(_raw(path)) > 0
    assert "\r" not in default.paths["train.csv"].read_text()[:10_000]
    assert not list(default.out_dir.glob(".*tmp"))  # no temporary files left behind


def test_summary_and_default_speed(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    summary = synth.generate(tmp_path, stores=5, items=50, days=540, seed=3)
    assert time.perf_counter() - t0 < 5.0
    assert summary.start == dt.date(2016, 2, 23) and summary.end == dt.date(2017, 8, 15)
    assert (summary.test_start, summary.test_end) == (dt.date(2017, 8, 16), dt.date(2017, 8, 31))
    assert summary.holidays_end >= dt.date(2017, 12, 31)
    text = summary.describe()
    assert "train.csv" in text and str(tmp_path) in text and str(summary) == text
    assert summary.as_dict()["rows"]["train.csv"] == summary.rows["train.csv"]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    kw = {"stores": 2, "items": 12, "days": 90}
    a = synth.generate(tmp_path / "a", seed=11, **kw)
    b = synth.generate(tmp_path / "b", seed=11, **kw)
    c = synth.generate(tmp_path / "c", seed=12, **kw)
    for name in synth.FILES:
        assert a.paths[name].read_bytes() == b.paths[name].read_bytes(), name
    assert a.paths["train.csv"].read_bytes() != c.paths["train.csv"].read_bytes()
    assert a.paths["items.csv"].read_bytes() != c.paths["items.csv"].read_bytes()


def test_rejects_bad_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stores"):
        synth.generate(tmp_path, stores=0)
    with pytest.raises(ValueError, match="days"):
        synth.generate(tmp_path, days=0)


def test_train_rows_are_non_zero_sorted_and_typed_like_the_real_file(
    default: synth.SynthSummary, train: pd.DataFrame
) -> None:
    assert (train["unit_sales"] != 0).all()
    assert train["id"].tolist() == list(range(len(train)))
    assert train["date"].is_monotonic_increasing
    keys = train[["date", "store_nbr", "item_nbr"]]
    assert not keys.duplicated().any()
    # within a day, sorted by store then item, like the real file
    assert (keys.sort_values(["date", "store_nbr", "item_nbr"]).index == keys.index).all()
    assert train["date"].min().date() == default.start and train["date"].max().date() == default.end
    assert set(train["onpromotion"]) == {"True", "False"}  # the whole range is after 2014-04-01
    assert (train["unit_sales"] < 0).sum() > 20  # returns
    fractional = train["unit_sales"] % 1 != 0
    assert fractional.sum() > 100
    items = pd.read_csv(default.paths["items.csv"])
    weighed = items.set_index("item_nbr").loc[train.loc[fractional, "item_nbr"].unique()]
    assert (weighed["perishable"] == 1).all()  # only perishables are sold by weight
    # slow movers: some pairs sell on few days
    days_sold = train.groupby(["store_nbr", "item_nbr"]).size()
    assert days_sold.min() < 0.5 * (default.end - default.start).days


def test_unit_sales_text_looks_like_kaggle(default: synth.SynthSummary) -> None:
    values = _raw(default.paths["train.csv"])["unit_sales"]
    assert values.str.fullmatch(r"-?\d+\.\d{1,3}").all()  # "7.0", "3.459", "-1.0"
    assert (values.str.endswith(".0")).mean() > 0.5


def test_items_and_stores_look_real(default: synth.SynthSummary) -> None:
    items = pd.read_csv(default.paths["items.csv"], keep_default_na=False)
    assert items["item_nbr"].between(100_000, 999_999).all() and items["item_nbr"].is_unique
    assert items["item_nbr"].iloc[0] == 103520
    assert set(items["perishable"]) == {0, 1}
    perishable = items["family"].isin(synth.PERISHABLE_FAMILIES)
    assert (items["perishable"] == perishable.astype(int)).all()
    assert {"GROCERY I", "BEVERAGES", "PRODUCE"} <= set(items["family"])
    assert items["class"].between(1000, 9999).all()
    stores = pd.read_csv(default.paths["stores.csv"])
    assert stores["store_nbr"].tolist() == [1, 2, 3, 4, 5]
    assert set(zip(stores["city"], stores["state"], strict=True)) <= set(synth.CITIES)
    assert ("Manta", "Manabi") in set(zip(stores["city"], stores["state"], strict=True))
    assert stores["type"].isin(list("ABCDE")).all() and stores["cluster"].between(1, 17).all()


def test_quoted_family_round_trips(tmp_path: Path) -> None:
    summary = synth.generate(tmp_path, stores=1, items=15, days=20)
    text = summary.paths["items.csv"].read_text()
    assert '"LIQUOR,WINE,BEER"' in text
    assert "LIQUOR,WINE,BEER" in set(pd.read_csv(summary.paths["items.csv"])["family"])


def test_test_csv_is_every_store_item_for_16_days_after_train(default: synth.SynthSummary) -> None:
    test = pd.read_csv(default.paths["test.csv"], keep_default_na=False, dtype={"onpromotion": str})
    assert len(test) == 16 * default.stores * default.items
    dates = pd.to_datetime(test["date"]).dt.date
    assert dates.min() == default.end + dt.timedelta(days=1) and dates.nunique() == 16
    assert test["id"].iloc[0] == default.rows["train.csv"]  # ids continue train's, as in Kaggle
    assert test["id"].is_monotonic_increasing
    assert set(test["onpromotion"]) <= {"True", "False"}


def test_onpromotion_empty_before_april_2014(tmp_path: Path) -> None:
    summary = synth.generate(tmp_path, stores=2, items=20, days=90, end=dt.date(2014, 5, 15))
    train = pd.read_csv(summary.paths["train.csv"], keep_default_na=False, dtype={"onpromotion": str})
    before = train["date"] < "2014-04-01"
    assert before.any() and (~before).any()
    assert (train.loc[before, "onpromotion"] == "").all()
    assert set(train.loc[~before, "onpromotion"]) == {"True", "False"}


def _daily_totals(train: pd.DataFrame) -> pd.Series:
    daily = train.groupby("date")["unit_sales"].sum()
    return daily.reindex(pd.date_range(daily.index.min(), daily.index.max()), fill_value=0.0)


def test_weekend_payday_and_promotion_lifts(train: pd.DataFrame) -> None:
    daily = _daily_totals(train)
    daily = daily[daily > 0.3 * daily.median()]  # drop closed days (Christmas, New Year)
    dow = daily.index.day_of_week
    assert daily[dow >= 5].mean() > 1.2 * daily[dow <= 3].mean()
    payday = (daily.index.day == 15) | daily.index.is_month_end
    assert daily[payday].mean() > 1.05 * daily[~payday].mean()
    sold = train[train["unit_sales"] > 0]
    promo = sold[sold["onpromotion"] == "True"]["unit_sales"].mean()
    plain = sold[sold["onpromotion"] == "False"]["unit_sales"].mean()
    assert promo > 1.3 * plain
    share = (train["onpromotion"] == "True").mean()
    assert 0.03 < share < 0.2


def test_closed_on_christmas(train: pd.DataFrame) -> None:
    assert not (train["date"].dt.strftime("%m-%d") == "12-25").any()


def test_earthquake_spike_and_events(default: synth.SynthSummary, train: pd.DataFrame) -> None:
    holidays = pd.read_csv(default.paths["holidays_events.csv"])
    quake = holidays[holidays["description"].str.startswith("Terremoto Manabi")]
    assert len(quake) == 31
    assert quake["date"].min() == "2016-04-16" and quake["date"].max() == "2016-05-16"
    assert (quake["type"] == "Event").all() and (quake["locale"] == "National").all()
    daily = _daily_totals(train)
    week_after = daily["2016-04-16":"2016-04-22"].mean()
    weeks_before = daily["2016-03-19":"2016-04-08"].mean()
    assert week_after > 1.2 * weeks_before


def test_holidays_have_transfers_locales_and_reach_past_the_end(default: synth.SynthSummary) -> None:
    h = _raw(default.paths["holidays_events.csv"])
    assert set(h["type"]) <= {"Holiday", "Transfer", "Additional", "Bridge", "Work Day", "Event"}
    assert set(h["locale"]) == {"National", "Regional", "Local"}
    assert set(h["transferred"]) == {"True", "False"}
    assert h["date"].is_monotonic_increasing
    assert h["date"].max() >= "2017-12-25"  # the future has holidays too
    national = h[h["locale"] == "National"]
    assert (national["locale_name"] == "Ecuador").all()
    assert {"Navidad", "Primer dia del ano", "Carnaval", "Viernes Santo", "Dia del Trabajo"} <= set(h["description"])
    # a transferred holiday: transferred=True on its day, a Transfer row on the day it is celebrated
    moved = h[h["transferred"] == "True"]
    transfers = h[h["type"] == "Transfer"]
    assert len(moved) >= 2 and len(moved) == len(transfers)
    assert set("Traslado " + moved["description"]) == set(transfers["description"])
    assert {"2017-05-24", "2017-08-10"} <= set(moved["date"])
    # regional and local rows name states and cities of the stores
    stores = pd.read_csv(default.paths["stores.csv"])
    assert set(stores["city"]) <= set(h.loc[h["locale"] == "Local", "locale_name"])
    assert "Santo Domingo de los Tsachilas" in set(h.loc[h["locale"] == "Regional", "locale_name"])


def test_holiday_table_bridges_and_easter() -> None:
    assert synth.easter(2016) == dt.date(2016, 3, 27) and synth.easter(2017) == dt.date(2017, 4, 16)
    table = synth.holiday_table(dt.date(2012, 1, 1), dt.date(2013, 1, 31))
    bridge = table[table["type"] == "Bridge"]
    assert dt.date(2012, 12, 24) in set(bridge["date"])  # Navidad 2012 was a Tuesday
    work = table[table["type"] == "Work Day"]
    assert any(d.weekday() == 5 for d in work["date"])


def test_transactions_and_oil(default: synth.SynthSummary) -> None:
    tx = pd.read_csv(default.paths["transactions.csv"])
    assert (tx["transactions"] > 0).all()
    assert tx["date"].min() == str(default.start) and tx["date"].max() == str(default.end)
    oil = pd.read_csv(default.paths["oil.csv"], keep_default_na=False)
    days = pd.to_datetime(oil["date"])
    assert (days.dt.day_of_week < 5).all()  # weekdays only
    assert default.test_end - dt.timedelta(days=3) <= days.max().date() <= default.test_end  # covers the test days
    missing = oil["dcoilwtico"] == ""
    assert 0 < missing.sum() < 0.2 * len(oil)
    prices = oil.loc[~missing, "dcoilwtico"].astype(float)
    assert prices.between(10, 200).all()


def test_cli_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeship.cli import main

    assert main(["data", "synth", "--out", str(tmp_path), "--stores", "1", "--items", "3", "--days", "20", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"train.csv"' in out
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "--out", str(tmp_path), "--days", "0"])
    assert exc.value.code == 2
    assert "--days: must be a positive integer" in capsys.readouterr().err


def test_larger_sizes_stay_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    summary = synth.generate(tmp_path, stores=10, items=200, days=120, seed=5)
    assert time.perf_counter() - t0 < 10
    assert summary.rows["train.csv"] > 50_000
    assert np.isfinite(pd.read_csv(summary.paths["train.csv"])["unit_sales"]).all()


# ------------------------------------------------------------------------------ hard profile, oracle


def test_hard_profile_and_oracle(tmp_path) -> None:
    """Issue 14: the hard world has what separates models, and oracle.csv scores what is achievable."""
    import numpy as np
    import pandas as pd

    from cloud.data import synth as sy

    out = tmp_path / "hard"
    summary = sy.generate(out, stores=6, items=40, days=400, seed=3, difficulty="hard")
    assert summary.difficulty == "hard" and sy.ORACLE_FILE in summary.rows
    train = pd.read_csv(out / "train.csv", dtype={"onpromotion": str}, keep_default_na=False)
    dates = pd.to_datetime(train["date"])
    # early days carry empty onpromotion, later ones never do
    empty = train["onpromotion"] == ""
    assert empty.any() and dates[empty].max() < dates[~empty].min()
    # items introduced late, and a store that opened late
    first_item_day = dates.groupby(train["item_nbr"]).min()
    first_store_day = dates.groupby(train["store_nbr"]).min()
    assert (first_item_day > dates.min() + pd.Timedelta(days=30)).any()
    assert (first_store_day > dates.min() + pd.Timedelta(days=30)).any()
    # the oracle covers every carried pair on the last train days and the test days, with true flags
    oracle = pd.read_csv(out / sy.ORACLE_FILE)
    days = pd.to_datetime(oracle["date"]).unique()
    assert len(days) == sy.ORACLE_TRAIN_DAYS + sy.TEST_DAYS
    assert set(oracle["onpromotion"].unique()) <= {True, False} and oracle["onpromotion"].any()
    # scored against what was sold, the oracle beats a 14-day mean by a wide margin and is unbiased
    last = oracle[pd.to_datetime(oracle["date"]) <= pd.Timestamp(summary.end)].merge(
        train[["date", "store_nbr", "item_nbr", "unit_sales"]], how="left", on=["date", "store_nbr", "item_nbr"]
    )
    actual = np.log1p(np.maximum(last["unit_sales"].fillna(0.0).to_numpy(), 0))
    err_oracle = np.sqrt(np.mean((actual - last["oracle_log"].to_numpy()) ** 2))
    assert abs(np.mean(actual - last["oracle_log"].to_numpy())) < 0.05
    # the easy profile keeps today's world (no empty flags in 400 days) and also writes its oracle
    easy = sy.generate(tmp_path / "easy", stores=3, items=10, days=120, seed=3)
    assert easy.difficulty == "easy" and (tmp_path / "easy" / sy.ORACLE_FILE).exists()
    assert err_oracle > 0
    with __import__("pytest").raises(ValueError, match="difficulty"):
        sy.generate(tmp_path / "x", difficulty="medium")

"""The pure feature encoding, against vectors worked out by hand."""

import numpy as np
import pytest

from models.contract import CAT_FEATURES, LAG_WINDOW_DAYS, NUM_FEATURES, PredictRequest, RequestRow
from models.features import SalesState, Tables, encode, lag_features, target_inverse, target_transform

STORES = [
    {"store_nbr": 1, "city": "Quito", "state": "Pichincha", "type": "D", "cluster": 13},
    {"store_nbr": 24, "city": "Guayaquil", "state": "Guayas", "type": "A", "cluster": 1},
]
ITEMS = [
    {"item_nbr": 103520, "family": "GROCERY I", "class": 1028, "perishable": 0},
    {"item_nbr": 105574, "family": "PRODUCE", "class": 2002, "perishable": 1},
]
HOLIDAYS = [
    {"date": "2017-08-10", "type": "Holiday", "locale": "National", "locale_name": "Ecuador", "transferred": True},
    {"date": "2017-08-11", "type": "Transfer", "locale": "National", "locale_name": "Ecuador", "transferred": False},
    {"date": "2017-08-12", "type": "Holiday", "locale": "Regional", "locale_name": "Guayas", "transferred": False},
    {"date": "2017-08-13", "type": "Holiday", "locale": "Local", "locale_name": "Quito", "transferred": False},
    {"date": "2017-08-19", "type": "Work Day", "locale": "National", "locale_name": "Ecuador", "transferred": False},
]


@pytest.fixture()
def tables():
    return Tables.from_records(stores=STORES, items=ITEMS, holidays=HOLIDAYS)


def _enc(tables, dates, stores, items, promo, windows, end="2017-08-09"):
    return encode(
        tables,
        dates=np.array(dates, "M8[D]"),
        store_nbr=np.array(stores),
        item_nbr=np.array(items),
        onpromotion=np.array(promo),
        windows=np.asarray(windows, np.float32),
        window_end=np.datetime64(end),
    )


def test_contract_shapes():
    assert len(CAT_FEATURES) == 8 and len(NUM_FEATURES) == 22 and LAG_WINDOW_DAYS == 56


def test_golden_vector_categorical(tables):
    w = np.zeros((2, LAG_WINDOW_DAYS))
    enc = _enc(tables, ["2017-08-10", "2017-08-14"], [24, 1], [105574, 103520], [True, False], w)
    # vocabularies are sorted: type [A, D], cluster ["1","13"], city [Guayaquil, Quito],
    # family [GROCERY I, PRODUCE], class ["1028","2002"]; 0 is "unknown", so indexes are 1-based.
    # 2017-08-10 is a Thursday (dow 3 → 4), 2017-08-14 a Monday (dow 0 → 1).
    assert enc.cat.dtype == np.int32
    assert enc.cat.tolist() == [
        [2, 2, 2, 2, 1, 1, 1, 4],
        [1, 1, 1, 1, 2, 2, 2, 1],
    ]


def test_golden_vector_calendar_and_holidays(tables):
    dates = ["2017-08-10", "2017-08-11", "2017-08-12", "2017-08-12", "2017-08-13", "2017-08-13", "2017-08-15", "2017-08-31", "2017-08-19"]
    stores = [1, 1, 24, 1, 1, 24, 1, 1, 1]
    w = np.zeros((len(dates), LAG_WINDOW_DAYS))
    enc = _enc(tables, dates, stores, [103520] * len(dates), [False] * len(dates), w)
    national, regional, local, workday = (enc.num[:, NUM_FEATURES.index(k)].tolist() for k in ("holiday_national", "holiday_regional", "holiday_local", "workday"))
    assert national == [0, 1, 0, 0, 0, 0, 0, 0, 0]  # transferred away from the 10th, celebrated on the 11th
    assert regional == [0, 0, 1, 0, 0, 0, 0, 0, 0]  # Guayas holiday: only the Guayaquil store
    assert local == [0, 0, 0, 0, 1, 0, 0, 0, 0]  # Quito holiday: only the Quito store
    assert workday == [0, 0, 0, 0, 0, 0, 0, 0, 1]
    payday = enc.num[:, NUM_FEATURES.index("payday")].tolist()
    assert payday == [0, 0, 0, 0, 0, 0, 1, 1, 0]  # the 15th and the last day of the month
    dom = enc.num[:, NUM_FEATURES.index("day_of_month")]
    assert dom.tolist() == pytest.approx([10 / 31, 11 / 31, 12 / 31, 12 / 31, 13 / 31, 13 / 31, 15 / 31, 1.0, 19 / 31])


def test_golden_vector_promotion_and_perishable(tables):
    w = np.zeros((2, LAG_WINDOW_DAYS))
    enc = _enc(tables, ["2017-08-10", "2017-08-10"], [1, 1], [105574, 103520], [True, False], w)
    assert enc.num[:, 0].tolist() == [1.0, 0.0]
    assert enc.num[:, 1].tolist() == [1.0, 0.0]


def test_lag_features_hand_computed():
    window = np.zeros((1, LAG_WINDOW_DAYS))
    window[0, -7:] = [1, 2, 3, 4, 5, 6, 7]  # last week
    window[0, -28:-7] = 0.5
    # offset 1: same weekday as target = 7, 14, ... days before it = positions -7, -14, ..., -56
    lags = lag_features(window, np.array([1]))[0]
    assert lags[0] == pytest.approx(4.0)  # mean of 1..7
    assert lags[1] == pytest.approx((28 + 21 * 0.5) / 28)
    assert lags[2] == pytest.approx(0.0)  # no zero days in the last 28
    assert lags[3] == pytest.approx((1 + 0.5 * 3) / 8)  # positions -7 (=1), -14, -21, -28 (=0.5), older 0
    # offset 3: the window's last same-weekday day is 4 days before its end → position -5 (=3)
    lags3 = lag_features(window, np.array([3]))[0]
    assert lags3[3] == pytest.approx((3 + 0.5 * 3) / 8)
    # contract v2: the further window statistics
    named = dict(zip(NUM_FEATURES[8:], lags, strict=True))
    assert named["lag_mean_3"] == pytest.approx(6.0)
    assert named["lag_mean_14"] == pytest.approx((28 + 7 * 0.5) / 14)
    assert named["lag_mean_56"] == pytest.approx((28 + 21 * 0.5) / 56)
    assert named["lag_std_28"] == pytest.approx(np.std(window[0, -28:]), rel=1e-5)
    assert named["lag_dow_mean_4"] == pytest.approx((1 + 0.5 * 3) / 4)
    assert named["lag_last"] == pytest.approx(7.0)
    assert named["lag_days_since_sale"] == pytest.approx(0.0)
    assert named["lag_slope_56"] == pytest.approx(np.polyfit(np.arange(LAG_WINDOW_DAYS), window[0], 1)[0] * 28, rel=1e-5)
    assert named["lag_mean_nonzero_28"] == pytest.approx((28 + 21 * 0.5) / 28)
    assert named["horizon"] == pytest.approx(1 / 16)
    assert dict(zip(NUM_FEATURES[8:], lags3, strict=True))["horizon"] == pytest.approx(3 / 16)
    gap = np.zeros((1, LAG_WINDOW_DAYS))
    gap[0, -10] = 2.0  # last sale 9 days before the window's end
    named_gap = dict(zip(NUM_FEATURES[8:], lag_features(gap, np.array([1]))[0], strict=True))
    assert named_gap["lag_days_since_sale"] == pytest.approx(9 / 56)
    assert named_gap["lag_mean_nonzero_28"] == pytest.approx(2.0)
    assert dict(zip(NUM_FEATURES[8:], lag_features(np.zeros((1, LAG_WINDOW_DAYS)), np.array([1]))[0], strict=True))[
        "lag_days_since_sale"
    ] == pytest.approx(1.0)


def test_unknown_store_and_item_encode_as_zero(tables):
    enc = _enc(tables, ["2017-08-10"], [99], [1], [False], np.zeros((1, LAG_WINDOW_DAYS)))
    assert enc.cat[0, :7].tolist() == [0] * 7


def test_window_must_end_before_the_date(tables):
    with pytest.raises(ValueError, match="after its lag window"):
        _enc(tables, ["2017-08-09"], [1], [103520], [False], np.zeros((1, LAG_WINDOW_DAYS)))


def test_tables_and_state_roundtrip(tables):
    again = Tables.from_json(tables.to_json())
    w = np.random.default_rng(0).random((2, LAG_WINDOW_DAYS))
    a = _enc(tables, ["2017-08-12", "2017-08-13"], [24, 1], [105574, 103520], [True, False], w)
    b = _enc(again, ["2017-08-12", "2017-08-13"], [24, 1], [105574, 103520], [True, False], w)
    assert np.array_equal(a.cat, b.cat) and np.array_equal(a.num, b.num)
    state = SalesState(np.array([1, 24]), np.array([103520, 105574]), w.astype(np.float32), np.datetime64("2017-08-09"))
    back = SalesState.from_bytes(state.to_bytes())
    assert np.array_equal(back.window, state.window) and back.end_date == state.end_date
    assert back.pair_index(np.array([24, 1, 24]), np.array([105574, 103520, 103520])).tolist() == [1, 0, -1]


def test_state_rejects_unsorted_pairs():
    with pytest.raises(ValueError, match="sorted"):
        SalesState(np.array([2, 1]), np.array([1, 1]), np.zeros((2, LAG_WINDOW_DAYS), np.float32), np.datetime64("2017-01-01"))


def test_target_transform_roundtrip():
    y = np.array([-3.0, 0.0, 1.5, 100.0])
    assert target_inverse(target_transform(y)).tolist() == pytest.approx([0.0, 0.0, 1.5, 100.0], rel=1e-6)


@pytest.mark.parametrize(
    "row,field,kind",
    [
        ({"store_nbr": 1, "item_nbr": 2}, "date", "missing"),
        ({"date": "2017-8-1", "store_nbr": 1, "item_nbr": 2}, "date", "value_error"),
        ({"date": 1502841600, "store_nbr": 1, "item_nbr": 2}, "date", "value_error"),
        ({"date": "2017-08-16", "store_nbr": "1", "item_nbr": 2}, "store_nbr", "int_type"),
        ({"date": "2017-08-16", "store_nbr": float("nan"), "item_nbr": 2}, "store_nbr", "int_type"),
        ({"date": "2017-08-16", "store_nbr": 1, "item_nbr": -2}, "item_nbr", "greater_than"),
        ({"date": "2017-08-16", "store_nbr": 1, "item_nbr": 2, "onpromotion": "yes"}, "onpromotion", "bool_type"),
        ({"date": "2017-08-16", "store_nbr": 1, "item_nbr": 2, "colour": "red"}, "colour", "extra_forbidden"),
    ],
)
def test_request_row_rules(row, field, kind):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        PredictRequest.model_validate({"instances": [row]})
    err = info.value.errors()[0]
    assert err["loc"] == ("instances", 0, field) and err["type"] == kind


def test_request_row_accepts_the_documented_example():
    row = RequestRow.model_validate({"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False})
    assert row.date.isoformat() == "2017-08-16"

"""edge.serving.online_state: lag windows kept current from reported sales, validated, persisted, re-based."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from edge.serving.errors import RequestError
from edge.serving.online_state import OnlineState, OnlineStateConfig, SalesRecord, merge_state
from edge.serving.predictor import Predictor
from tests.bundle_kit import PAIRS, STATE_END, build_bundle, sample_state
from models.contract import LAG_WINDOW_DAYS as W
from models.features import SalesState, encode, target_transform

END = np.datetime64(STATE_END, "D")
DAY = np.timedelta64(1, "D")


def day(offset: int) -> str:
    return str(END + offset * DAY)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, keys):
    path, _ = build_bundle(tmp_path_factory.mktemp("b") / "m-v1.bundle.tar", keys[0], horizon_days=14)
    return path


@pytest.fixture()
def predictor(bundle, keys):
    with Predictor.open(bundle, trust=[keys[1]], runtime="fake") as p:
        yield p


def sales(*rows):
    return {"sales": [{"date": d, "store_nbr": s, "item_nbr": i, "unit_sales": u} for d, s, i, u in rows]}


def _record(end, *cells):
    """A record whose pairs' stores end on ``end``; cells are (store, item, column, value)."""
    keys = np.array(sorted({s << 32 | i for s, i, _, _ in cells}), np.int64)
    rec, _ = SalesRecord.empty().advanced({int(k >> 32): end for k in keys}, keys)
    for s, i, col, v in cells:
        r = int(np.searchsorted(rec.keys, s << 32 | i))
        rec.window[r, col], rec.reported[r, col] = v, True
    return rec


def test_merge_reported_beats_bundle_beats_zero_fill():
    b = sample_state()
    # store 1 reported day E+1 for one item and corrected E-2
    rec = _record(END + DAY, (1, 103520, W - 1, 2.0), (1, 103520, W - 4, 1.5))
    view = merge_state(b, rec)
    assert view.end_date == END + DAY and len(view.store_nbr) == len(PAIRS)
    p = view.pair_index(np.array([1]), np.array([103520]))[0]
    p2 = view.pair_index(np.array([1]), np.array([105574]))[0]
    q = view.pair_index(np.array([2]), np.array([103520]))[0]
    expected_p = np.append(b.window[p, 1:], 2.0)
    expected_p[W - 4] = 1.5
    np.testing.assert_array_equal(view.window[p], expected_p.astype(np.float32))
    # the same store's other item sold nothing that day (a store reports all it sold)
    np.testing.assert_array_equal(view.window[p2], np.append(b.window[p2, 1:], 0.0).astype(np.float32))
    # other stores did not report: their windows stay the bundle's, ending on its end
    np.testing.assert_array_equal(view.window[q], b.window[q])
    assert view.row_end(np.array([p, q])).tolist() == [END + DAY, END]
    # an older record changes only what it reported
    old = _record(END - 3 * DAY, (2, 103520, W - 1, 0.5))
    assert merge_state(b, old) is not b
    view = merge_state(b, old)
    assert view.end_date == END and view.pair_end is None
    assert view.window[q, W - 4] == np.float32(0.5) and view.window[q, W - 1] == b.window[q, W - 1]


def test_partial_reports_advance_only_the_reporting_store(tmp_path, predictor):
    """Regression (issue 14): 5 days of sales for store 1 moved store 2's forecast; 51 days made it 0."""
    online = OnlineState(tmp_path / "sales.npz", OnlineStateConfig(flush_interval_s=0))
    online.adopt(predictor)
    other = {"date": day(3), "store_nbr": 2, "item_nbr": 103520}
    before_enc = predictor.encode([other])
    before = predictor.predict([other])
    for k in range(1, 6):
        online.apply(sales((day(k), 1, 103520, 7.0), (day(k), 1, 105574, 2.0)), predictor)
    np.testing.assert_array_equal(predictor.encode([other]).num, before_enc.num)
    assert predictor.predict([other]) == before
    for k in range(6, 52, 5):  # far ahead for store 1 only
        online.apply(sales((day(k), 1, 103520, 7.0)), predictor)
    np.testing.assert_array_equal(predictor.encode([other]).num, before_enc.num)
    assert predictor.predict([other]) == before
    # store 1 is served from its own reports, its horizon moved; store 2's horizon did not
    assert len(predictor.predict([{"date": day(52), "store_nbr": 1, "item_nbr": 103520}])) == 1
    with pytest.raises(RequestError) as err:
        predictor.predict([{**other, "date": day(20)}])
    assert err.value.details[0]["rule"] == "horizon"
    s = predictor.sales_state
    p = s.pair_index(np.array([1]), np.array([103520]))[0]
    assert s.row_end(np.array([p]))[0] == END + 51 * DAY
    assert s.window[p, W - 1] == target_transform(np.array([7.0]))[0] and s.window[p, W - 2] == 0


def test_reported_sales_move_the_lag_features_and_the_horizon(tmp_path, predictor):
    online = OnlineState(tmp_path / "sales.npz", OnlineStateConfig(flush_interval_s=0))
    online.adopt(predictor)
    row = {"date": day(15), "store_nbr": 1, "item_nbr": 103520}
    with pytest.raises(RequestError) as err:
        predictor.predict([row])  # 15 days out: beyond the 14-day horizon
    assert err.value.details[0]["rule"] == "horizon"
    before = predictor.sales_state
    units = [7.0, 0.0, 3.0, 11.0]
    ack = online.apply(sales(*[(day(1), s, i, u) for (s, i), u in zip(PAIRS, units, strict=True)]), predictor)
    assert ack.accepted == 4 and ack.end_date == day(1) and ack.pairs == len(PAIRS)
    state = predictor.sales_state
    assert state.end_date == END + DAY
    expected = np.concatenate([before.window[:, 1:], target_transform(np.array(units))[:, None]], axis=1)
    np.testing.assert_array_equal(state.window, expected)
    assert len(predictor.predict([row])) == 1  # the horizon moved with the known sales
    with pytest.raises(RequestError) as err:
        predictor.predict([{**row, "date": day(1)}])  # now a day with known sales
    assert err.value.details[0]["rule"] == "horizon"
    # the encoding uses the new window, exactly as the trainer would
    enc = predictor.encode([{**row, "date": day(2)}])
    ref = encode(
        predictor.tables,
        dates=np.array([day(2)], "M8[D]"),
        store_nbr=np.array([1]),
        item_nbr=np.array([103520]),
        onpromotion=np.array([False]),
        windows=expected[:1],
        window_end=END + DAY,
    )
    np.testing.assert_array_equal(enc.num, ref.num)
    np.testing.assert_array_equal(enc.cat, ref.cat)


def test_gaps_are_zero_filled_and_resending_replaces(tmp_path, predictor):
    online = OnlineState(tmp_path / "sales.npz", OnlineStateConfig(flush_interval_s=0))
    online.adopt(predictor)
    before = predictor.sales_state.window.copy()
    online.apply(sales((day(3), 1, 103520, 5.0)), predictor)
    online.apply(sales((day(3), 1, 103520, 9.0)), predictor)  # re-sent: replaces
    w = predictor.sales_state.window
    p = predictor.sales_state.pair_index(np.array([1]), np.array([103520]))[0]
    np.testing.assert_array_equal(w[p, : W - 3], before[p, 3:])
    assert w[p, W - 3] == 0 and w[p, W - 2] == 0  # days E+1, E+2 without reports sold nothing
    assert w[p, W - 1] == target_transform(np.array([9.0]))[0]
    assert np.all(w[1, W - 3 :] == 0)  # the store's other item: zero-filled too
    np.testing.assert_array_equal(w[2:], before[2:])  # other stores: untouched


def test_a_new_pair_becomes_predictable(tmp_path, predictor):
    online = OnlineState(tmp_path / "sales.npz", OnlineStateConfig(flush_interval_s=0))
    online.adopt(predictor)
    row = {"date": day(2), "store_nbr": 2, "item_nbr": 105574}  # store 2 never sold item 105574
    with pytest.raises(RequestError, match="known_pair"):
        predictor.predict([row])
    online.apply(sales((day(1), 2, 105574, 4.0)), predictor)
    assert len(predictor.predict([row])) == 1


@pytest.mark.parametrize(
    "body, field, rule, status",
    [
        (sales((day(1), 999, 103520, 1.0)), "sales[0].store_nbr", "known_store", 422),
        (sales((day(1), 1, 424242, 1.0)), "sales[0].item_nbr", "known_item", 422),
        (sales((day(-W), 1, 103520, 1.0)), "sales[0].date", "window", 422),
        (sales((day(W + 1), 1, 103520, 1.0)), "sales[0].date", "date_advance", 422),
        (sales((day(1), 1, 103520, 1.0), (day(1), 1, 103520, 2.0)), "sales[1]", "duplicate", 422),
        (sales((day(1), 1, 103520, float("nan"))), "sales[0].unit_sales", "finite", 422),
        (sales(("2017-8-16", 1, 103520, 1.0)), "sales[0].date", "date_format", 422),
        (sales((day(1), 1, 103520, "3")), "sales[0].unit_sales", "float_type", 422),
        ({"sales": []}, "sales", "min_rows", 422),
        ({"sales": [{"date": day(1), "store_nbr": 1, "item_nbr": 103520}]}, "sales[0].unit_sales", "required", 422),
        ({"rows": []}, "sales", "required", 422),
        ({"sales": [{}] * 10_001}, "sales", "max_rows", 413),
        ([1, 2], "body", "object_type", 422),
    ],
)
def test_bad_reports_name_field_and_rule_and_change_nothing(tmp_path, predictor, body, field, rule, status):
    online = OnlineState(tmp_path / "sales.npz", OnlineStateConfig(flush_interval_s=0))
    online.adopt(predictor)
    good = (day(1), 1, 103520, 1.0)
    if isinstance(body, dict) and body.get("sales") and len(body["sales"]) == 1 and rule in ("known_store",):
        body = {"sales": [sales(good)["sales"][0], *body["sales"]]}  # a good row beside it: all or nothing
        field = field.replace("sales[0]", "sales[1]")
    state = predictor.sales_state
    with pytest.raises(RequestError) as err:
        online.apply(body, predictor)
    assert err.value.status == status
    assert (err.value.details[0]["field"], err.value.details[0]["rule"]) == (field, rule)
    assert predictor.sales_state is state and online.record is None


def test_persisted_atomically_and_restored(tmp_path, predictor, bundle, keys):
    path = tmp_path / "online" / "sales.npz"
    online = OnlineState(path, OnlineStateConfig(flush_interval_s=0.05))
    online.start()
    online.adopt(predictor)
    online.apply(sales((day(1), 1, 103520, 5.0), (day(2), 3, 999001, 2.0)), predictor)
    view = predictor.sales_state
    online.stop()
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["sales.npz"]  # no temp files
    restored = OnlineState(path)
    restored.start()
    with Predictor.open(bundle, trust=[keys[1]], runtime="fake") as fresh:
        assert fresh.sales_state.end_date == END
        restored.adopt(fresh)
        assert fresh.sales_state.end_date == END + 2 * DAY
        np.testing.assert_array_equal(fresh.sales_state.window, view.window)
    restored.stop()
    path.write_bytes(b"not an npz")  # damaged: logged, ignored
    broken = OnlineState(path)
    broken.load()
    assert broken.record is None


def test_a_new_bundle_is_rebased_on_reported_sales(tmp_path, keys, predictor):
    online = OnlineState(tmp_path / "sales.npz", OnlineStateConfig(flush_interval_s=0))
    online.adopt(predictor)
    online.apply(sales((day(1), 1, 103520, 20.0), (day(3), 1, 103520, 30.0)), predictor)
    # v2 was trained on data through E+2: its own values win for its days, except reported ones
    base = sample_state(seed=5)
    newer = SalesState(base.store_nbr, base.item_nbr, base.window, END + 2 * DAY)
    path, _ = build_bundle(tmp_path / "m-v2.bundle.tar", keys[0], version=2, state=newer, horizon_days=14)
    with Predictor.open(path, trust=[keys[1]], runtime="fake") as v2:
        online.adopt(v2)
        s = v2.sales_state
        assert s.end_date == END + 3 * DAY  # the reported E+3 is newer than the bundle
        p = s.pair_index(np.array([1]), np.array([103520]))[0]
        q = s.pair_index(np.array([2]), np.array([103520]))[0]
        t = target_transform(np.array([20.0, 30.0]))
        assert s.window[p, W - 1] == t[1] and s.window[p, W - 3] == t[0]  # reported days
        assert s.window[p, W - 2] == newer.window[p, W - 1]  # E+2 from the bundle
        np.testing.assert_array_equal(s.window[q], newer.window[q])  # store 2 reported nothing
        assert s.row_end(np.array([q]))[0] == END + 2 * DAY
        # a later report reaches both the live model and the new one
        online.apply(sales((day(4), 2, 103520, 1.0)), predictor)
        assert v2.sales_state.end_date == END + 4 * DAY and predictor.sales_state.end_date == END + 4 * DAY
        assert v2.sales_state.window[q, W - 1] == target_transform(np.array([1.0]))[0]


def test_apply_is_fast_enough_for_a_big_shop(tmp_path, predictor):
    online = OnlineState(tmp_path / "sales.npz", OnlineStateConfig(flush_interval_s=0))
    online.adopt(predictor)
    started = dt.datetime.now()
    for k in range(1, 20):
        online.apply(sales(*[(day(k), s, i, 1.0) for s, i in PAIRS]), predictor)
    assert (dt.datetime.now() - started).total_seconds() < 5
    assert predictor.sales_state.end_date == END + 19 * DAY

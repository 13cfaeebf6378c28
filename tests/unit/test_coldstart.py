"""Cold start: every store×item of the catalogue gets a forecast; pairs without history are served from
the trainer's fallback windows through the same encoding, marked per row and counted."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pandas as pd
import pytest

from cloud.data import loader as favorita
from cloud.data.synth import generate
from cloud.training.prepare import SalesMatrix, calibrate_fallback, prepare
from edge.agent import Agent
from edge.config import AgentConfig
from edge.monitoring.metrics import AgentMetrics
from edge.serving.errors import RequestError
from edge.serving.predictor import Predictor
from models.bundle import BundleError
from models.coldstart import LEVELS, Fallback
from models.contract import LAG_WINDOW_DAYS
from models.features import SalesState, Tables, encode
from models.signing import generate_keypair
from tests.bundle_kit import HOLIDAYS, ITEMS, STORES, build_bundle, real_models, sample_state

#: The sample catalogue plus a store of type D without any sales and a DAIRY item that never sold.
CATALOGUE_STORES = [*STORES, {"store_nbr": 4, "city": "Quito", "state": "Pichincha", "type": "D", "cluster": 13}]
CATALOGUE_ITEMS = [*ITEMS, {"item_nbr": 999002, "family": "DAIRY", "class": 2124, "perishable": 1}]
DAY = "2017-08-17"  # two days after the sample state's end


def tables() -> Tables:
    return Tables.from_records(stores=CATALOGUE_STORES, items=CATALOGUE_ITEMS, holidays=HOLIDAYS)


def rows_of(pairs: list[tuple[int, int]], day: str = DAY) -> list[dict]:
    return [{"date": day, "store_nbr": s, "item_nbr": i, "onpromotion": False} for s, i in pairs]


#: (pair, level, rows of sample_state() whose mean window it gets)
COLD = [
    ((2, 105574), "item", [1]),  # item sold at store 1 only
    ((3, 103520), "item", [0, 2]),  # mean across the two stores that sold it
    ((1, 999002), "family_store", [1]),  # new DAIRY item; store 1 sells DAIRY
    ((4, 999002), "family_store_type", [1]),  # store 4 has no history; type D (store 1) sells DAIRY
    ((2, 999002), "global", [0, 1, 2, 3]),  # type A sells no DAIRY
]


def test_fallback_levels_windows_and_round_trip():
    t, state = tables(), sample_state()
    fb = Fallback.build(t, state.store_nbr, state.item_nbr, state.window, state.end_date)
    for (store, item), level, rows in COLD:
        got_level, window = fb.lookup(t, store, item)
        assert got_level == level, (store, item)
        np.testing.assert_allclose(window, state.window[rows].mean(axis=0), rtol=1e-6)
    assert set(LEVELS) == {"item", "family_store", "family_store_type", "global"}
    back = Fallback.from_bytes(fb.to_bytes())
    assert back.end_date == fb.end_date
    np.testing.assert_array_equal(back.family_type_window, fb.family_type_window)
    np.testing.assert_array_equal(back.item_nbr, fb.item_nbr)
    with pytest.raises(ValueError, match="at least one pair"):
        Fallback.build(t, np.array([], np.int64), np.array([], np.int64), np.zeros((0, LAG_WINDOW_DAYS)), state.end_date)


def test_level_scale_is_served_round_trips_and_defaults_for_older_bundles():
    t, state = tables(), sample_state()
    scale = np.array([0.5, 0.25, 0.2, 0.1], np.float32)
    plain = Fallback.build(t, state.store_nbr, state.item_nbr, state.window, state.end_date)
    fb = plain.with_scale(scale)
    for (store, item), level, _ in COLD:
        np.testing.assert_allclose(fb.lookup(t, store, item)[1], plain.lookup(t, store, item)[1] * scale[LEVELS.index(level)], rtol=1e-6)
    np.testing.assert_array_equal(Fallback.from_bytes(fb.to_bytes()).level_scale, scale)
    # a fallback.npz written before the factors existed: the group means as they are
    buf = io.BytesIO()
    old = {f: getattr(plain, f) for f in ("item_nbr", "item_window", "family_store_key", "family_store_window",
                                          "family_type_key", "family_type_window", "global_window")}  # fmt: skip
    np.savez_compressed(buf, end_date=np.array(str(plain.end_date)), **old)
    np.testing.assert_array_equal(Fallback.from_bytes(buf.getvalue()).level_scale, np.ones(len(LEVELS)))
    for bad in ([1.0, 1.0], [1.0, -0.1, 1.0, 1.0], [np.nan, 1, 1, 1]):
        with pytest.raises(ValueError, match="level_scale"):
            plain.with_scale(np.array(bad, np.float32))


def test_calibration_learns_what_cold_pairs_went_on_to_sell():
    """Two established DAIRY pairs sell log1p = 2 every day; a new DAIRY item launches on day 150 at
    store 1 and sells the same. At a cut before the launch the new pair is cold (family_store level,
    window mean 2): its factor is the share of the 16 days after each cut on which it sold."""
    t = tables()
    n_days, launch, horizon = 200, 150, 16
    log = np.full((3, n_days), 2.0, np.float32)
    log[2, :launch] = 0.0
    m = SalesMatrix(
        store_nbr=np.array([1, 1, 1]), item_nbr=np.array([103520, 105574, 999002]),
        dates=np.datetime64("2017-01-01") + np.arange(n_days), log_sales=log, sales=np.expm1(log).astype(np.float64),
        promo=np.zeros((3, n_days), np.float32),
    )  # fmt: skip
    t = Tables.from_records(
        stores=CATALOGUE_STORES,
        items=[{**i, "family": "DAIRY"} for i in CATALOGUE_ITEMS],
        holidays=HOLIDAYS,
    )
    scale, info = calibrate_fallback(t, m, first_cut=100, last_cut=180, horizon=horizon, min_rows=1)
    cuts = [c for c in range(180, 99, -7)]
    cold = [c for c in cuts if c <= launch]  # no sale before the cut
    expected = np.mean([np.clip(c + horizon - launch, 0, horizon) / horizon for c in cold])
    k = LEVELS.index("family_store")
    assert info["levels"]["family_store"]["cold_pairs_seen"] == len(cold)
    assert scale[k] == pytest.approx(expected, rel=1e-5)
    # levels without evidence take the pooled factor (here the same); without any cold pair: 1.0
    assert scale[LEVELS.index("global")] == pytest.approx(expected, rel=1e-5)
    ones, _ = calibrate_fallback(t, m, first_cut=151, last_cut=180, horizon=horizon, min_rows=1)
    np.testing.assert_array_equal(ones, np.ones(len(LEVELS)))


@pytest.fixture(scope="module")
def cold_bundle(tmp_path_factory):
    private, public = generate_keypair()
    out = tmp_path_factory.mktemp("cold")
    path, _ = build_bundle(out / "m-v1.bundle.tar", private, tables=tables(), fallback=True, horizon_days=16)
    plain, _ = build_bundle(out / "m-v2.bundle.tar", private, version=2, tables=tables(), horizon_days=16)
    return path, plain, public


def test_cold_pairs_encode_like_the_trainer_with_the_fallback_window(cold_bundle):
    path, _, public = cold_bundle
    t, state = tables(), sample_state()
    fb = Fallback.build(t, state.store_nbr, state.item_nbr, state.window, state.end_date)
    pairs = [(1, 103520)] + [p for p, _, _ in COLD]
    with Predictor.open(path, trust=[public], runtime="fake") as model:
        prepared = model.prepare(rows_of(pairs))
        assert prepared.fallback == (None, *[level for _, level, _ in COLD])
        windows = np.stack([state.window[0]] + [fb.lookup(t, s, i)[1] for s, i in pairs[1:]])
        expected = encode(
            t,
            dates=np.array([DAY] * len(pairs), "M8[D]"),
            store_nbr=np.array([s for s, _ in pairs]),
            item_nbr=np.array([i for _, i in pairs]),
            onpromotion=np.zeros(len(pairs), bool),
            windows=windows,
            window_end=state.end_date,
        )
        np.testing.assert_array_equal(prepared.cat, expected.cat)
        np.testing.assert_array_equal(prepared.num, expected.num)
        assert model.prepare(rows_of([(1, 103520)])).fallback is None  # warm-only requests carry no marks
        # unknown stores and items stay 4xx; so does a cold row past the horizon
        for row, field, rule in (
            ({"store_nbr": 99, "item_nbr": 103520}, "instances[0].store_nbr", "known_store"),
            ({"store_nbr": 2, "item_nbr": 123}, "instances[0].item_nbr", "known_item"),
            ({"store_nbr": 2, "item_nbr": 999002, "date": "2017-09-30"}, "instances[0].date", "horizon"),
        ):
            with pytest.raises(RequestError) as exc:
                model.predict([{"date": DAY, "onpromotion": False, **row}])
            assert (exc.value.details[0]["field"], exc.value.details[0]["rule"]) == (field, rule)


def test_without_a_fallback_member_pairs_without_history_are_refused(cold_bundle):
    _, plain, public = cold_bundle
    with Predictor.open(plain, trust=[public], runtime="fake") as model:
        with pytest.raises(RequestError) as exc:
            model.predict(rows_of([(2, 999002)]))
    assert exc.value.details[0]["rule"] == "known_pair"


def test_a_fallback_the_manifest_names_but_does_not_list_is_refused(tmp_path):
    from cloud.training.bundle import write_bundle
    from models.bundle import unpack_bundle

    private, public = generate_keypair()
    path, manifest = build_bundle(tmp_path / "m-v1.bundle.tar", private)
    unpacked = unpack_bundle(path, tmp_path / "u", [public])
    members = {n: unpacked.path(n).read_bytes() for n in manifest.files}
    fields = {**manifest.model_dump(exclude={"files"}), "fallback": "fallback.npz"}  # signed, but not a member
    bad, _ = write_bundle(tmp_path / "bad.bundle.tar", fields, members, private)
    with pytest.raises(BundleError) as exc:
        Predictor.open(bad, trust=[public], runtime="fake")
    assert exc.value.reason == "bad_fallback"


def test_metrics_count_fallback_rows_by_level():
    m = AgentMetrics(process=False)
    m.observe_fallback([None, "item", "item", "global"])
    text = m.exposition()[0].decode()
    assert 'edgeship_fallback_rows_total{level="item"} 2.0' in text
    assert 'edgeship_fallback_rows_total{level="global"} 1.0' in text


def test_trainer_validates_cold_pairs_as_the_agent_serves_them(tmp_path, monkeypatch):
    """Pairs that sold nothing before the split: the trainer's validation rows and the agent's
    encoding of the same rows (bundle state = the warm pairs, fallback built at the split, served
    with the factors the trainer learnt) agree."""
    import cloud.training.prepare as prepare_module

    factors = np.array([0.6, 0.3, 0.2, 0.1], np.float32)  # this small world has too few cold pairs to learn them
    monkeypatch.setattr(prepare_module, "calibrate_fallback", lambda *a, **k: (factors, {}))
    generate(tmp_path / "data", stores=3, items=12, days=160, seed=11)
    loaded = favorita.load(tmp_path / "data", progress=False)
    rows, _ = favorita.clean(loaded.train)
    cut = rows["date"].max() - pd.Timedelta(days=13)  # the first validation day (14 validation days)
    items = sorted(rows["item_nbr"].unique())
    stores = sorted(rows["store_nbr"].unique())
    # a new item (no store sold it before the split) and one pair new at one store
    new = (rows["date"] < cut) & ((rows["item_nbr"] == items[0]) | ((rows["item_nbr"] == items[1]) & (rows["store_nbr"] == stores[0])))
    rows = rows[~new]
    grid = favorita.daily_grid(rows, rows["date"].min(), rows["date"].max())
    prep = prepare(grid, loaded.stores, loaded.items, loaded.holidays, validation_days=14, train_days=40)
    m, valid = prep.matrix, prep.valid
    levels = set(valid.fallback.tolist())
    assert {"", "item"} <= levels and levels & {"family_store", "family_store_type", "global"}, levels
    cold_pairs = np.unique(valid.pair[valid.fallback != ""])
    assert not np.isin(prep.train.pair, cold_pairs).any()  # a trainer at the split does not know them
    start = int(valid.day.min())
    warm = np.setdiff1d(np.arange(len(m.store_nbr)), cold_pairs)
    state = SalesState(m.store_nbr[warm], m.item_nbr[warm], m.log_sales[warm, start - LAG_WINDOW_DAYS : start], m.dates[start - 1])
    private, public = generate_keypair()
    # the factors the trainer learnt before the split ship with the windows
    np.testing.assert_array_equal(prep.fallback_scale, factors)
    bundle, _ = build_bundle(
        tmp_path / "b.bundle.tar", private, tables=prep.tables, state=state, fallback=prep.fallback_scale, max_batch=4096
    )
    instances = [
        {"date": str(m.dates[d]), "store_nbr": int(m.store_nbr[p]), "item_nbr": int(m.item_nbr[p]), "onpromotion": bool(m.promo[p, d])}
        for p, d in zip(valid.pair.tolist(), valid.day.tolist(), strict=True)
    ]
    with Predictor.open(bundle, trust=[public], runtime="fake") as agent:
        served = agent.prepare(instances)
    np.testing.assert_array_equal(served.cat, valid.x.cat)
    np.testing.assert_array_equal(served.num, valid.x.num)
    assert [f or "" for f in served.fallback] == valid.fallback.tolist()


def test_real_agent_over_http_serves_and_marks_cold_pairs(tmp_path, keys):
    """A real agent (LiteRT, a tiny linear model: prediction = lag_mean_7) over HTTP."""
    path, _ = build_bundle(
        tmp_path / "favorita-demand-v1.bundle.tar", keys[0], tables=tables(), fallback=True, horizon_days=16,
        model_bytes=real_models(["tflite-fp32"]),
    )  # fmt: skip
    cfg = AgentConfig(device_id="store-1", state_dir=tmp_path / "state", trust=[keys[2]], http="127.0.0.1:0")
    agent = Agent(cfg)
    agent.store.install(path)
    agent.store.activate(1)
    state = sample_state()
    with agent:
        url = agent.http_url
        pairs = [(1, 103520), (2, 105574), (2, 999002)]
        r = httpx.post(f"{url}/v1/predict", json={"instances": rows_of(pairs)}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["fallback"] == [None, "item", "global"]
        lag7 = [state.window[0, -7:].mean(), state.window[1, -7:].mean(), state.window[:, -7:].mean()]
        assert body["predictions"] == pytest.approx(np.expm1(lag7).tolist(), abs=2e-3)
        warm = httpx.post(f"{url}/v1/predict", json={"instances": rows_of([(1, 103520)])}, timeout=30).json()
        assert "fallback" not in warm  # warm-only answers keep their shape
        for _ in range(2):  # a lone cold row: the single-row path (and its cache) keeps the mark
            one = httpx.post(f"{url}/v1/predict", json={"instances": rows_of([(2, 999002)])}, timeout=30).json()
            assert one["fallback"] == ["global"] and one["predictions"] == body["predictions"][2:]
        bad = httpx.post(f"{url}/v1/predict", json={"instances": rows_of([(2, 424242)])}, timeout=30)
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["rule"] == "known_item"
        batch = httpx.post(f"{url}/v1/predict:batch", json={"instances": rows_of([(1, 999002), (9, 103520)])}, timeout=30)
        assert batch.status_code == 200 and batch.json()["fallback"] == ["family_store", None]
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert 'edgeship_fallback_rows_total{level="item"} 1.0' in metrics
        assert 'edgeship_fallback_rows_total{level="global"} 3.0' in metrics
        assert 'edgeship_fallback_rows_total{level="family_store"} 1.0' in metrics

"""edge.serving.pipeline through a real agent's HTTP (uvicorn on loopback, fake runtime, no broker):
the batch endpoint, batching of concurrent requests, sales, A/B and shadow metrics, drift, the
prediction log, and fuzzed bodies that never crash the agent."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.agent import Agent
from edge.config import AgentConfig
from edge.monitoring.predlog import read_rows
from edge.serving.shadow import CandidateSettings
from tests.bundle_kit import PAIRS, STATE_END, build_bundle, sample_state, sample_tables
from models.contract import LAG_WINDOW_DAYS
from models.features import SalesState, encode

END = np.datetime64(STATE_END, "D")
ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}


def day(offset: int) -> str:
    return str(END + np.timedelta64(offset, "D"))


def rows_in_distribution(n: int, seed: int, promo: float = 0.1, days: int = 14) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s, i = PAIRS[rng.integers(len(PAIRS))]
        out.append({"date": day(int(rng.integers(1, days + 1))), "store_nbr": s, "item_nbr": i,
                    "onpromotion": bool(rng.random() < promo)})  # fmt: skip
    return out


def reference_stats_json(seed: int = 99) -> bytes:
    """What the trainer writes (cloud.training.pipeline.reference_stats) for rows like rows_in_distribution."""
    from models.reference import reference_stats

    rows = rows_in_distribution(3000, seed)
    state = sample_state()
    pair = state.pair_index(np.array([r["store_nbr"] for r in rows]), np.array([r["item_nbr"] for r in rows]))
    enc = encode(
        sample_tables(),
        dates=np.array([r["date"] for r in rows], "M8[D]"),
        store_nbr=np.array([r["store_nbr"] for r in rows]),
        item_nbr=np.array([r["item_nbr"] for r in rows]),
        onpromotion=np.array([r["onpromotion"] for r in rows]),
        windows=state.window[pair],
        window_end=state.end_date,
    )
    return json.dumps(reference_stats(enc)).encode()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("bundles")
    ref = {"reference_stats.json": reference_stats_json()}
    v1, _ = build_bundle(out / "m-v1.bundle.tar", keys[0], version=1, max_batch=8, extra_members=ref)
    # v2: other lag history (different answers), and no history for store 3 / item 999001
    base = sample_state(seed=5)
    keep = np.array([p != (3, 999001) for p in PAIRS])
    state = SalesState(base.store_nbr[keep], base.item_nbr[keep], base.window[keep], base.end_date)
    v2, _ = build_bundle(out / "m-v2.bundle.tar", keys[0], version=2, max_batch=8, state=state, extra_members=ref)
    return {1: v1, 2: v2}


def start_agent(tmp_path: Path, pem: Path, bundle: Path | None = None, **kw) -> Agent:
    fields = {"device_id": "store-1", "state_dir": tmp_path / "state", "trust": [pem], "http": "127.0.0.1:0",
              "runtime": "fake", "gate": "off"}  # fmt: skip
    agent = Agent(AgentConfig(**{**fields, **kw})).start()
    if bundle is not None:
        assert agent.install_and_activate(bundle)
    return agent


def metric(agent: Agent, name: str, labels: dict | None = None) -> float | None:
    return agent.metrics.registry.get_sample_value(name, labels or {})


@pytest.fixture()
def agent(tmp_path, keys, bundles):
    a = start_agent(tmp_path, keys[2], bundles[1], predlog={"sample_rate": 1.0})
    yield a
    a.stop()


# -- the batch endpoint ---------------------------------------------------------------------------
def test_predict_batch_partial_results(agent):
    rows = rows_in_distribution(30, seed=1)
    rows[3] = {**rows[3], "store_nbr": 999}
    rows[7] = {**rows[7], "date": "2017-8-16"}
    rows[11] = {"date": day(1), "store_nbr": 2, "item_nbr": 105574}  # no history for the pair
    rows[20] = {**rows[20], "extra": 1}
    r = httpx.post(f"{agent.http_url}/v1/predict:batch", json={"instances": rows}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    bad = {3: ("instances[3].store_nbr", "known_store"), 7: ("instances[7].date", "date_format"),
           11: ("instances[11]", "known_pair"), 20: ("instances[20].extra", "extra_field")}  # fmt: skip
    assert {e["index"]: (e["field"], e["rule"]) for e in body["errors"]} == bad
    good = [i for i in range(30) if i not in bad]
    expected = agent.predictor.predict([rows[i] for i in good[:8]])
    assert [body["predictions"][i] for i in good[:8]] == expected
    assert all(body["predictions"][i] is None for i in bad) and all(body["predictions"][i] is not None for i in good)
    assert body["model"]["version"] == 1


def test_predict_batch_limits(agent, tmp_path):
    url = f"{agent.http_url}/v1/predict:batch"
    assert httpx.post(url, json={"instances": [ROW] * 10_001}, timeout=30).status_code == 413
    r = httpx.post(url, json={"instances": [{**ROW, "store_nbr": 999}] * 3})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["rule"] == "known_store"
    assert httpx.post(url, content=b"[1,2", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.post(url, json={"instances": []}).json()["error"]["details"][0]["rule"] == "list_type"
    big = rows_in_distribution(2000, seed=2)
    r = httpx.post(url, json={"instances": big}, timeout=30)
    assert r.status_code == 200 and r.json()["errors"] == [] and len(r.json()["predictions"]) == 2000


# -- batching ---------------------------------------------------------------------------------
def test_concurrent_http_requests_share_batches(agent):
    errors: list[str] = []

    def client(seed: int) -> None:
        rows = rows_in_distribution(40, seed)
        with httpx.Client(base_url=agent.http_url, timeout=10) as c:
            for row in rows:
                r = c.post("/v1/predict", json={"instances": [row]})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    count = metric(agent, "edgeship_batch_requests_count", {"batcher": "live"})
    total = metric(agent, "edgeship_batch_requests_sum", {"batcher": "live"})
    assert total >= 320 and count < total, f"{count} batches for {total} requests: nothing was batched"
    assert metric(agent, "edgeship_requests_total", {"transport": "http", "outcome": "ok"}) >= 320


def test_batching_off_answers_the_same(tmp_path, keys, bundles, agent):
    off = start_agent(tmp_path / "off", keys[2], bundles[1], batching={"enabled": False})
    try:
        assert off.serving.batcher is None
        rows = rows_in_distribution(8, seed=3)
        a = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": rows}).json()
        b = httpx.post(f"{off.http_url}/v1/predict", json={"instances": rows}).json()
        assert a["predictions"] == b["predictions"]
        # the stage histograms still see every stage
        for stage in ("validate", "encode", "infer"):
            assert metric(off, "edgeship_stage_duration_seconds_count", {"stage": stage}) >= 1
    finally:
        off.stop()


# -- sales ------------------------------------------------------------------------------------
def test_sales_over_http_move_the_horizon_and_survive_a_restart(tmp_path, keys, bundles):
    agent = start_agent(tmp_path, keys[2], bundles[1])
    far = {**ROW, "date": day(31)}  # beyond the 30-day horizon of the bundle
    try:
        assert httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [far]}).status_code == 422
        report = {"sales": [{"date": day(2), "store_nbr": s, "item_nbr": i, "unit_sales": 3} for s, i in PAIRS]}
        r = httpx.post(f"{agent.http_url}/v1/sales", json=report)
        assert r.status_code == 200, r.text
        assert r.json() == {"schema_version": 1, "correlation_id": None, "accepted": 4, "end_date": day(2), "pairs": 4}
        ok = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [far]})
        assert ok.status_code == 200
        bad = httpx.post(f"{agent.http_url}/v1/sales", json={"sales": [{**report["sales"][0], "store_nbr": 999}]})
        assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "sales[0].store_nbr"
        assert httpx.post(f"{agent.http_url}/v1/sales", content=b"nope", headers={"Content-Type": "application/json"}).status_code == 400
        assert httpx.post(f"{agent.http_url}/v1/sales", content=b"nope").status_code == 415  # JSON bodies only (issue 7)
        assert metric(agent, "edgeship_sales_reports_total", {"transport": "http", "outcome": "ok"}) == 1
        assert metric(agent, "edgeship_lag_state_end_timestamp_seconds") == float(
            np.datetime64(day(2), "s").astype(np.int64)
        )
    finally:
        agent.stop()
    again = start_agent(tmp_path, keys[2])  # restart: model from the store, lag state from disk
    try:
        r = httpx.post(f"{again.http_url}/v1/predict", json={"instances": [far]})
        assert r.status_code == 200 and r.json()["predictions"] == ok.json()["predictions"]
    finally:
        again.stop()


# -- A/B and shadow ---------------------------------------------------------------------------
def load_v2(agent: Agent, bundle: Path, **settings) -> None:
    agent.store.install(bundle)
    agent.serving.load_candidate(2, CandidateSettings(**settings))


def test_ab_split_is_deterministic_with_metrics_per_arm(agent, bundles):
    load_v2(agent, bundles[2], mode="ab", share=0.5, key="request")
    url = f"{agent.http_url}/v1/predict"
    row = {**ROW, "date": day(1)}
    versions = {}
    with httpx.Client() as client:
        for k in range(40):
            body = {"instances": [row], "correlation_id": f"req-{k}"}
            versions[k] = client.post(url, json=body).json()["model"]["version"]
            assert client.post(url, json=body).json()["model"]["version"] == versions[k]  # same id, same arm
    assert set(versions.values()) == {1, 2}
    n2 = sum(v == 2 for v in versions.values()) * 2
    assert metric(agent, "edgeship_arm_requests_total", {"arm": "candidate", "outcome": "ok"}) == n2
    assert metric(agent, "edgeship_arm_requests_total", {"arm": "live", "outcome": "ok"}) == 80 - n2
    assert metric(agent, "edgeship_arm_latency_seconds_count", {"arm": "candidate"}) == n2
    assert metric(agent, "edgeship_arm_prediction_log1p_count", {"arm": "live"}) == 80 - n2
    text = httpx.get(f"{agent.http_url}/metrics").text
    assert re.search(r'edgeship_candidate_info\{.*mode="ab".*share="0.5".*version="2".*\} 1.0', text) or re.search(
        r'edgeship_candidate_info\{[^}]*version="2"[^}]*\} 1.0', text
    )
    # by pair: each store×item always sees the same arm; one v2 cannot answer falls back to live
    load_v2(agent, bundles[2], mode="ab", share=1.0, key="pair")
    r = httpx.post(url, json={"instances": [{"date": day(1), "store_nbr": 3, "item_nbr": 999001}]}).json()
    assert r["model"]["version"] == 1 and metric(agent, "edgeship_candidate_fallbacks_total") == 1
    assert httpx.post(url, json={"instances": [row]}).json()["model"]["version"] == 2
    # the prediction log records the arm of every row
    arms = {(r["version"], r["arm"]) for r in read_rows(agent.config.state_dir / "predlog")}
    assert {(1, "live"), (2, "candidate")} <= arms


def test_shadow_compares_without_answering(agent, bundles):
    load_v2(agent, bundles[2], mode="shadow", share=1.0, tolerance=0.05)
    url = f"{agent.http_url}/v1/predict"
    rows = [r for r in rows_in_distribution(60, seed=4) if (r["store_nbr"], r["item_nbr"]) != (3, 999001)][:40]
    for k in range(0, 40, 4):
        r = httpx.post(url, json={"instances": rows[k : k + 4]})
        assert r.status_code == 200 and r.json()["model"]["version"] == 1  # the live model answers
    deadline = __import__("time").monotonic() + 5
    while metric(agent, "edgeship_shadow_abs_diff_count") != 40 and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.01)
    assert metric(agent, "edgeship_shadow_abs_diff_count") == 40
    assert metric(agent, "edgeship_shadow_abs_diff_sum") > 0  # other lag history, other answers
    agree = metric(agent, "edgeship_shadow_rows_total", {"agree": "yes"}) or 0
    disagree = metric(agent, "edgeship_shadow_rows_total", {"agree": "no"}) or 0
    assert agree + disagree == 40 and disagree > 0
    assert metric(agent, "edgeship_arm_requests_total", {"arm": "candidate", "outcome": "ok"}) == 10
    assert metric(agent, "edgeship_arm_latency_seconds_count", {"arm": "candidate"}) == 10
    assert metric(agent, "edgeship_arm_latency_seconds_count", {"arm": "live"}) == 10
    # a request v2 cannot validate is counted, not fatal; unloading stops mirroring
    httpx.post(url, json={"instances": [{"date": day(1), "store_nbr": 3, "item_nbr": 999001}]})
    assert metric(agent, "edgeship_arm_requests_total", {"arm": "candidate", "outcome": "invalid"}) == 1
    agent.serving.load_candidate(None)
    httpx.post(url, json={"instances": rows[:1]})
    assert metric(agent, "edgeship_shadow_abs_diff_count") == 40
    assert "edgeship_candidate_info{" not in httpx.get(f"{agent.http_url}/metrics").text


def test_candidate_from_config_at_start(tmp_path, keys, bundles):
    # The previous version (kept for rollback) as the candidate beside the new live one. (Versions
    # installed but never activated are removed at start-up by crash recovery, edge.store.versions.)
    first = start_agent(tmp_path, keys[2], bundles[1])
    assert first.install_and_activate(bundles[2])
    first.stop()
    agent = start_agent(tmp_path, keys[2], candidate={"version": 1, "mode": "ab", "share": 1.0})
    try:
        assert agent.serving.candidate.current.version == 1 and agent.predictor.version == 2
        r = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [{**ROW, "date": day(1)}]})
        assert r.json()["model"]["version"] == 1
    finally:
        agent.stop()
    bad = start_agent(tmp_path, keys[2], candidate={"version": 7})  # not installed: logged, live serves
    try:
        assert bad.serving.candidate.current is None and bad.predictor.version == 2
    finally:
        bad.stop()


# -- drift ------------------------------------------------------------------------------------
def psi_values(agent: Agent) -> dict[str, float]:
    text = httpx.get(f"{agent.http_url}/metrics").text
    return {m[1]: float(m[2]) for m in re.finditer(r'edgeship_feature_drift_psi\{feature="([a-z_0-9]+)"\} (\S+)', text)}


def test_drift_metric_moves_on_shifted_inputs(tmp_path, keys, bundles):
    agent = start_agent(tmp_path, keys[2], bundles[1], drift={"window_rows": 400, "min_rows": 100})
    url = f"{agent.http_url}/v1/predict:batch"
    try:
        assert psi_values(agent) == {}  # too few rows yet
        httpx.post(url, json={"instances": rows_in_distribution(400, seed=7)})
        calm = psi_values(agent)
        assert set(calm) >= {"onpromotion", "lag_mean_7", "dow", "store", "item"}
        assert max(calm.values()) < 0.1, calm
        shifted = [{**r, "onpromotion": True} for r in rows_in_distribution(400, seed=8)]
        httpx.post(url, json={"instances": shifted})
        moved = psi_values(agent)
        assert moved["onpromotion"] > 1.0 > calm["onpromotion"] + 0.5
        assert moved["store"] < 0.1  # only what shifted moves
        assert metric(agent, "edgeship_drift_window_rows") == 400
    finally:
        agent.stop()


# -- prediction log ---------------------------------------------------------------------------
def test_prediction_log_is_sampled_and_bounded(tmp_path, keys, bundles):
    agent = start_agent(
        tmp_path, keys[2], bundles[1], predlog={"sample_rate": 0.5, "max_bytes": 16384, "segment_bytes": 4096}
    )
    try:
        with httpx.Client(base_url=agent.http_url) as client:
            for k in range(200):
                client.post("/v1/predict", json={"instances": [{**ROW, "date": day(1 + k % 10)}]})
        folder = agent.config.state_dir / "predlog"
        logged = list(read_rows(folder))
        written = metric(agent, "edgeship_predlog_rows_total")
        assert 60 < written < 140  # about half the requests
        assert 0 < len(logged) < written  # the oldest files went to stay under max_bytes
        assert sum(p.stat().st_size for p in folder.iterdir()) <= 16384 + 4096
        assert metric(agent, "edgeship_predlog_deleted_files_total") >= 1
        row = logged[-1]
        assert {"ts", "date", "store_nbr", "item_nbr", "onpromotion", "prediction", "version", "digest", "arm"} <= set(row)
        assert row["arm"] == "live" and row["version"] == 1 and row["transport"] == "http"
    finally:
        agent.stop()


# -- fuzzing ----------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
row_like = st.fixed_dictionaries(
    {},
    optional={
        "date": st.sampled_from([day(1), day(40), "2017-02-30", "", "x", 20170816]) | st.text(max_size=11),
        "store_nbr": st.sampled_from([1, 2, 999, 0, -1, 2**31, 1.5, "1", True]),
        "item_nbr": st.sampled_from([103520, 105574, 7, 2**40, None, "x"]),
        "onpromotion": st.sampled_from([True, False, 0, "yes", None]),
        "unit_sales": st.sampled_from([1, 2.5, -3, 1e308, float("inf"), "1"]),
        "extra": json_values,
    },
)
bodies = (
    st.fixed_dictionaries({"instances": st.lists(row_like, max_size=10)}, optional={"correlation_id": json_values})
    | st.fixed_dictionaries({"sales": st.lists(row_like, max_size=10)})
    | json_values
)


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory, keys, bundles):
    a = start_agent(tmp_path_factory.mktemp("fuzz"), keys[2], bundles[1])
    a.client = httpx.Client(base_url=a.http_url, timeout=10)
    yield a
    a.client.close()
    a.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, raw=st.binary(max_size=64), endpoint=st.sampled_from(["/v1/predict", "/v1/predict:batch", "/v1/sales"]))
def test_fuzzed_http_bodies_get_4xx_never_5xx(fuzz_agent, body, raw, endpoint):
    for content in (json.dumps(body, allow_nan=True).encode(), raw):
        r = fuzz_agent.client.post(endpoint, content=content, headers={"content-type": "application/json"})
        assert r.status_code < 500, (content, r.text)
        if r.status_code >= 400:
            err = r.json()["error"]
            assert err["code"] and err["message"]
            for d in err.get("details", []):
                assert set(d) >= {"field", "rule", "message"}


def test_still_serving_after_the_fuzz(fuzz_agent):
    r = httpx.post(f"{fuzz_agent.http_url}/v1/predict", json={"instances": [{**ROW, "date": day(1)}]})
    assert r.status_code == 200


def test_state_window_constant():
    assert LAG_WINDOW_DAYS == 56  # the online state's day arithmetic assumes the contract's window


def test_nested_settings_from_the_command_line(tmp_path, keys):
    from edgeship.cli import build_parser
    from edgeship.commands.agent import config_from_args

    base = ["agent", "--device-id", "d1", "--state-dir", str(tmp_path), "--trust", str(keys[2])]
    args = build_parser().parse_args(
        [*base, "--option", "batching.max_wait_ms=2.5", "--option", "candidate.version=3",
         "--option", "candidate.mode=ab", "--option", "predlog.sample_rate=0"]  # fmt: skip
    )
    cfg = config_from_args(args)
    assert cfg.batching.max_wait_ms == 2.5 and cfg.candidate.version == 3 and cfg.candidate.mode == "ab"
    assert cfg.predlog.sample_rate == 0 and cfg.telemetry.interval_s == 60
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--option", "no-equals-sign"])
    with pytest.raises(ValueError, match="candidate.mode"):  # edge.settings.SettingsError names the setting
        config_from_args(build_parser().parse_args([*base, "--option", "candidate.mode=sideways"]))
    with pytest.raises(ValueError, match="batching.nonsense"):
        config_from_args(build_parser().parse_args([*base, "--option", "batching.nonsense=1"]))

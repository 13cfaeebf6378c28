"""Issue 7: the attacks an attacker tries first, each performed end to end against a REAL Mosquitto
(tests/conftest.py) and a real running agent (or controller / fleet view), asserting the outcome.

1. one unsigned retained NaN/Infinity document must not stop updates (nor kill any MQTT loop);
2. the agent's HTTP write routes need a token and JSON; no report can block predictions;
3. one future-dated signed targets document must not freeze a device;
4. an unsigned (or stale, or rolled-back) candidate command must not change what serves;
5. revoking a key stops the model it signed (one policy, an event and a metric);
6. key lists expire by default and a stale one is loud, also at start;
7. one device's bad timestamp must not blind the fleet view (nor make a rollout act on a dead view);
8. device A's credentials with B's client id must not knock B off the broker.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud.fleet.publish import Publisher, read_bundle, sign_candidate, sign_targets
from cloud.fleet.root import add_signing_key, init_root, revoke_signing_key
from models import topics
from models.envelope import Signed
from models.targets import announcement_of
from tests.bundle_kit import STATE_END, build_bundle, sample_state
from tests.conftest import wait_for
from tests.delivery_kit import Watcher, assign, keypair, ship, signed_announcement, start_agent

pytestmark = pytest.mark.integration
MODEL = "favorita-demand"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("attack-kit")
    trusted = keypair(d / "trusted")
    bundles = {
        v: build_bundle(d / f"{MODEL}-v{v}.bundle.tar", trusted.private, version=v, state=sample_state(seed=v))[0]
        for v in (1, 2, 3, 4)
    }
    return {"trusted": trusted, "bundles": bundles, "dir": d}


@pytest.fixture()
def cloud(mosquitto):
    pub = Publisher(mosquitto.url).connect()
    watcher = Watcher(mosquitto.url)
    yield pub, watcher
    pub.close()
    watcher.close()


def _version(agent) -> int | None:
    p = agent.predictor
    return p.version if p is not None else None


def _poisoned(doc: dict, where: str) -> bytes:
    """``doc`` (an announcement as JSON) with NaN / Infinity in a signed part: nobody's signature, but
    canonical JSON cannot even be computed for it."""
    doc = json.loads(json.dumps(doc))
    doc[where]["signed"]["poison"] = float("nan")
    doc[where]["signed"]["more"] = float("inf")
    return json.dumps(doc).encode()  # Python writes NaN / Infinity literals


# -- 1 ----------------------------------------------------------------------------------------
def test_attack1_retained_nan_documents_are_refused_and_updates_go_on(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    ann1, _ = signed_announcement(kit["bundles"][1], key)
    doc = json.loads(ann1.model_dump_json())
    # the attack: retained, unsigned, on a model topic every device of the fleet subscribes to
    pub.send(topics.model_announce("default", "evil"), _poisoned({**doc, "model": "evil"}, "targets"))
    pub.send(topics.keylist("default"), json.dumps({"signed": {"version": float("nan")},
                                                    "signatures": [{"keyid": "0" * 16, "sig": "AA=="}]}))  # fmt: skip
    pub.flush()
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path], http="127.0.0.1:0")
    try:
        refused = watch.wait("store-1", "refused", reason="malformed")
        assert "canonical" in refused["detail"]["message"]
        ship(pub, kit["bundles"][1], key)  # a valid v1 is still installed
        wait_for(lambda: _version(agent) == 1, "v1 active despite the poisoned retained documents")
        health = httpx.get(f"{agent.http_url}/healthz").json()
        assert health["mqtt"] == {"connected": True, "loop_alive": True, "loop_restarts": 0}
        # a dead network loop is detected, restarted and shown in /healthz
        agent.mqtt.client.loop_stop()
        wait_for(lambda: httpx.get(f"{agent.http_url}/healthz").json()["mqtt"]["loop_restarts"] == 1, "loop restarted")
        wait_for(lambda: httpx.get(f"{agent.http_url}/healthz").json()["mqtt"]["connected"], "reconnected")
        assert agent.metrics.registry.get_sample_value("edgeship_mqtt_loop_restarts_total") == 1
    finally:
        agent.stop()
    # after a restart, with the poison still retained: refused again, and v2 is installed
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        assert _version(agent) == 1
        ship(pub, kit["bundles"][2], key)
        wait_for(lambda: _version(agent) == 2, "v2 active after a restart with the poison retained")
        assert agent.metrics.registry.get_sample_value("edgeship_refused_documents_total", {"reason": "malformed"}) >= 1
    finally:
        agent.stop()


# -- 3 ----------------------------------------------------------------------------------------
def test_attack3_a_future_dated_targets_document_never_freezes_the_device(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        ship(pub, kit["bundles"][1], key)
        wait_for(lambda: _version(agent) == 1, "v1 active")
        # the attack: validly signed (a briefly leaked key, or a signer with a wrong clock), dated 2090
        b2 = read_bundle(kit["bundles"][2], 4096)
        t, env = sign_targets(key, bundle=b2, now=dt.datetime(2090, 1, 1, tzinfo=dt.timezone.utc), expires_in=3600)
        pub.put_chunks(b2)
        pub.announce(announcement_of(t, env))
        refused = watch.wait("store-1", "refused", reason="future", version=2)
        assert "2090" in refused["detail"]["message"]
        assert _version(agent) == 1
        # every later legitimate update still goes through
        ship(pub, kit["bundles"][3], key)
        wait_for(lambda: _version(agent) == 3, "v3 active after the future-dated document")
    finally:
        agent.stop()
    # a device that stored a 2090 mark before this fix (or any future mark) drops it at start
    state = tmp_path / "store-1" / "delivery.json"
    state.write_text(json.dumps({"issued": {MODEL: ["2090-01-01T00:00:00+00:00", 3, ""]}}))
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        # a signed rollback command issued now (older than the stored 2090 mark) is obeyed
        assign(pub, "store-1", kit["bundles"][1], key, downgrade=True)
        wait_for(lambda: _version(agent) == 1, "signed rollback to v1 after a restart with a stored 2090 mark")
        ship(pub, kit["bundles"][4], key)
        wait_for(lambda: _version(agent) == 4, "v4 active after a restart with a stored 2090 mark")
    finally:
        agent.stop()


def test_attack3_revoking_a_key_clears_the_replay_mark_it_set(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    keys = tmp_path / "keys"
    root_key, root_pub = init_root(keys)
    k1, k2 = keypair(keys, "k1"), keypair(keys, "k2")
    keylist = keys / "keylist.json"
    b1 = build_bundle(tmp_path / f"{MODEL}-v1.bundle.tar", k1.private, version=1)[0]
    b2 = build_bundle(tmp_path / f"{MODEL}-v2.bundle.tar", k2.private, version=2)[0]
    add_signing_key(keylist, root_key, k1.pub_path)
    add_signing_key(keylist, root_key, k2.pub_path)
    v2_list = Signed.model_validate_json(keylist.read_bytes())
    agent = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub])
    try:
        # k1 (about to leak) signs v1 dated 4 minutes ahead: inside the clock skew, so acted on
        soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=4)
        ship(pub, b1, k1.private, keys=v2_list, now=soon)
        wait_for(lambda: _version(agent) == 1, "v1 active")
        assert agent.mqtt.delivery._issued[MODEL][2]  # the mark names k1
        revoke_signing_key(keylist, root_key, k1.pub_path)
        v3_list = Signed.model_validate_json(keylist.read_bytes())
        pub.publish_keylist(v3_list)
        watch.wait("store-1", "keylist", version=3)
        wait_for(lambda: MODEL not in agent.mqtt.delivery._issued, "k1's replay mark cleared")
        # a signed rollback-to-v2-style command (same version ordering) issued now by k2 is not ignored
        ship(pub, b2, k2.private, keys=v3_list)
        wait_for(lambda: _version(agent) == 2, "v2 (k2) active")
    finally:
        agent.stop()


# -- 4 ----------------------------------------------------------------------------------------
def _candidate_events(watch, **detail):
    return watch.of("store-1", "candidate", **detail)


def test_attack4_unsigned_or_stale_candidate_commands_cannot_bring_back_a_rolled_back_model(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path], keep_versions=5)
    set_topic = topics.command("default", "store-1")
    try:
        ship(pub, kit["bundles"][1], key)
        wait_for(lambda: _version(agent) == 1, "v1 active")
        ship(pub, kit["bundles"][2], key)
        wait_for(lambda: _version(agent) == 2, "v2 active")
        assign(pub, "store-1", kit["bundles"][1], key, downgrade=True)  # a signed rollback removes v2
        wait_for(lambda: _version(agent) == 1, "rolled back to v1")
        digest2 = read_bundle(kit["bundles"][2]).sha256
        # the attack: unsigned, on the device's set topic
        pub.send(set_topic, json.dumps({"command": "candidate", "version": 2, "mode": "ab", "share": 1.0}), retain=False)
        pub.flush()
        watch.wait("store-1", "candidate", outcome="refused", reason="unsigned")
        # signed, but for the rolled-back v2
        order = sign_candidate(key, model=MODEL, devices=["store-1"], version=2, sha256=digest2, mode="ab", share=1.0)
        pub.send(set_topic, json.dumps({"command": "candidate", "signed": order.model_dump(mode="json")}), retain=False)
        pub.flush()
        watch.wait("store-1", "candidate", outcome="refused", reason="rolled_back")
        # signed by a stranger; for another device; or forged plain fields over a valid order
        stranger = keypair(tmp_path / "stranger")
        digest1 = read_bundle(kit["bundles"][1]).sha256
        forged = sign_candidate(stranger.private, model=MODEL, devices=["store-1"], version=1, sha256=digest1)
        pub.send(set_topic, json.dumps({"command": "candidate", "signed": forged.model_dump(mode="json")}), retain=False)
        other = sign_candidate(key, model=MODEL, devices=["store-2"], version=1, sha256=digest1)
        pub.send(set_topic, json.dumps({"command": "candidate", "signed": other.model_dump(mode="json")}), retain=False)
        pub.flush()
        watch.wait("store-1", "candidate", outcome="refused", reason="bad_signature")
        watch.wait("store-1", "candidate", outcome="refused", reason="wrong_device")
        assert not _candidate_events(watch, outcome="loaded")
        # a properly signed order for an installed, gated, never rolled-back version is obeyed (plain
        # fields that disagree with it are ignored) ...
        good = sign_candidate(key, model=MODEL, devices=["store-1"], version=1, sha256=digest1, mode="shadow", share=0.5)
        pub.send(set_topic, json.dumps({"command": "candidate", "version": 2, "mode": "ab", "share": 1.0,
                                        "signed": good.model_dump(mode="json")}), retain=False)  # fmt: skip
        pub.flush()
        loaded = watch.wait("store-1", "candidate", outcome="loaded")
        assert loaded["detail"]["version"] == 1 and loaded["detail"]["mode"] == "shadow"
        # ... once: replaying it is refused
        pub.send(set_topic, json.dumps({"command": "candidate", "signed": good.model_dump(mode="json")}), retain=False)
        pub.flush()
        watch.wait("store-1", "candidate", outcome="refused", reason="replayed")
        assert _version(agent) == 1
    finally:
        agent.stop()


# -- 2 ----------------------------------------------------------------------------------------
END = np.datetime64(STATE_END, "D")


def _day(offset: int) -> str:
    return str(END + np.timedelta64(offset, "D"))


def _sales(token: str | None, rows: list[dict], url: str, ctype: str = "application/json") -> httpx.Response:
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(f"{url}/v1/sales", content=json.dumps({"sales": rows}), headers=headers)


def test_attack2_http_writes_need_a_token_and_json_and_no_report_blocks_predictions(tmp_path, kit, mosquitto, cloud):
    pub, _watch = cloud
    key = kit["trusted"].private
    token = "t0k3n-" + "x" * 26
    token_file = tmp_path / "http.token"
    token_file.write_text(token + "\n")
    fields = {"trust": [kit["trusted"].pub_path], "http": "127.0.0.1:0", "http_token_file": token_file}
    agent = start_agent(tmp_path, mosquitto.url, **fields)
    row = {"date": _day(3), "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}
    sale = {"date": _day(1), "store_nbr": 1, "item_nbr": 103520, "unit_sales": 3}
    try:
        ship(pub, kit["bundles"][1], key)
        wait_for(lambda: _version(agent) == 1, "v1 active")
        url = agent.http_url
        agent.serving.online.today = lambda: END + np.timedelta64(1, "D")  # the device's clock: the day after the bundle
        # no token, a wrong token, or a cross-site "simple request" (text/plain): refused, nothing applied
        r = _sales(None, [sale], url)
        assert r.status_code == 401 and r.json()["error"]["details"][0]["field"] == "Authorization"
        assert _sales("wrong-" + "y" * 20, [sale], url).status_code == 401
        r = _sales(token, [sale], url, ctype="text/plain")
        assert r.status_code == 415 and r.json()["error"]["details"][0]["field"] == "Content-Type"
        r = httpx.post(f"{url}/v1/predict", content=json.dumps({"instances": [row]}), headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        # reading routes stay open without a credential
        assert httpx.post(f"{url}/v1/predict", json={"instances": [row]}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/metrics").status_code == 200
        # the attack with the token (a leaked token or a compromised till): 30 reports, each 56 days ahead
        for k in range(1, 31):
            r = _sales(token, [{**sale, "date": _day(56 * k)}], url)
            assert r.status_code == 422 and r.json()["error"]["details"][0]["rule"] == "future", r.text
        # a report dated the device's today (+1 day skew) is fine, and valid predictions still answer
        assert _sales(token, [sale, {**sale, "date": _day(2)}], url).status_code == 200
        r = httpx.post(f"{url}/v1/predict", json={"instances": [row]})
        assert r.status_code == 200, r.text
    finally:
        agent.stop()
    # ... after a restart and a model update too
    agent = start_agent(tmp_path, mosquitto.url, **fields)
    try:
        agent.serving.online.today = lambda: END + np.timedelta64(1, "D")
        ship(pub, kit["bundles"][2], key)
        wait_for(lambda: _version(agent) == 2, "v2 active")
        assert httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [row]}).status_code == 200
    finally:
        agent.stop()
    # reads can be made to need the token; a bare port listens on loopback only
    agent = start_agent(tmp_path, mosquitto.url, **fields, http_auth_reads=True)
    try:
        assert httpx.get(f"{agent.http_url}/healthz").status_code == 401
        assert httpx.get(f"{agent.http_url}/healthz", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        agent.stop()
    from edge.config import AgentConfig

    assert AgentConfig(device_id="d", state_dir=tmp_path, trust=[kit["trusted"].pub_path], http="8080").http_address == (
        "127.0.0.1", 8080)


# -- 5 ----------------------------------------------------------------------------------------
def test_attack5_revoking_a_key_stops_the_model_it_signed_with_an_event_and_a_metric(tmp_path, mosquitto, cloud):
    pub, watch = cloud
    keys = tmp_path / "keys"
    root_key, root_pub = init_root(keys)
    k1, k2 = keypair(keys, "k1"), keypair(keys, "k2")
    keylist = keys / "keylist.json"
    b1 = build_bundle(tmp_path / f"{MODEL}-v1.bundle.tar", k2.private, version=1)[0]
    b2 = build_bundle(tmp_path / f"{MODEL}-v2.bundle.tar", k1.private, version=2)[0]
    add_signing_key(keylist, root_key, k1.pub_path)
    add_signing_key(keylist, root_key, k2.pub_path)
    both = Signed.model_validate_json(keylist.read_bytes())
    revoke_signing_key(keylist, root_key, k1.pub_path)
    without_k1 = Signed.model_validate_json(keylist.read_bytes())
    revoke_signing_key(keylist, root_key, k2.pub_path)
    without_both = Signed.model_validate_json(keylist.read_bytes())
    agent = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub], http="127.0.0.1:0")
    try:
        ship(pub, b1, k2.private, keys=both)
        wait_for(lambda: _version(agent) == 1, "v1 (k2) active")
        ship(pub, b2, k1.private, keys=both)
        wait_for(lambda: _version(agent) == 2, "v2 (k1) active")
        pub.publish_keylist(without_k1)  # k1 leaked: revoked
        event = watch.wait("store-1", "revoked_model", action="switched")
        assert event["detail"]["from_version"] == 2 and event["detail"]["version"] == 1
        wait_for(lambda: _version(agent) == 1, "the running agent stops serving the k1-signed v2")
        value = agent.metrics.registry.get_sample_value
        assert value("edgeship_model_rollbacks_total", {"reason": "revoked"}) == 1
        assert value("edgeship_revoked_model_actions_total", {"action": "switched"}) == 1
        watch.wait("store-1", "rolled_back", version=1, reason="revoked_key")
        # nothing left that a trusted key signed: it stops serving rather than serve it
        pub.publish_keylist(without_both)
        watch.wait("store-1", "revoked_model", action="stopped")
        wait_for(lambda: agent.predictor is None, "no model served")
        row = {"date": _day(3), "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}
        assert httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [row]}).status_code == 503
        assert httpx.get(f"{agent.http_url}/healthz").json()["status"] == "no_model"
    finally:
        agent.stop()


def test_attack5_after_a_restart_the_fallback_from_a_revoked_model_is_recorded(tmp_path, mosquitto, cloud):
    pub, watch = cloud
    keys = tmp_path / "keys"
    root_key, root_pub = init_root(keys)
    k1, k2 = keypair(keys, "k1"), keypair(keys, "k2")
    keylist = keys / "keylist.json"
    b1 = build_bundle(tmp_path / f"{MODEL}-v1.bundle.tar", k2.private, version=1)[0]
    b2 = build_bundle(tmp_path / f"{MODEL}-v2.bundle.tar", k1.private, version=2)[0]
    add_signing_key(keylist, root_key, k1.pub_path)
    add_signing_key(keylist, root_key, k2.pub_path)
    both = Signed.model_validate_json(keylist.read_bytes())
    agent = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub])
    try:
        ship(pub, b1, k2.private, keys=both)
        wait_for(lambda: _version(agent) == 1, "v1 active")
        ship(pub, b2, k1.private, keys=both)
        wait_for(lambda: _version(agent) == 2, "v2 active")
    finally:
        agent.stop()
    # the revocation lands while the device is off (it is on disk when it starts)
    revoke_signing_key(keylist, root_key, k1.pub_path)
    (tmp_path / "store-1" / "trust" / "keylist.json").write_bytes(keylist.read_bytes())
    pub.publish_keylist(Signed.model_validate_json(keylist.read_bytes()))
    agent = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub])
    try:
        assert _version(agent) == 1
        event = watch.wait("store-1", "revoked_model", action="switched")
        assert event["detail"]["from_version"] == 2
        assert agent.metrics.registry.get_sample_value("edgeship_model_rollbacks_total", {"reason": "revoked"}) == 1
    finally:
        agent.stop()


# -- 6 ----------------------------------------------------------------------------------------
def test_attack6_key_lists_expire_by_default_and_a_stale_list_is_loud_and_stops_updates(tmp_path, mosquitto, cloud):
    pub, watch = cloud
    keys = tmp_path / "keys"
    root_key, root_pub = init_root(keys)
    k1 = keypair(keys, "k1")
    keylist = keys / "keylist.json"
    default = add_signing_key(tmp_path / "other.json", root_key, k1.pub_path)
    assert default.expires_at is not None  # lists expire by default
    b1 = build_bundle(tmp_path / f"{MODEL}-v1.bundle.tar", k1.private, version=1)[0]
    b2 = build_bundle(tmp_path / f"{MODEL}-v2.bundle.tar", k1.private, version=2)[0]
    add_signing_key(keylist, root_key, k1.pub_path, expires_in=4)
    short = Signed.model_validate_json(keylist.read_bytes())
    agent = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub], http="127.0.0.1:0")
    try:
        ship(pub, b1, k1.private, keys=short)
        wait_for(lambda: _version(agent) == 1, "v1 active")
        # the list expires while the agent runs (an attacker withholding the next list, e.g. one revoking k1)
        watch.wait("store-1", "keylist_stale", timeout=20)
        assert httpx.get(f"{agent.http_url}/healthz").json()["trust"]["stale"] is True
        assert agent.metrics.registry.get_sample_value("edgeship_keylist_stale") == 1
        ship(pub, b2, k1.private)
        watch.wait("store-1", "refused", reason="keylist_expired", version=2)
        assert _version(agent) == 1  # still serving what it has
    finally:
        agent.stop()
    # at start: the stale list on disk is loud again
    agent = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub])
    try:
        wait_for(lambda: len(watch.of("store-1", "keylist_stale")) >= 2, "keylist_stale at start")
        assert agent.trust.stale()
        add_signing_key(keylist, root_key, k1.pub_path, expires_in=3600)  # a current list: updates resume
        pub.publish_keylist(Signed.model_validate_json(keylist.read_bytes()))
        wait_for(lambda: _version(agent) == 2, "v2 active once the list is current")
        assert agent.metrics.registry.get_sample_value("edgeship_keylist_stale") == 0
    finally:
        agent.stop()


# -- 7 ----------------------------------------------------------------------------------------
def test_attack7_a_naive_timestamp_from_one_device_does_not_blind_the_fleet_view_or_a_rollout(tmp_path, kit, mosquitto, cloud):
    from cloud.fleet.rollout import Rollout
    from cloud.fleet.view import FleetView

    pub, watch = cloud
    key = kit["trusted"]
    agent = start_agent(tmp_path, mosquitto.url, trust=[key.pub_path])
    try:
        ship(pub, kit["bundles"][1], key.private)
        wait_for(lambda: _version(agent) == 1, "v1 active")
        # the attack: a device (here store-7, its own topic) publishes a time without a zone, retained
        naive = {"schema_version": 1, "device_id": "store-7", "kind": "x", "at": "2024-01-01T00:00:00", "detail": {}}
        pub.send(topics.events("default", "store-7"), json.dumps(naive))
        pub.send(topics.telemetry("default", "store-7"), json.dumps({"at": "2024-01-01T00:00:00", "data": {}}))
        state = json.loads(agent.device_state().model_dump_json())
        pub.send(topics.state("default", "store-8"), json.dumps({**state, "device_id": "store-8", "updated_at": "2024-01-01T00:00:00"}))
        pub.flush()
        with FleetView(mosquitto.url) as view:
            wait_for(lambda: view.bad_messages["store-7"] >= 2 and view.bad_messages["store-8"] >= 1, "bad messages counted")
            assert view.alive() and view.snapshot()["store-7"].last_seen is None
            wait_for(lambda: "store-1" in view.snapshot() and view.snapshot()["store-1"].version == 1, "store-1 still seen")
        # a rollout with the poison retained: it sees its device go active and succeeds (no timeout, no rollback)
        result = Rollout(kit["bundles"][2], mosquitto.url, key=key.key_path, state_dir=tmp_path / "rollout",
                         discover_s=1.0, gate_timeout=20, devices=["store-1"]).run()  # fmt: skip
        assert result["phase"] == "succeeded", result
        assert _version(agent) == 2
    finally:
        agent.stop()


# -- 8 ----------------------------------------------------------------------------------------
from tests.integration.test_delivery_mqtt_security import FLEET, _use, secure  # noqa: E402,F401  (the shipped config)


def test_attack8_a_devices_credentials_with_anothers_client_id_cannot_knock_it_off(secure, tmp_path):  # noqa: F811
    import threading

    from models.broker import BrokerURL, new_client

    s = secure
    k = keypair(tmp_path / "keys")
    _use(s, "store-b")
    s["monkeypatch"].delenv("EDGESHIP_MQTT_CERT", raising=False)
    s["monkeypatch"].delenv("EDGESHIP_MQTT_KEY", raising=False)
    b = start_agent(tmp_path, s["url"], "store-b", fleet=FLEET, trust=[k.pub_path])
    try:
        assert b.mqtt.client._client_id == b"store-b"  # the agent's client id is its username
        _use(s, "store-a")  # the attacker holds device A's credentials
        url = BrokerURL.parse(s["url"])
        for attempt, victim_id in enumerate(["store-b", "edgeship-f1-store-b", "store-b"] * 2):
            c = new_client(victim_id, url)
            accepted = threading.Event()
            c.on_connect = lambda _c, _u, _f, rc, _p, ev=accepted: ev.set() if not rc.is_failure else None
            c.connect(url.host, url.port)
            c.loop_start()
            assert accepted.wait(10), f"attempt {attempt}: A's credentials are valid, the broker accepts them"
            c.disconnect()
            c.loop_stop()
        # B was never knocked off (its last will never fired)
        assert b.mqtt.disconnects == 0 and b.mqtt.connected
    finally:
        b.stop()


# -- also: what one device can make the bundle server send ------------------------------------
def test_also_chunk_requests_are_bounded_per_device(tmp_path, kit, mosquitto, cloud):
    import time

    from models.messages import ChunkRequest

    pub, _watch = cloud
    b = read_bundle(kit["bundles"][1], 4096)
    n = len(b.chunk_sha256)
    pub.serve(b)
    attacker = Publisher(mosquitto.url).connect()
    try:
        request = ChunkRequest(device_id="store-9", bundle_id=b.bundle_id, ranges=[(0, n)] * 64).model_dump_json()
        for k in range(1, 5):  # ~1 KB of requests per round, past the server's 1-second sharing window
            attacker.send(topics.fetch("default", "store-9"), request, retain=False)
            attacker.flush()
            wait_for(lambda k=k: pub.handled_requests >= k, f"request {k} handled")
            time.sleep(1.1)  # pacing the attack, not a correctness wait
        assert pub.answered_bytes == len(b.data)  # each chunk once for this device: one bundle's worth
        # another device still gets what it is missing
        other = ChunkRequest(device_id="store-2", bundle_id=b.bundle_id, ranges=[(0, 2)]).model_dump_json()
        attacker.send(topics.fetch("default", "store-2"), other, retain=False)
        attacker.flush()
        wait_for(lambda: pub.handled_requests >= 5, "store-2's request handled")
        assert pub.answered_chunks == n + 2
    finally:
        attacker.close()


# -- also: retained chunks of older versions are cleared, the newest K kept -------------------
def test_also_only_the_newest_k_versions_keep_retained_chunks(tmp_path, kit, mosquitto):
    from cloud.fleet.publish import publish

    key = kit["trusted"]
    sizes = {}
    for v in (1, 2, 3, 4):
        publish(kit["bundles"][v], mosquitto.url, key=key.key_path, chunk_size=4096, progress=False, keep_retained=2)
        sizes[v] = read_bundle(kit["bundles"][v], 4096)
    with Publisher(mosquitto.url).connect() as probe:
        def retained_chunk(v: int) -> bool:
            b = sizes[v]
            return bool(probe.retained(topics.bundle_chunk("default", b.bundle_id, 0), wait=0.5))

        assert [retained_chunk(v) for v in (1, 2, 3, 4)] == [False, False, True, True]
        index = json.loads(probe.retained(topics.model_retained("default", MODEL)))
        assert [e["version"] for e in index] == [3, 4]


# -- also: a side-loaded bundle is checked for size against what it signed before it is parsed -------
def _with_many_members(src: Path, dst: Path, n: int) -> Path:
    import io
    import shutil
    import tarfile

    shutil.copyfile(src, dst)
    with tarfile.open(dst, mode="a", format=tarfile.PAX_FORMAT) as tar:  # appends after the last member
        for i in range(n):
            tar.addfile(tarfile.TarInfo(f"x/{i}"), io.BytesIO(b""))
    return dst


def test_also_a_side_loaded_bundle_with_many_members_is_refused_before_it_is_parsed(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    fat = _with_many_members(kit["bundles"][2], tmp_path / f"{MODEL}-v2.bundle.tar", 20000)
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        assert agent.install_and_activate(fat) is False  # edgeship agent --install does exactly this
        refused = watch.wait("store-1", "refused", reason="too_large")  # not unlisted_member: never parsed that far
        assert "signed members allow at most" in refused["detail"]["message"]
        assert agent.store.versions() == []
        assert agent.install_and_activate(kit["bundles"][2]) is True  # the honest file installs
    finally:
        agent.stop()

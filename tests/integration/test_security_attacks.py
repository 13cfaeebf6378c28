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
import os
import subprocess
import sys
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

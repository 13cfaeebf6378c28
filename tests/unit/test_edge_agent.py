"""The agent end to end: config and CLI, start-up from the store, and updates over a REAL Mosquitto
(started by tests/conftest.py on an ephemeral loopback port; under CI=true a missing mosquitto fails)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from pydantic import ValidationError

from cloud.fleet.publish import announcement_for
from edge.agent import Agent
from edgeship import __version__
from edgeship.cli import build_parser, main
from edgeship.commands.agent import config_from_args
from edge.config import AgentConfig
from edge.store.model_store import ModelStore
from tests.bundle_kit import build_bundle, flip_member_byte
from models import topics
from models.broker import BrokerURL, new_client
from models.messages import DeviceState
from tests.conftest import free_port, wait_for

ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}
DEVICE = "store-1"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("bundles")
    return {v: build_bundle(out / f"favorita-demand-v{v}.bundle.tar", keys[0], version=v)[0] for v in (1, 2, 3)}


def config(tmp_path: Path, pem: Path, **kw) -> AgentConfig:
    fields = {
        "device_id": DEVICE,
        "state_dir": tmp_path / "state",
        "trust": [pem],
        "http": "127.0.0.1:0",
        "runtime": "fake",
    }
    return AgentConfig(**{**fields, **kw})


def health(agent: Agent) -> dict:
    return httpx.get(f"{agent.http_url}/healthz", timeout=5).json()




# -- config and CLI ---------------------------------------------------------------------------
def test_config_validation(tmp_path, keys):
    ok = config(tmp_path, keys[2], http="[::1]:0", broker="mqtt://127.0.0.1:1883", variants=["onnx-fp32"])
    assert ok.http_address == ("::1", 0) and ok.broker_url.port == 1883 and ok.fleet == "default"
    for bad in (
        {"device_id": "Store 1"},
        {"device_id": "models"},
        {"http": "localhost"},
        {"http": "1.2.3.4:70000"},
        {"broker": "mqtt://user:pw@host:1883"},
        {"broker": "http://host"},
        {"variants": ["tflite-fp64"]},
        {"runtime": "tensorflow"},
        {"trust": []},
        {"threads": 0},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            AgentConfig(**{"device_id": DEVICE, "state_dir": tmp_path, "trust": [keys[2]], **bad})
    for name, field in AgentConfig.model_fields.items():
        assert field.description, name


@pytest.fixture()
def restore_logging():
    """main() installs the JSON log handler on the root logger; put pytest's back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_args_to_config(tmp_path, keys, restore_logging):
    args = build_parser().parse_args(
        [
            "agent",
            "--device-id",
            "d1",
            "--state-dir",
            str(tmp_path),
            "--trust",
            str(keys[2]),
            "--trust",
            str(keys[2]),
            "--http",
            "127.0.0.1:0",
            "--variant",
            "tflite-int8",
            "onnx-fp32",
            "--threads",
            "2",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.trust == [keys[2], keys[2]] and cfg.variants == ["tflite-int8", "onnx-fp32"] and cfg.threads == 2
    assert cfg.broker is None and cfg.keep_versions == 3
    assert main(["agent", "--device-id", "BAD ID", "--state-dir", str(tmp_path), "--trust", str(keys[2])]) == 2


# -- start-up ---------------------------------------------------------------------------------
def test_starts_from_last_good_even_with_the_broker_down(tmp_path, keys, bundles):
    store = ModelStore(tmp_path / "state", [keys[1]])
    for v in (1, 2):
        store.install(bundles[v])
    store.activate(2)
    (store.models_dir / "2" / "tables.json").write_text("{}")  # the active version rotted on disk
    dead_broker = f"mqtt://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with Agent(config(tmp_path, keys[2], broker=dead_broker)) as agent:
        assert time.monotonic() - started < 5
        h = health(agent)
        assert h["status"] == "ok" and h["model"]["version"] == 1  # fell back
        r = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]})
        assert r.status_code == 200 and r.json()["model"]["version"] == 1
        assert store.active().version == 1
        assert not agent.mqtt.connected


def test_no_model_yet(tmp_path, keys):
    with Agent(config(tmp_path, keys[2])) as agent:
        h = health(agent)
        assert {k: h[k] for k in ("status", "device_id", "model", "version")} == {
            "status": "no_model", "device_id": DEVICE, "model": None, "version": __version__}
        assert h["disk"]["state"] == "ok" and h["disk"]["free_bytes"] > 0 and h["clock"] == "ok"
        assert httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]}).status_code == 503
        assert agent.device_state().status == "no_model"


def test_install_and_activate_directly(tmp_path, keys, bundles):
    with Agent(config(tmp_path, keys[2], keep_versions=1)) as agent:
        assert agent.install_and_activate(bundles[1])
        assert agent.install_and_activate(bundles[3])
        assert agent.predictor.version == 3 and agent.store.versions() == [3]
        assert not agent.install_and_activate(bundles[2])  # not newer
        assert agent.device_state().last_update.reason == "rollback"
        assert agent.store.versions() == [3]
        assert bundles[2].exists()  # a caller's file outside downloads/ is left alone


def test_a_bundle_superseded_while_installing_is_not_activated(tmp_path, keys, bundles):
    """A rollout's rollback command can arrive while the device gates the new version: the device
    then keeps serving what it ran (edge.delivery.updater.Delivery.superseded answers still_wanted)."""
    with Agent(config(tmp_path, keys[2])) as agent:
        assert agent.install_and_activate(bundles[1])
        assert not agent.install_and_activate(bundles[2], still_wanted=lambda: False)
        assert agent.predictor.version == 1 and agent.device_state().last_update.reason == "superseded"
        assert agent.store.versions() == [1]
        assert agent.install_and_activate(bundles[3], still_wanted=lambda: True)


# -- over MQTT ----------------------------------------------------------------------------------
class Fleet:
    """The cloud side as the test drives it: plain paho publishing, and a watcher of the device."""

    def __init__(self, broker: str, key=None) -> None:
        url = BrokerURL.parse(broker)
        self.key = key  # signs the targets of every announcement (devices refuse unsigned ones)
        self.messages: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        self.client = new_client("test-fleet", url)
        self.client.on_message = self._on_message
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        for leaf in ("availability", "state", "events"):
            self.client.subscribe(topics.device_wildcard("default", leaf), qos=1)

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.setdefault(msg.topic, []).append(msg.payload)

    def last(self, topic: str) -> bytes | None:
        with self.lock:
            got = self.messages.get(topic)
            return got[-1] if got else None

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(p) for p in self.messages.get(topics.events("default", DEVICE), [])]

    def publish_bundle(self, path: Path, chunk_size: int = 4096) -> None:
        ann, data = announcement_for(path, chunk_size, key=self.key)
        infos = [
            self.client.publish(
                topics.bundle_chunk("default", ann.bundle_id, i),
                data[i * chunk_size : (i + 1) * chunk_size],
                qos=1,
                retain=True,
            )
            for i in range(len(ann.chunk_sha256))
        ]
        infos.append(
            self.client.publish(topics.model_announce("default", ann.model), ann.model_dump_json(), qos=1, retain=True)
        )
        for info in infos:
            info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_update_over_mqtt_refuses_tampered_and_keeps_serving(tmp_path, keys, bundles, mosquitto):
    fleet = Fleet(mosquitto.url, key=keys[0])
    agent = Agent(config(tmp_path, keys[2], broker=mosquitto.url, keep_versions=2)).start()
    availability = topics.availability("default", DEVICE)
    try:
        wait_for(lambda: fleet.last(availability) == b"online", "online")
        # Garbage on the announce topic is counted, never fatal.
        fleet.client.publish(topics.model_announce("default", "favorita-demand"), b"{not json", qos=1).wait_for_publish(
            5
        )

        fleet.publish_bundle(bundles[1])
        wait_for(lambda: (health(agent)["model"] or {}).get("version") == 1, "v1 active")
        kinds = [
            e["kind"]
            for e in wait_for(
                lambda: (
                    [e for e in fleet.events() if e["detail"].get("version") == 1 and e["kind"] == "active"]
                    and fleet.events()
                ),
                "events",
            )
        ]
        assert [k for k in kinds if k in ("downloading", "received", "verified", "active")] == [
            "downloading",
            "received",
            "verified",
            "active",
        ]
        state = DeviceState.model_validate_json(fleet.last(topics.state("default", DEVICE)))
        assert state.status == "serving" and state.model.version == 1 and state.http == agent.http_url
        digest_v1 = health(agent)["model"]["digest"]

        # v2: validly signed, then one byte of the model member flipped; announced with matching hashes.
        bad = flip_member_byte(bundles[2], tmp_path / "favorita-demand-v2.bundle.tar", "models/tflite-fp32.tflite")
        fleet.publish_bundle(bad)
        refused = wait_for(lambda: [e for e in fleet.events() if e["kind"] == "refused"], "refusal")
        assert refused[0]["detail"]["version"] == 2 and refused[0]["detail"]["reason"] == "hash_mismatch"
        h = health(agent)
        assert h["model"]["version"] == 1 and h["model"]["digest"] == digest_v1
        assert httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]}).json()["model"]["version"] == 1
        assert not (tmp_path / "state" / "models" / "2").exists()
        assert list((tmp_path / "state" / "downloads").iterdir()) == []
        state = DeviceState.model_validate_json(fleet.last(topics.state("default", DEVICE)))
        assert state.last_update.outcome == "refused" and state.last_update.reason == "hash_mismatch"

        # A good v3 still goes through; the old predictor is swapped out.
        fleet.publish_bundle(bundles[3])
        wait_for(lambda: health(agent)["model"]["version"] == 3, "v3 active")
        metrics = httpx.get(f"{agent.http_url}/metrics").text
        assert 'edgeship_model_updates_total{outcome="refused"} 1.0' in metrics
        assert 'edgeship_model_updates_total{outcome="active"} 2.0' in metrics
        assert "edgeship_bad_messages_total 1.0" in metrics
        info = [line for line in metrics.splitlines() if line.startswith("edgeship_model_info{")]
        assert len(info) == 1 and 'version="3"' in info[0]
        assert agent.store.versions() == [1, 3]
    finally:
        agent.stop()
    assert fleet.last(availability) == b"offline"
    fleet.close()


def test_announce_filter_for_any_model():
    assert topics.model_announce("default", None) == "edgeship/default/models/+/announce"
    assert topics.model_announce("f1", "favorita-demand") == "edgeship/f1/models/favorita-demand/announce"


def test_start_failure_cleans_up(tmp_path, keys, bundles):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = Agent(config(tmp_path, keys[2], http=f"127.0.0.1:{port}"))
        agent.store.install(bundles[1])
        agent.store.activate(1)
        with pytest.raises(OSError):
            agent.start()
        assert agent.predictor is None  # the loaded model was closed again


def test_cli_process_serves_until_sigterm(tmp_path, keys, bundles):
    import signal
    import subprocess
    import sys

    store = ModelStore(tmp_path / "state", [keys[1]])
    store.install(bundles[1])
    store.activate(1)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "edgeship", "agent", "--device-id", DEVICE, "--state-dir", str(tmp_path / "state"),
           "--trust", str(keys[2]), "--http", "127.0.0.1:0", "--runtime", "fake"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # the serving URL, once it serves
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        assert httpx.get(f"{url}/healthz").json()["model"]["version"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        assert {"time", "level", "logger", "message"} <= set(logs[0])
        assert any(r["message"] == "agent stopped" for r in logs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stalled_transfer_is_abandoned_then_resumed(tmp_path, keys, bundles, mosquitto):
    fleet = Fleet(mosquitto.url, key=keys[0])
    cfg = config(tmp_path, keys[2], broker=mosquitto.url, chunk_timeout_s=0.2, transfer_retries=0)
    agent = Agent(cfg).start()
    try:
        assert agent.mqtt.wait_connected(10)
        chunk = 4096
        ann, data = announcement_for(bundles[1], chunk, key=keys[0])
        last = len(ann.chunk_sha256) - 1
        for i in range(last):  # every chunk but the last
            fleet.client.publish(
                topics.bundle_chunk("default", ann.bundle_id, i), data[i * chunk : (i + 1) * chunk], qos=1, retain=True
            ).wait_for_publish(5)
        announce = topics.model_announce("default", ann.model)
        fleet.client.publish(announce, ann.model_dump_json(), qos=1, retain=True).wait_for_publish(5)
        failed = wait_for(lambda: [e for e in fleet.events() if e["kind"] == "failed"], "stall", timeout=10)
        assert failed[0]["detail"]["reason"] == "stalled"
        part = tmp_path / "state" / "downloads" / f"{ann.bundle_id}.part"
        assert part.exists()  # kept for a resume
        fleet.client.publish(
            topics.bundle_chunk("default", ann.bundle_id, last), data[last * chunk :], qos=1, retain=True
        ).wait_for_publish(5)
        fleet.client.publish(announce, ann.model_dump_json(), qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: (health(agent)["model"] or {}).get("version") == 1, "v1 active after resume")
        assert not part.exists()
    finally:
        agent.stop()
        fleet.close()

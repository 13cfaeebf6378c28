"""MQTT security with the configuration deploy/mosquitto ships, on a REAL Mosquitto: TLS (a CA and
server certificate made here with ``cryptography``), the password file and ACL written by
``edgeship provision``: anonymous clients cannot connect, device A cannot publish a model or read
device B's telemetry, a device certificate works (mutual TLS), and the cloud identity rolls out to
a real agent that connects with ``mqtts://`` and credentials from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cloud.fleet import provision
from cloud.fleet.publish import PublishError, publish
from tests.bundle_kit import build_bundle
from models import topics
from models.broker import BrokerURL, new_client
from tests.conftest import Mosquitto, free_port
from tests.delivery_kit import keypair, start_agent, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLEET = "f1"


@pytest.fixture()
def secure(tmp_path, monkeypatch):
    broker_dir, creds = tmp_path / "broker", tmp_path / "creds"
    ca, ca_key = provision.make_ca(broker_dir)
    provision.make_server_cert(ca, ca_key, broker_dir, ["localhost", "127.0.0.1"])
    # through the CLI, as an operator would
    for args in (["cloud"], ["device", "store-a", "--fleet", FLEET], ["device", "store-b", "--fleet", FLEET, "--client-cert"]):
        out = subprocess.run([sys.executable, "-m", "edgeship", "provision", *args, "--broker-dir", str(broker_dir), "--out", str(creds)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
    shipped = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    mtls_port, cloud_port = free_port(), free_port()
    config = (
        shipped.replace("/etc/mosquitto/edgeship", str(broker_dir))
        .replace("listener 8883", "listener {port} 127.0.0.1")
        .replace("listener 8884 127.0.0.1", f"listener {cloud_port} 127.0.0.1")
        .replace("persistence true", "persistence false")
        .replace("\nuser mosquitto\n", "\n")  # the shipped broker runs as its own user (test_broker_persistence)
        + "\nlog_dest stderr\n"
        # a second listener exactly as the commented mutual-TLS lines describe
        + f"listener {mtls_port} 127.0.0.1\ncafile {broker_dir}/ca.pem\ncertfile {broker_dir}/server.crt\n"
        + f"keyfile {broker_dir}/server.key\nrequire_certificate true\nuse_identity_as_username true\n"
        + ("user root\n" if os.geteuid() == 0 else "")  # test files live in root's private temp dir
    )
    (tmp_path / "mq").mkdir()
    broker = Mosquitto(tmp_path / "mq", config=config).start()
    # the device and cloud credentials as provisioned
    env = {name: dict(line.split("=", 1) for line in (creds / name / "edgeship.env").read_text().splitlines())
           for name in ("edgeship-cloud", "store-a", "store-b")}  # fmt: skip
    yield {"broker": broker, "url": f"mqtts://127.0.0.1:{broker.port}", "mtls_port": mtls_port, "env": env,
           "cloud_url": f"mqtts://127.0.0.1:{cloud_port}",
           "ca": str(ca), "dir": broker_dir, "monkeypatch": monkeypatch}  # fmt: skip
    broker.stop()


def _use(s: dict, identity: str | None) -> None:
    """Point EDGESHIP_MQTT_* at ``identity``'s credentials (None: TLS with the CA, no credentials)."""
    mp = s["monkeypatch"]
    for k in ("EDGESHIP_MQTT_USERNAME", "EDGESHIP_MQTT_PASSWORD", "EDGESHIP_MQTT_CERT", "EDGESHIP_MQTT_KEY"):
        mp.delenv(k, raising=False)
    mp.setenv("EDGESHIP_MQTT_CA", s["ca"])
    for k, v in (s["env"][identity] if identity else {}).items():
        mp.setenv(k, v)


class Client:
    """A paho client built by models.broker.new_client from the environment (what agent and CLI use)."""

    def __init__(self, url: str, name: str) -> None:
        u = BrokerURL.parse(url)
        self.got: list[tuple[str, bytes]] = []
        self.rc = None
        self.subacks: list = []
        self.ready = threading.Event()
        self.c = new_client(name, u)
        self.c.on_connect = lambda c, _u, _f, rc, _p: (setattr(self, "rc", rc), self.ready.set())
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, m.payload))
        self.c.on_subscribe = lambda _c, _u, _m, codes, _p: self.subacks.append(codes)
        self.c.connect(u.host, u.port)
        self.c.loop_start()
        self.ready.wait(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_tls_password_acl_and_client_certificates(secure, tmp_path):
    s, url = secure, secure["url"]
    # anonymous (TLS, no credentials): refused
    _use(s, None)
    anon = Client(url, "anon")
    assert anon.rc is not None and anon.rc.is_failure
    anon.close()
    # a wrong password: refused
    _use(s, "store-a")
    s["monkeypatch"].setenv("EDGESHIP_MQTT_PASSWORD", "not-it")
    bad = Client(url, "bad")
    assert bad.rc is not None and bad.rc.is_failure
    bad.close()
    _use(s, "edgeship-cloud")
    cloud = Client(url, "cloud")
    assert not cloud.rc.is_failure
    cloud.c.subscribe(f"{topics.PREFIX}/#", qos=1)
    _use(s, "store-a")
    a = Client(url, "store-a")
    assert not a.rc.is_failure
    # device B by client certificate only (mutual TLS, CN = username), on the require_certificate listener
    _use(s, "store-b")
    s["monkeypatch"].delenv("EDGESHIP_MQTT_PASSWORD")
    s["monkeypatch"].delenv("EDGESHIP_MQTT_USERNAME")
    b = Client(f"mqtts://127.0.0.1:{s['mtls_port']}", "store-b")
    assert not b.rc.is_failure
    time.sleep(0.3)

    # device A may not publish a model, an assignment for B, or B's state; it may publish its own state
    a.c.subscribe(topics.telemetry(FLEET, "store-b"), qos=1)
    a.c.subscribe(topics.model_announce(FLEET, None), qos=1)
    for topic in (topics.model_announce(FLEET, "favorita-demand"), topics.command(FLEET, "store-b"),
                  topics.state(FLEET, "store-b"), topics.state(FLEET, "store-a")):  # fmt: skip
        a.c.publish(topic, b'{"forged": true}', qos=1).wait_for_publish(5)
    # device B publishes its telemetry (allowed), which A must not see
    b.c.publish(topics.telemetry(FLEET, "store-b"), b'{"seq": 1}', qos=1).wait_for_publish(5)
    # the cloud publishes a model announcement, which A may read
    cloud.c.publish(topics.model_announce(FLEET, "favorita-demand"), b"{}", qos=1).wait_for_publish(5)
    time.sleep(0.8)
    forged = b'{"forged": true}'
    assert (topics.state(FLEET, "store-a"), forged) in cloud.got  # its own state: delivered
    assert (topics.model_announce(FLEET, "favorita-demand"), forged) not in cloud.got  # a model: denied
    assert (topics.command(FLEET, "store-b"), forged) not in cloud.got  # a command: denied
    assert (topics.state(FLEET, "store-b"), forged) not in cloud.got  # another device's state: denied
    assert (topics.model_announce(FLEET, "favorita-demand"), b"{}") in cloud.got  # the cloud's own: fine
    assert (topics.telemetry(FLEET, "store-b"), b'{"seq": 1}') in cloud.got
    a_saw = [t for t, _ in a.got]
    assert topics.telemetry(FLEET, "store-b") not in a_saw  # cannot read B's telemetry
    assert topics.model_announce(FLEET, "favorita-demand") in a_saw  # can read its fleet's models
    for c in (a, b, cloud):
        c.close()


def test_cloud_identity_rolls_out_to_an_agent_over_mqtts(secure, tmp_path):
    s = secure
    k = keypair(tmp_path / "keys")
    bundle, _ = build_bundle(tmp_path / "favorita-demand-v1.bundle.tar", k.private, version=1)
    _use(s, "store-a")  # the agent reads its credentials from the environment at start
    agent = start_agent(tmp_path, s["url"], "store-a", fleet=FLEET, trust=[k.pub_path])
    try:
        # a device identity cannot roll out: the ACL keeps it off the cloud's topics, and publish says so
        # (it cannot even read the fleet's announcement) instead of reporting a send the broker dropped
        with pytest.raises(PublishError, match="ACL"):
            publish(bundle, s["url"], key=k.key_path, fleet=FLEET, progress=False, timeout=10)
        time.sleep(1.0)
        assert agent.predictor is None and agent.mqtt.delivery.info() is None
        _use(s, "edgeship-cloud")
        publish(bundle, s["url"], key=k.key_path, fleet=FLEET, progress=False)
        wait_for(lambda: agent.predictor is not None and agent.predictor.version == 1, "v1 over mqtts", timeout=20)
        # and the fleet view sees its retained state through TLS + ACL
        out = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "status", "--broker", s["url"], "--fleet", FLEET, "--json"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ))  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert '"device": "store-a"' in out.stdout and '"version": 1' in out.stdout
    finally:
        agent.stop()

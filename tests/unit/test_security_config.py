"""Issue 7, "Also": provisioning and client defaults that keep secrets where they belong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.broker import DEFAULT_CA, BrokerURL, new_client

ROOT = Path(__file__).resolve().parents[2]


def test_credentials_over_plain_mqtt_need_an_explicit_opt_in(monkeypatch):
    monkeypatch.setenv("EDGESHIP_MQTT_USERNAME", "store-1")
    monkeypatch.setenv("EDGESHIP_MQTT_PASSWORD", "secret")
    monkeypatch.delenv("EDGESHIP_MQTT_ALLOW_PLAIN", raising=False)
    with pytest.raises(ValueError, match="clear text"):
        new_client("store-1", BrokerURL.parse("mqtt://127.0.0.1:1883"))
    monkeypatch.setenv("EDGESHIP_MQTT_ALLOW_PLAIN", "1")
    assert new_client("store-1", BrokerURL.parse("mqtt://127.0.0.1:1883")) is not None
    monkeypatch.delenv("EDGESHIP_MQTT_USERNAME")
    monkeypatch.delenv("EDGESHIP_MQTT_ALLOW_PLAIN")
    assert new_client("anon", BrokerURL.parse("mqtt://127.0.0.1:1883")) is not None  # no credentials: nothing to leak


def test_with_tls_the_fleet_ca_is_the_default_trust_not_the_system_store(monkeypatch, tmp_path):
    for k in ("EDGESHIP_MQTT_USERNAME", "EDGESHIP_MQTT_CA", "EDGESHIP_MQTT_SYSTEM_CA"):
        monkeypatch.delenv(k, raising=False)
    if Path(DEFAULT_CA).exists():
        pytest.fail(f"{DEFAULT_CA} exists on this machine; the test needs it absent")
    with pytest.raises(ValueError, match="no fleet CA"):
        new_client("x", BrokerURL.parse("mqtts://127.0.0.1:8883"))
    monkeypatch.setenv("EDGESHIP_MQTT_SYSTEM_CA", "1")
    assert new_client("x", BrokerURL.parse("mqtts://127.0.0.1:8883")) is not None


def test_provision_ca_keeps_the_ca_key_out_of_the_broker_folder(tmp_path):
    broker, keys = tmp_path / "broker", tmp_path / "ca-key"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgeship", "provision", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    out = run("ca", "--broker-dir", str(broker), "--host", "localhost", "--ca-key-dir", str(keys))
    assert out.returncode == 0, out.stderr
    assert (broker / "ca.pem").exists() and not (broker / "ca.key").exists() and (keys / "ca.key").exists()
    assert oct((keys / "ca.key").stat().st_mode & 0o777) == "0o600"
    same = run("ca", "--broker-dir", str(broker), "--host", "localhost", "--ca-key-dir", str(broker))
    assert same.returncode != 0 and "must not be the broker's folder" in same.stderr
    # a client certificate then needs the key given explicitly
    out = run("device", "store-1", "--fleet", "f1", "--out", str(tmp_path / "creds"), "--broker-dir", str(broker), "--client-cert")
    assert out.returncode != 0 and "CA key" in out.stderr
    out = run("device", "store-1", "--fleet", "f1", "--out", str(tmp_path / "creds"), "--broker-dir", str(broker),
              "--client-cert", "--ca-key", str(keys / "ca.key"))  # fmt: skip
    assert out.returncode == 0, out.stderr

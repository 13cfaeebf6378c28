"""Rollout planning and abort rules, the fleet table, provisioning (password hashes, ACL), the pull's
range bookkeeping and the delivery CLI's argument checks — no broker needed except where noted."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.fleet import provision
from cloud.fleet.view import DeviceView, format_table
from cloud.fleet.rollout import AbortRule, Rollout, RolloutError, parse_rules, parse_waves, plan_waves
from edge.delivery.updater import ranges
from tests.bundle_kit import build_bundle
from models.messages import ActiveModel, DeviceState, UpdateOutcome
from tests.delivery_kit import keypair

ROOT = Path(__file__).resolve().parents[2]


def test_waves_and_canary():
    assert parse_waves("10%,50%,100%") == [0.1, 0.5, 1.0]
    assert parse_waves("30%,60%") == [0.3, 1.0]  # the last wave always reaches everyone
    for bad in ("50%,10%", "0%", "abc", "150%"):
        with pytest.raises(RolloutError):
            parse_waves(bad)
    devices = [f"d{i}" for i in range(10)]
    assert plan_waves(devices, 1, [1.0]) == [["d0"], devices[1:]]
    assert plan_waves(devices[:3], 1, [0.1, 0.5, 1.0]) == [["d0"], ["d1"], ["d2"]]  # each wave adds one at least
    assert plan_waves(devices[:2], 5, [1.0]) == [["d0", "d1"]]
    assert plan_waves([], 1, [1.0]) == []
    assert sum(map(len, plan_waves(devices, 2, [0.25, 0.5, 1.0]))) == 10


def test_abort_rules():
    rules = parse_rules(["nwrmsle>0.6,latency_p99_ms>1.5x", "failed>2"])
    assert [str(r) for r in rules] == ["gate_failed>0", "nwrmsle>0.6", "latency_p99_ms>1.5x", "failed>2"]
    r = AbortRule.parse("error_rate>=0.01")
    assert r.breached(0.01) and not r.breached(0.009) and not r.breached(None) and not r.breached(float("nan"))
    rel = AbortRule.parse("latency_p99_ms>1.5x")
    assert rel.breached(31, baseline=20) and not rel.breached(29, baseline=20) and not rel.breached(99, baseline=None)
    with pytest.raises(RolloutError):
        AbortRule.parse("latency is high")


def test_controller_aborts_on_ml_health_from_gate_figures_and_telemetry(tmp_path):
    """The controller's own bookkeeping, fed device messages as paho would (no broker)."""
    k = keypair(tmp_path / "k")
    bundle, _ = build_bundle(tmp_path / "favorita-demand-v2.bundle.tar", k.private, version=2)
    r = Rollout(bundle, "mqtt://127.0.0.1:1", key=k.key_path, state_dir=tmp_path / "s",
                abort_if=["nwrmsle>0.6", "latency_p99_ms>1.5x"])  # fmt: skip
    r.state = {"phase": "running", "devices": {d: {"status": "pending", "previous": None} for d in ("a", "b")}}
    r._on_device("a", "telemetry", {"data": {"latency_p99_ms": 20.0, "requests": 5}})  # before: the baseline
    r._set("a", "assigned")
    for kind in ("downloading", "received", "verified"):
        r._on_device("a", "events", {"kind": kind, "detail": {"version": 2}})
    assert r.state["devices"]["a"]["status"] == "verified"
    r._on_device("a", "events", {"kind": "gate_passed", "detail": {"version": 2, "nwrmsle": 0.5, "variant": "x"}})
    r._on_device("a", "events", {"kind": "active", "detail": {"version": 2}})
    assert r.state["devices"]["a"]["status"] == "active" and r._breach(["a", "b"]) is None
    r._on_device("a", "telemetry", {"data": {"latency_p99_ms": 25.0}})
    assert r._breach(["a"]) is None  # 1.25x: fine
    r._on_device("a", "telemetry", {"data": {"latency_p99_ms": 35.0}})
    assert r._breach(["a"]) == "latency_p99_ms>1.5x: a reports latency_p99_ms=35"
    r.latest.clear()
    r.state["devices"]["a"]["figures"]["nwrmsle"] = 0.7
    assert r._breach(["a"]).startswith("nwrmsle>0.6")
    # an install failure on b; a transient one does not count
    r._set("b", "assigned")
    r._on_device("b", "events", {"kind": "failed", "detail": {"version": 2, "reason": "stalled"}})
    assert r.state["devices"]["b"]["status"] == "assigned"
    r._on_device("b", "events", {"kind": "refused", "detail": {"version": 2, "reason": "hash_mismatch"}})
    assert r._breach(["b"]) == "failed>0: b (hash_mismatch)"
    # the retained state alone is enough to see a device active (events may be missed)
    r.state["devices"]["b"]["status"] = "assigned"
    state = DeviceState(device_id="b", fleet="default", status="serving",
                        model=ActiveModel(name="favorita-demand", version=2, digest=r.bundle.sha256, variant="x", runtime="fake"),
                        gate=UpdateOutcome(version=2, outcome="gate_passed", figures={"nwrmsle": 0.4}))  # fmt: skip
    r._on_device("b", "state", state)
    assert r.state["devices"]["b"]["status"] == "active" and r.state["devices"]["b"]["gate"] == "gate_passed"


def test_disk_faults_mark_a_device_unhealthy_never_the_model_bad(tmp_path):
    """models.messages.TRANSIENT_REASONS is the one list: a device's disk fault keeps it waiting
    (unhealthy, it retries), and a wave whose only late devices are unhealthy is not aborted."""
    from models.messages import TRANSIENT_REASONS

    assert {"disk_full", "disk_readonly", "disk_io", "stalled"} <= TRANSIENT_REASONS
    k = keypair(tmp_path / "k")
    bundle, _ = build_bundle(tmp_path / "favorita-demand-v2.bundle.tar", k.private, version=2)
    r = Rollout(bundle, "mqtt://127.0.0.1:1", key=k.key_path, state_dir=tmp_path / "s", gate_timeout=0.0)
    r.state = {"phase": "running", "waves": [{"devices": ["a", "b"]}],
               "devices": {d: {"status": "pending", "previous": None} for d in ("a", "b")}}  # fmt: skip
    for d in ("a", "b"):
        r._set(d, "assigned")
    for reason in ("disk_full", "disk_readonly", "disk_io"):
        r._on_device("b", "events", {"kind": "failed", "detail": {"version": 2, "reason": reason}})
        assert r.state["devices"]["b"]["status"] == "assigned" and r.state["devices"]["b"]["unhealthy"] == reason
    assert r._breach(["a", "b"]) is None  # not a failure of the model
    r._on_device("a", "events", {"kind": "active", "detail": {"version": 2}})
    assert r._watch_wave(0, ["a", "b"]) is None  # b is late for its own disk: the wave is not aborted
    assert r.state["devices"]["b"]["status"] == "unhealthy" and r.state["devices"]["b"]["reason"] == "disk_io"
    # every device of a wave unhealthy: stop, and say it is the devices, not the model
    r.state["devices"]["a"].update(status="assigned", unhealthy="disk_full")
    r.state["devices"]["b"]["status"] = "assigned"
    assert "device faults, not the model" in r._watch_wave(0, ["a", "b"])
    # a device that gets going again is healthy again
    r._on_device("b", "events", {"kind": "downloaded", "detail": {"version": 2}})
    assert "unhealthy" not in r.state["devices"]["b"]


def test_fleet_table_and_gate_from_state():
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    v = DeviceView("store-1", online=True)
    v.state = DeviceState(
        device_id="store-1", fleet="default", status="serving",
        model=ActiveModel(name="m", version=3, digest="a" * 64, variant="tflite-int8", runtime="litert"),
        hardware={"machine": "aarch64"}, attributes={"store_type": "A", "hardware": "rpi4"},
        gate=UpdateOutcome(version=3, outcome="gate_failed", reason="gate_failed", figures={"nwrmsle": 0.81}),
    )  # fmt: skip
    v.seen(now - dt.timedelta(seconds=42))
    off = DeviceView("store-2", online=False)
    table = format_table([v.row(), off.row()], now=now)
    lines = table.splitlines()
    assert lines[0].split() == ["device", "online", "model", "last", "seen", "gate", "hardware", "attributes"]
    assert "store-1  yes" in lines[1] and "v3" in lines[1] and "42s ago" in lines[1]
    assert "failed (v3: nwrmsle 0.81)" in lines[1] and "aarch64 rpi4" in lines[1] and "store_type=A" in lines[1]
    assert "store-2  no" in lines[2] and "none" in lines[2]
    assert v.attributes() == {"machine": "aarch64", "store_type": "A", "hardware": "rpi4"}
    json.dumps(v.row())  # --json output is plain JSON


def test_password_hash_matches_mosquitto_passwd(tmp_path):
    hashed = provision.mosquitto_hash("s3cret")
    assert provision.check_password("s3cret", hashed) and not provision.check_password("other", hashed)
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        return  # the broker test (integration) proves the format against Mosquitto itself
    f = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(f), "u", "s3cret"], check=True, capture_output=True)
    theirs = f.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$101$") and provision.check_password("s3cret", theirs)


def test_provisioning_writes_password_acl_and_credentials(tmp_path):
    broker, out = tmp_path / "broker", tmp_path / "creds"
    provision.make_ca(broker)
    provision.provision_cloud(broker, out)
    files = provision.provision_device(broker, "store-7", "f1", out, client_cert=True)
    again = provision.provision_device(broker, "store-7", "f1", out)  # re-keying replaces the entry
    users = [line.split(":")[0] for line in (broker / "passwd").read_text().splitlines()]
    assert users == ["edgeship-cloud", "store-7"]
    acl = (broker / "acl").read_text()
    assert "user store-7\ntopic write edgeship/f1/store-7/availability" in acl
    assert "topic read edgeship/f1/store-7/set" in acl and "topic write edgeship/f1/store-7/set" not in acl
    assert "user edgeship-cloud\ntopic readwrite edgeship/#" in acl
    env = dict(line.split("=", 1) for line in Path(again["env"]).read_text().splitlines())
    assert env["EDGESHIP_MQTT_USERNAME"] == "store-7" and env["EDGESHIP_MQTT_CA"].endswith("ca.pem")
    assert provision.check_password(env["EDGESHIP_MQTT_PASSWORD"], (broker / "passwd").read_text().split("store-7:")[1].strip())
    assert Path(files["cert"]).exists() and oct(Path(files["key"]).stat().st_mode)[-3:] == "600"
    with pytest.raises(ValueError):
        provision.provision_device(broker, "Bad Id", "f1", out)


def test_ranges():
    assert ranges([7, 1, 2, 3]) == [(1, 4), (7, 8)]
    assert ranges([]) == []


def test_cli_requires_a_key_to_publish_and_reports_bad_input(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "edgeship", *a], cwd=ROOT, capture_output=True, text=True, timeout=60)  # noqa: E731
    out = run("publish", str(tmp_path / "x.tar"), "--broker", "mqtt://127.0.0.1:1")
    assert out.returncode == 2 and "--key" in out.stderr
    out = run("rollout", "status", "--state-dir", str(tmp_path))
    assert out.returncode == 1 and "no rollout" in out.stderr
    out = run("keys", "init-root", "--out", str(tmp_path / "k"))
    assert out.returncode == 0 and (tmp_path / "k" / "root.key").stat().st_mode & 0o777 == 0o600
    out = run("keys", "init", "--out", str(tmp_path / "k"))
    out = run("keys", "sign", "--root", str(tmp_path / "k" / "root.key"), "--signing", str(tmp_path / "k" / "signing.pub"))
    assert out.returncode == 0 and "key list v1" in out.stdout, out.stderr
    out = run("keys", "revoke", "0123456789abcdef", "--root", str(tmp_path / "k" / "root.key"),
              "--keylist", str(tmp_path / "k" / "keylist.json"))  # fmt: skip
    assert out.returncode == 0 and "v2 revoked ['0123456789abcdef']" in out.stdout, out.stderr


def test_baselines_are_saved_with_the_rollout_and_win_over_figures_heard_after_a_restart(tmp_path):
    """Relative rules after a controller restart compare with the figures from before the rollout."""
    k = keypair(tmp_path / "k")
    bundle, _ = build_bundle(tmp_path / "favorita-demand-v2.bundle.tar", k.private, version=2)
    first = Rollout(bundle, "mqtt://127.0.0.1:1", key=k.key_path, state_dir=tmp_path / "s", abort_if=["latency_p99_ms>1.5x"])
    first.state = {"id": "r1", "phase": "running", "devices": {d: {"status": "pending", "previous": None} for d in ("a", "b")}}
    first._on_device("a", "telemetry", {"data": {"latency_p99_ms": 20.0}})
    first._on_device("b", "telemetry", {"data": {"latency_p99_ms": 10.0}})
    first._on_device("x", "telemetry", {"data": {"latency_p99_ms": 99.0}})  # not in this rollout: not saved
    first._set("a", "active")
    first._write()
    saved = json.loads((tmp_path / "s" / "rollout.json").read_text())
    assert saved["baselines"] == {"a": {"latency_p99_ms": 20.0}, "b": {"latency_p99_ms": 10.0}}

    again = Rollout(bundle, "mqtt://127.0.0.1:1", key=k.key_path, state_dir=tmp_path / "s", abort_if=["latency_p99_ms>1.5x"])
    again._on_device("a", "telemetry", {"data": {"latency_p99_ms": 35.0}})  # heard while discovering: already on v2
    again._on_device("b", "telemetry", {"data": {"latency_p99_ms": 12.0}})  # still pending: a fresher baseline is fine
    again._restore(saved)
    assert again.baseline["a"] == {"latency_p99_ms": 20.0} and again.baseline["b"] == {"latency_p99_ms": 12.0}
    again._on_device("a", "telemetry", {"data": {"latency_p99_ms": 35.0}})
    assert again._breach(["a"]) == "latency_p99_ms>1.5x: a reports latency_p99_ms=35"

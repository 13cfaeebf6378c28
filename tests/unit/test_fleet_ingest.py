"""Fleet ingest and exporter: dedup by sequence, gaps, late fills, resets, bad messages, expiry,
saved state, and the exposition (checked by ``promtool check metrics``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cloud.fleet.exporter import fleet_registry
from cloud.fleet.ingest import FleetState
from cloud.fleet.report import format_report, realised_report
from models.messages import DeviceState, ActiveModel
from models.serving import TelemetryRecord
from tests.conftest import require

T = "edgeship/default/{}/telemetry"
E = "edgeship/default/{}/events"

DATA = {
    "model": {"version": 3, "digest": "a" * 64, "name": "favorita-demand", "variant": "tflite-int8"},
    "store": "7",
    "metrics": {
        "requests": {"http:ok": 10.0, "mqtt:invalid": 2.0},
        "latency": {"http": {"le": [0.001, 0.01], "counts": [4.0, 9.0], "sum": 0.03, "count": 10.0}},
        "gate_runs": {"passed": 1.0},
        "updates": {"active": 1.0},
        "rollbacks": {},
    },
    "drift_psi": {"onpromotion": 0.31, "store_nbr": 0.01},
    "realised": [{"store_nbr": 7, "model": "favorita-demand", "version": 3, "rows": 4, "nwrmsle": 0.5, "offline_nwrmsle": 0.45}],
    "dropped_total": 0,
}


def tele(device: str, seq: int, data: dict | None = None) -> bytes:
    return TelemetryRecord(device_id=device, seq=seq, data=DATA if data is None else data).model_dump_json().encode()


def event(device: str, seq: int, kind: str = "active") -> bytes:
    return json.dumps({"device_id": device, "kind": kind, "seq": seq, "detail": {}}).encode()


def samples(state: FleetState) -> dict[tuple[str, tuple], float]:
    text = generate_latest(fleet_registry(state)).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(state: FleetState, name: str, **labels: str) -> float | None:
    for (n, lab), v in samples(state).items():
        if n == name and all(dict(lab).get(k) == w for k, w in labels.items()):
            return v
    return None


def test_dedup_gaps_late_fill_and_reset():
    s = FleetState()
    assert s.handle(T.format("d1"), tele("d1", 1)) == "ok"
    assert s.handle(E.format("d1"), event("d1", 2)) == "ok"
    assert s.handle(T.format("d1"), tele("d1", 2)) == "duplicate"  # same seq from the other topic
    assert s.handle(T.format("d1"), tele("d1", 6)) == "ok"  # 3, 4, 5 missing
    rec = s.snapshot()[0]
    assert (rec.gaps, rec.gap_messages, sorted(rec.missing), rec.duplicates) == (1, 3, [3, 4, 5], 1)
    assert s.handle(T.format("d1"), tele("d1", 4)) == "ok"  # late: fills a hole
    assert s.handle(T.format("d1"), tele("d1", 4)) == "duplicate"
    rec = s.snapshot()[0]
    assert sorted(rec.missing) == [3, 5] and rec.late == 1 and rec.received == {"telemetry": 3, "events": 1}
    assert s.handle(T.format("d1"), tele("d1", 1)) == "ok"  # the device lost its state: counts again
    assert s.snapshot()[0].resets == 1
    assert value(s, "edgeship_fleet_telemetry_gaps_total", device="d1") == 1
    assert value(s, "edgeship_fleet_seq_duplicates_total", device="d1") == 2


def test_bad_messages_dropped_and_counted_never_fatal():
    s = FleetState()
    assert s.handle(T.format("d1"), b"{not json") == "json"
    assert s.handle(T.format("d1"), b'{"device_id": "d1", "seq": 0}') == "schema"
    assert s.handle(T.format("d1"), tele("d2", 1)) == "device_mismatch"
    assert s.handle("edgeship/default/Bad Id/telemetry", tele("d1", 1)) == "topic"
    assert s.handle(E.format("d1"), b'{"device_id": "d1", "kind": "x", "extra": 1}') == "schema"
    assert s.handle(T.format("d1"), tele("d1", 1)) == "ok"  # the device still counts afterwards
    assert value(s, "edgeship_fleet_bad_messages_total", reason="schema") == 2
    assert value(s, "edgeship_fleet_bad_messages_total", reason="json") == 1
    assert value(s, "edgeship_fleet_bad_messages_total", reason="device_mismatch") == 1


def test_per_device_metrics_carry_fleet_device_store_version_variant():
    s = FleetState()
    s.handle(T.format("d1"), tele("d1", 1))
    s.handle("edgeship/default/d1/availability", b"online")
    lab = dict(fleet="default", device="d1", store="7", model_version="3", variant="tflite-int8")
    assert value(s, "edgeship_fleet_device_up", **lab) == 1
    assert value(s, "edgeship_fleet_requests_total", transport="http", outcome="ok", **lab) == 10
    assert value(s, "edgeship_fleet_request_duration_seconds_bucket", le="0.01", **lab) == 9
    assert value(s, "edgeship_fleet_request_duration_seconds_count", **lab) == 10
    assert value(s, "edgeship_fleet_drift_psi", feature="onpromotion", **lab) == pytest.approx(0.31)
    assert value(s, "edgeship_fleet_gate_runs_total", result="passed", **lab) == 1
    assert value(s, "edgeship_fleet_realised_nwrmsle", store_nbr="7", **lab) == 0.5
    assert value(s, "edgeship_fleet_offline_nwrmsle", store_nbr="7", **lab) == 0.45
    s.handle("edgeship/default/d1/availability", b"offline")
    assert value(s, "edgeship_fleet_device_up", device="d1") == 0
    assert value(s, "edgeship_fleet_devices", status="offline") == 1


def test_state_sets_labels_and_pending_delivery():
    s = FleetState()
    state = DeviceState(
        device_id="d1", fleet="default", status="serving", attributes={"store_nbr": "4"},
        model=ActiveModel(name="m", version=2, digest="b" * 64, variant="onnx-fp32", runtime="onnxruntime"),
        delivery={"state": "downloading", "version": 3, "have": 5, "total": 20},
    )
    assert s.handle("edgeship/default/d1/state", state.model_dump_json().encode(), retained=True) == "ok"
    lab = dict(device="d1", store="4", model_version="2", variant="onnx-fp32")
    assert value(s, "edgeship_fleet_delivery_pending", **lab) == 1
    assert value(s, "edgeship_fleet_delivery_progress", **lab) == 0.25


def test_vanished_devices_expire_and_old_retained_state_does_not_return_them():
    s = FleetState(expire_after_s=60)
    s.handle(T.format("d1"), tele("d1", 1), now=time.time() - 120)
    s.handle(T.format("d2"), tele("d2", 1))
    assert {d.device for d in s.snapshot()} == {"d1", "d2"}
    assert value(s, "edgeship_fleet_device_up", device="d1") is None  # expired at scrape
    assert value(s, "edgeship_fleet_devices_expired_total") == 1
    old = DeviceState(device_id="d1", fleet="default", status="serving")
    old = old.model_copy(update={"updated_at": old.updated_at.replace(year=2000)})
    assert s.handle("edgeship/default/d1/state", old.model_dump_json().encode(), retained=True) == "ignored"
    assert s.handle("edgeship/default/d1/availability", b"online", retained=True) == "ignored"
    assert {d.device for d in s.snapshot()} == {"d2"}


def test_state_saved_and_restored_invents_no_gap(tmp_path):
    s = FleetState(state_dir=tmp_path)
    for seq in range(1, 4):
        s.handle(T.format("d1"), tele("d1", seq))
    s.save()
    again = FleetState(state_dir=tmp_path)
    assert again.handle(T.format("d1"), tele("d1", 3)) == "duplicate"
    assert again.handle(T.format("d1"), tele("d1", 4)) == "ok"
    assert again.snapshot()[0].gaps == 0


def test_report_pools_devices_per_store_and_version():
    s = FleetState()
    s.handle(T.format("d1"), tele("d1", 1))
    d2 = dict(DATA, realised=[{"store_nbr": 7, "model": "favorita-demand", "version": 3, "rows": 12, "nwrmsle": 1.0}])
    s.handle(T.format("d2"), tele("d2", 1, d2))
    [row] = realised_report(s.snapshot())
    assert row["rows"] == 16 and row["devices"] == 2 and row["offline_nwrmsle"] == 0.45
    assert row["realised_nwrmsle"] == pytest.approx(((4 * 0.25 + 12 * 1.0) / 16) ** 0.5, abs=1e-6)
    assert "0.4500" in format_report([row])


def test_promtool_check_metrics_on_the_exposition():
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (apt-get install prometheus)")
    s = FleetState()
    s.handle(T.format("d1"), tele("d1", 1))
    s.handle(T.format("d1"), tele("d1", 5))
    s.handle(T.format("d1"), b"junk")
    text = generate_latest(fleet_registry(s))
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()

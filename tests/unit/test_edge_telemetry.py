"""edge.monitoring.telemetry: the on-disk spool (sequence, crash recovery, bound) and delivery through a fake link."""

from __future__ import annotations

import json
import threading
import time

from prometheus_client import CollectorRegistry

from edge.monitoring.telemetry import Spool, Telemetry, TelemetryConfig
from models.messages import DeviceEvent
from models.serving import TelemetryRecord


def payload(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_sequence_continues_across_restarts_and_acks(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1024)
    assert [spool.append("t/a", payload) for _ in range(5)] == [1, 2, 3, 4, 5]
    spool.ack(3)
    spool.close()
    again = Spool(tmp_path, segment_bytes=1024)
    assert [s for s, _, _ in again.peek(10)] == [4, 5]  # delivered ones are not sent again
    assert again.append("t/a", payload) == 6
    again.ack(6)
    again.close()
    third = Spool(tmp_path)
    assert third.pending == 0 and third.next_seq == 7


def test_a_torn_last_line_is_cut_off(tmp_path):
    spool = Spool(tmp_path)
    for _ in range(3):
        spool.append("t/a", payload)
    spool.close()
    seg = next(tmp_path.glob("seg-*.log"))
    with open(seg, "ab") as fh:
        fh.write(b"4\tt/a\t{\"seq\": 4")  # power cut mid-write
    again = Spool(tmp_path)
    assert [s for s, _, _ in again.peek(10)] == [1, 2, 3]
    assert again.append("t/a", payload) == 4
    assert seg.read_bytes().endswith(b"\n")


def test_bounded_oldest_dropped_and_counted(tmp_path):
    dropped = []
    spool = Spool(tmp_path, max_bytes=16 << 10, segment_bytes=4 << 10, on_drop=dropped.append)
    big = b"x" * 500
    for _ in range(200):
        spool.append("t/a", lambda seq: big)
    assert spool.bytes <= 16 << 10
    pending = [s for s, _, _ in spool.peek(1000)]
    assert pending[-1] == 200 and pending == list(range(pending[0], 201))  # the newest, contiguous
    assert sum(dropped) == spool.dropped == pending[0] - 1  # every dropped one counted


class FakeInfo:
    def __init__(self, ok: bool) -> None:
        self.rc = 0
        self.ok = ok

    def wait_for_publish(self, timeout: float | None = None) -> None:
        if not self.ok:
            raise RuntimeError("connection lost")

    def is_published(self) -> bool:
        return self.ok


class FakeLink:
    """What Telemetry needs of edge.delivery.link.MqttLink: client.publish, connected, event_sink."""

    def __init__(self) -> None:
        self.connected = False
        self.sent: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.client = self
        self.event_sink = None

    def publish(self, topic: str, data: bytes, qos: int = 0) -> FakeInfo:
        with self.lock:
            if self.connected:
                self.sent.append((topic, json.loads(data)))
            return FakeInfo(self.connected)


def test_events_and_telemetry_share_one_sequence_and_survive_an_outage(tmp_path):
    registry = CollectorRegistry()
    tele = Telemetry(
        TelemetryConfig(interval_s=0.05, fsync=False),
        device_id="store-1",
        fleet="default",
        folder=tmp_path,
        registry=registry,
        collect=lambda: {"answer": 42},
    )
    link = FakeLink()
    tele.attach(link)
    assert link.event_sink == tele.event
    tele.start()
    try:
        tele.event("active", {"version": 3})  # while "offline"
        time.sleep(0.3)
        assert not link.sent
        link.connected = True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not link.sent or tele.spool.pending):
            time.sleep(0.02)
        tele.event("refused", {"version": 4, "reason": "hash_mismatch"})
        # wait for the condition, not a fixed time: the second event sent and nothing left in the spool
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (tele.spool.pending or not any(t.endswith("/events") and m.get("kind") == "refused" for t, m in link.sent)):
            time.sleep(0.02)
    finally:
        tele.stop()
    seqs = [m["seq"] for _, m in link.sent]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 4
    events = [DeviceEvent.model_validate(m) for t, m in link.sent if t.endswith("/events")]
    assert [e.kind for e in events] == ["active", "refused"]
    record = TelemetryRecord.model_validate(next(m for t, m in link.sent if t.endswith("/telemetry")))
    assert record.data["answer"] == 42 and "uptime_s" in record.data
    assert registry.get_sample_value("edgeship_telemetry_delivered_total") == len(seqs)
    assert registry.get_sample_value("edgeship_telemetry_pending") == 0


def test_bad_events_are_refused_not_numbered(tmp_path):
    tele = Telemetry(TelemetryConfig(interval_s=0), device_id="d", fleet="default", folder=tmp_path)
    assert tele.event("x" * 65, {}) is None  # kind too long
    assert tele.event("ok", {}) == 1
    tele.stop()

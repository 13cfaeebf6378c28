"""Fleet telemetry ingest: every device's telemetry, events, state and availability, deduplicated.

Shops sit behind NAT, so the cloud cannot scrape their agents. Each agent sends sequenced, spooled
telemetry and events over MQTT (:mod:`edge.monitoring.telemetry`); :class:`FleetState` turns that
stream into per-device facts that :mod:`cloud.fleet.exporter` exposes to Prometheus:

- **dedup and gaps**: telemetry and events share one per-device sequence. A number seen before is a
  duplicate (at-least-once delivery) and is dropped; a jump past the next expected number is a gap
  (those numbers are remembered as *missing*; one that arrives late fills its hole). A device whose
  state was wiped starts again at 1: that is counted as a reset, not as duplicates forever.
- **staleness and online/offline**: last-seen time (receive time) and the retained availability
  (``offline`` is the broker-published last will).
- **expiry**: a device not heard from for ``expire_after_s`` is forgotten, so the label set does not
  grow forever; retained state older than that does not bring it back.
- **bad messages** (not JSON, not the schema, a payload naming another device) are dropped and
  counted per reason — never fatal.
- ``--state DIR``: trackers and the last telemetry are saved (atomically) and restored, so a restart
  of the ingest neither invents gaps nor forgets devices.
- **actuals**: ``sales`` events (the rows a device accepted from a sales report) are appended,
  deduplicated by ``(device, date, store, item)``, to ``DIR/actuals.jsonl``
  (:mod:`cloud.fleet.actuals`): what ``edgeship retrain --from-fleet DIR`` trains on.

MQTT: with a broker that speaks MQTT 5 (Mosquitto 2, EMQX, HiveMQ) telemetry and events are taken
through the shared subscription ``$share/<group>/edgeship/<fleet>/+/telemetry`` (and ``…/events``),
so N ingest workers share the load; retained state and availability are subscribed by every worker.
On an MQTT 3.1.1-only broker (``--shared off``, or ``auto`` when the v5 connect is refused) one worker
subscribes to everything; run a single worker per fleet then (documented fallback). With N shared
workers each sees part of each device's sequence: aggregate in PromQL (``sum by (fleet, device)`` of
``edgeship_fleet_seq_received``, ``max by`` of ``edgeship_fleet_seq_highest``), as the shipped rules do.

::

    state = FleetState(expire_after_s=86400)
    state.handle("edgeship/default/store-1/telemetry", payload)
    ingest = Ingest("mqtt://127.0.0.1:1883", state, fleet="default", shared="auto").start()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from cloud.fleet.actuals import ActualsStore
from models import topics
from models.broker import BrokerURL, new_client
from models.fsutil import atomic_write_bytes
from models.messages import DeviceEvent, DeviceState
from models.serving import ACTUALS_EVENT, SalesActuals, TelemetryRecord

__all__ = ["DeviceRecord", "FleetState", "Ingest", "BAD_REASONS"]

logger = logging.getLogger(__name__)

#: Why a message was dropped (bounded label values).
BAD_REASONS = ("topic", "json", "schema", "device_mismatch")
_MISSING_WINDOW = 10_000  # holes further back than this are forgotten (still counted in gaps_total)
_STATE_FILE = "ingest.json"


@dataclasses.dataclass
class DeviceRecord:
    """What the ingest knows about one device."""

    fleet: str
    device: str
    store: str = ""
    model: str = ""
    version: str = ""
    variant: str = ""
    runtime: str = ""
    online: bool | None = None
    last_seen: float = 0.0  # unix seconds, receive time
    first_seq: int = 0
    expected: int = 0  # next sequence number expected (0 = none seen yet)
    missing: set[int] = dataclasses.field(default_factory=set)
    received: dict[str, int] = dataclasses.field(default_factory=dict)  # kind -> unique messages
    duplicates: int = 0
    gaps: int = 0  # gap occurrences (jumps)
    gap_messages: int = 0  # sequence numbers skipped at jumps
    late: int = 0  # missing numbers that arrived after all
    resets: int = 0
    telemetry: dict[str, Any] = dataclasses.field(default_factory=dict)  # latest telemetry data
    telemetry_at: float = 0.0
    events: dict[str, int] = dataclasses.field(default_factory=dict)  # event kind -> count
    delivery: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    status: str = ""

    @property
    def highest(self) -> int:
        return self.expected - 1 if self.expected else 0

    def labels(self) -> tuple[str, str, str, str, str]:
        """``(fleet, device, store, model_version, variant)``: the labels of every per-device series."""
        return (self.fleet, self.device, self.store, self.version, self.variant)

    def sequence(self, seq: int) -> bool:
        """Account for ``seq``; False if it is a duplicate (drop it)."""
        if self.expected == 0:
            self.first_seq, self.expected = seq, seq + 1
            return True
        if seq == self.expected:
            self.expected += 1
            return True
        if seq > self.expected:
            skipped = seq - self.expected
            self.gaps += 1
            self.gap_messages += skipped
            self.missing.update(range(max(self.expected, seq - _MISSING_WINDOW), seq))
            self.expected = seq + 1
            floor = self.expected - _MISSING_WINDOW
            if len(self.missing) > _MISSING_WINDOW:
                self.missing = {m for m in self.missing if m >= floor}
            return True
        if seq in self.missing:
            self.missing.discard(seq)
            self.late += 1
            return True
        if seq == 1 and self.expected > 2:  # the device lost its state and counts from 1 again
            self.resets += 1
            self.missing.clear()
            self.received = {}  # a counter reset: highest - first + 1 - received stays the missing count
            self.first_seq, self.expected = 1, 2
            return True
        self.duplicates += 1
        return False

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["missing"] = sorted(self.missing)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeviceRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in fields})
        rec.missing = set(rec.missing)
        return rec


class FleetState:
    """Every device of every fleet seen; :meth:`handle` takes one MQTT message. Thread-safe."""

    def __init__(self, *, expire_after_s: float = 86400.0, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.expire_after_s = expire_after_s
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.devices: dict[tuple[str, str], DeviceRecord] = {}
        self.lock = threading.Lock()
        self.bad: dict[tuple[str, str], int] = {}  # (fleet, reason) -> count
        self.messages: dict[str, int] = {}  # leaf -> messages taken
        self.expired = 0
        #: sales rows devices forwarded (``sales`` events), kept for ``edgeship retrain --from-fleet``
        self.actuals: ActualsStore | None = ActualsStore(self.state_dir) if self.state_dir is not None else None
        self.actuals_rows = 0  # rows appended to the actuals store by this process
        if self.state_dir is not None:
            self.load()

    # -- input ------------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, *, retained: bool = False, now: float | None = None) -> str:
        """Apply one message; returns what became of it (``ok``, ``duplicate``, ``ignored`` or a bad reason)."""
        now = time.time() if now is None else now
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != topics.PREFIX:
            return self._bad("?", "topic")
        fleet, device, leaf = parts[1], parts[2], parts[3]
        if not topics.ID_PATTERN.match(fleet) or not topics.ID_PATTERN.match(device):
            return self._bad("?", "topic")
        with self.lock:
            self.messages[leaf] = self.messages.get(leaf, 0) + 1
            try:
                if leaf == "availability":
                    return self._availability(fleet, device, payload, retained, now)
                if leaf == "state":
                    return self._state(fleet, device, payload, now)
                if leaf == "telemetry":
                    return self._telemetry(fleet, device, payload, now)
                if leaf == "events":
                    return self._event(fleet, device, payload, now)
            except ValidationError as exc:
                errors = exc.errors()
                return self._bad(fleet, "json" if errors and errors[0].get("type") == "json_invalid" else "schema")
            except ValueError:
                return self._bad(fleet, "json")
        return "ignored"

    def _bad(self, fleet: str, reason: str) -> str:
        key = (fleet, reason)
        self.bad[key] = self.bad.get(key, 0) + 1
        return reason

    def _device(self, fleet: str, device: str) -> DeviceRecord:
        rec = self.devices.get((fleet, device))
        if rec is None:
            rec = self.devices[(fleet, device)] = DeviceRecord(fleet, device)
        return rec

    def _availability(self, fleet: str, device: str, payload: bytes, retained: bool, now: float) -> str:
        if payload not in (b"online", b"offline"):
            return "ignored" if not payload else self._bad(fleet, "schema")
        rec = self.devices.get((fleet, device))
        if rec is None and retained:
            return "ignored"  # retained availability alone does not resurrect an expired device
        rec = rec or self._device(fleet, device)
        rec.online = payload == b"online"
        if not retained:
            rec.last_seen = max(rec.last_seen, now)
        return "ok"

    def _state(self, fleet: str, device: str, payload: bytes, now: float) -> str:
        if not payload:
            return "ignored"
        state = DeviceState.model_validate_json(payload)
        if state.device_id != device or state.fleet != fleet:
            return self._bad(fleet, "device_mismatch")
        updated = state.updated_at.timestamp()
        if (fleet, device) not in self.devices and now - updated > self.expire_after_s:
            return "ignored"  # a long-vanished device's retained state
        rec = self._device(fleet, device)
        rec.status = state.status
        attrs = state.attributes
        rec.store = str(attrs.get("store_nbr") or attrs.get("store") or rec.store)
        if state.model is not None:
            rec.model, rec.version = state.model.name, str(state.model.version)
            rec.variant, rec.runtime = state.model.variant, state.model.runtime
        rec.delivery = state.delivery
        rec.gate = state.gate.model_dump(mode="json") if state.gate else None
        rec.last_seen = max(rec.last_seen, min(updated, now))
        return "ok"

    def _telemetry(self, fleet: str, device: str, payload: bytes, now: float) -> str:
        record = TelemetryRecord.model_validate_json(payload)
        if record.device_id != device:
            return self._bad(fleet, "device_mismatch")
        rec = self._device(fleet, device)
        rec.last_seen = max(rec.last_seen, now)
        if not rec.sequence(record.seq):
            return "duplicate"
        rec.received["telemetry"] = rec.received.get("telemetry", 0) + 1
        at = record.at.timestamp()
        if at >= rec.telemetry_at:  # a replayed old one does not overwrite newer figures
            rec.telemetry, rec.telemetry_at = record.data, at
            model = record.data.get("model") or {}
            if isinstance(model, dict) and model.get("version") is not None:
                rec.version = str(model["version"])
                rec.model = str(model.get("name") or rec.model)
                rec.variant = str(model.get("variant") or rec.variant)
            if record.data.get("store") is not None:
                rec.store = str(record.data["store"])
        return "ok"

    def _event(self, fleet: str, device: str, payload: bytes, now: float) -> str:
        event = DeviceEvent.model_validate_json(payload)
        if event.device_id != device:
            return self._bad(fleet, "device_mismatch")
        rec = self._device(fleet, device)
        rec.last_seen = max(rec.last_seen, now)
        if event.seq is not None and not rec.sequence(event.seq):
            return "duplicate"
        rec.received["events"] = rec.received.get("events", 0) + 1
        if event.kind == ACTUALS_EVENT:
            actuals = SalesActuals.model_validate(event.detail)  # a bad one is dropped as "schema"
            if self.actuals is not None:
                self.actuals_rows += self.actuals.add(fleet, device, (r.model_dump(mode="json") for r in actuals.sales), at=now)
        kind = event.kind if topics.ID_PATTERN.match(event.kind) else "other"
        rec.events[kind] = rec.events.get(kind, 0) + 1
        return "ok"

    # -- upkeep -----------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> int:
        """Forget devices not heard from for ``expire_after_s``; returns how many."""
        now = time.time() if now is None else now
        with self.lock:
            gone = [k for k, r in self.devices.items() if now - r.last_seen > self.expire_after_s]
            for k in gone:
                del self.devices[k]
            self.expired += len(gone)
        if gone:
            logger.info("expired %d devices not seen for %.0f s", len(gone), self.expire_after_s)
        return len(gone)

    def snapshot(self) -> list[DeviceRecord]:
        """Copies of every device record (safe to read without the lock)."""
        with self.lock:
            return [dataclasses.replace(r, missing=set(r.missing)) for r in self.devices.values()]

    def __iter__(self) -> Iterator[DeviceRecord]:
        return iter(self.snapshot())

    # -- persistence ------------------------------------------------------------------------
    def save(self) -> None:
        if self.state_dir is None:
            return
        with self.lock:
            body = {
                "devices": [r.to_json() for r in self.devices.values()],
                "bad": [[f, r, n] for (f, r), n in self.bad.items()],
                "messages": dict(self.messages),
                "expired": self.expired,
            }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.state_dir / _STATE_FILE, json.dumps(body, separators=(",", ":")).encode())

    def load(self) -> None:
        assert self.state_dir is not None
        path = self.state_dir / _STATE_FILE
        if not path.exists():
            return
        try:
            body = json.loads(path.read_text())
            for d in body.get("devices", []):
                rec = DeviceRecord.from_json(d)
                self.devices[(rec.fleet, rec.device)] = rec
            self.bad = {(f, r): int(n) for f, r, n in body.get("bad", [])}
            self.messages = {str(k): int(v) for k, v in body.get("messages", {}).items()}
            self.expired = int(body.get("expired", 0))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("ignoring unreadable ingest state %s: %s", path, exc)


class Ingest:
    """The MQTT side: subscribes a fleet's device topics and feeds a :class:`FleetState`.

    ``shared``: ``"on"`` (MQTT 5 shared subscriptions, fail if refused), ``"off"`` (MQTT 3.1.1, one
    worker), ``"auto"`` (try MQTT 5, fall back to 3.1.1 when the broker refuses it).
    """

    def __init__(
        self, broker: str, state: FleetState, *, fleet: str = "+", shared: str = "auto", group: str = "edgeship-ingest"
    ) -> None:
        if shared not in ("auto", "on", "off"):
            raise ValueError(f"shared {shared!r} must be auto, on or off")
        self.url = BrokerURL.parse(broker)
        self.state = state
        self.fleet = fleet if fleet == "+" else topics.validate_id(fleet, "fleet")
        self.shared_mode = shared
        self.group = topics.validate_id(group, "group")
        self.shared = False
        self.client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._refused: str | None = None

    def filters(self, shared: bool) -> list[tuple[str, int]]:
        base = f"{topics.PREFIX}/{self.fleet}/+"
        streams = [f"{base}/telemetry", f"{base}/events"]
        if shared:
            streams = [f"$share/{self.group}/{t}" for t in streams]
        return [(t, 1) for t in streams + [f"{base}/state", f"{base}/availability"]]

    def start(self, timeout: float = 15.0) -> Ingest:
        if self.shared_mode in ("auto", "on"):
            try:
                return self._start(True, timeout)
            except ConnectionError as exc:
                if self.shared_mode == "on":
                    raise
                logger.warning("MQTT 5 shared subscriptions unavailable (%s): falling back to MQTT 3.1.1", exc)
        return self._start(False, timeout)

    def _start(self, v5: bool, timeout: float) -> Ingest:
        self._connected.clear()
        self._refused = None
        client_id = f"edgeship-ingest-{uuid.uuid4().hex[:8]}"
        client = new_client(client_id, self.url, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.user_data_set({"v5": v5})
        client.reconnect_delay_set(1, 10)
        try:
            client.connect(self.url.host, self.url.port, keepalive=30)
        except OSError as exc:
            raise ConnectionError(f"cannot reach broker {self.url}: {exc}") from exc
        client.loop_start()
        if not self._connected.wait(timeout):
            client.loop_stop()
            client.disconnect()
            raise ConnectionError(f"broker {self.url} did not accept the connection ({self._refused or 'timeout'})")
        self.client, self.shared = client, v5
        logger.info("fleet ingest on %s (%s)", self.url, "MQTT 5 shared subscriptions" if v5 else "MQTT 3.1.1")
        return self

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _on_connect(self, c: mqtt.Client, userdata: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            c.disconnect()
            return
        c.subscribe(self.filters(userdata["v5"]))

    def _on_subscribe(self, c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        if any(getattr(r, "is_failure", False) for r in reasons):
            self._refused = f"subscription refused: {[str(r) for r in reasons]}"
            c.disconnect()
            return
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.state.handle(msg.topic, msg.payload, retained=bool(msg.retain))
        except Exception:  # one bad message must never stop the ingest
            logger.exception("ingest failed on a message on %s", msg.topic)

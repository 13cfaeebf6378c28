"""Telemetry and events with per-device sequence numbers, stored and forwarded: none lost offline.

Every message the device reports — periodic telemetry on ``<device>/telemetry`` and events on
``<device>/events`` (update steps from :mod:`edge.agent`, via :attr:`edge.delivery.link.MqttLink.event_sink`)
— gets the next number of one per-device sequence and is appended to an on-disk spool *before*
anything is sent. A sender thread publishes the oldest undelivered messages (QoS 1, a window of
``window`` in flight) whenever the broker is connected and moves a durable cursor past those the
broker acknowledged. While the broker is unreachable messages pile up on disk; after a reconnect
they go out in order. A consumer merges both topics and checks that ``seq`` has no gaps (it may
see a message twice after a connection drop: at-least-once, deduplicate by ``seq``).

The spool is bounded: segment files of ``segment_bytes`` under ``<state>/telemetry/``; when the
spool exceeds ``spool_max_bytes`` the oldest segment is deleted, its undelivered messages counted
in ``edgeship_telemetry_dropped_total`` (and in the next telemetry's ``dropped_total``, so a gap is
explained). The sequence continues across restarts (cursor file + the spool's last number).

**Disk faults.** When a message cannot be written (a full or read-only SD card, an I/O error) it is
not lost: it keeps its sequence number and waits in a bounded in-memory queue (``memory_max``
messages; beyond it the oldest are dropped and counted like spool drops), and is sent live as soon
as the broker is connected. :attr:`Spool.fault` names the fault (``disk_full``, ``disk_readonly``,
``disk_io``; the agent's ``/healthz`` shows it), ``edgeship_telemetry_unspooled_total`` counts
such messages, and every new message tries the disk first, so spooling resumes by itself when the
disk comes back; the first write that succeeds also writes the messages still held in memory (in
sequence order, before the new one), so from then on they survive a restart too. The spool opens its
file for each append and closes it after: nothing holds the state folder open for writing.

**A restart while the disk is still unwritable** loses the messages held in memory: they exist
nowhere else, and the state folder, where they belong, is exactly what cannot be written. Before the
restart they are visible as ``edgeship_telemetry_in_memory`` and ``/healthz`` ``disk.telemetry_in_memory``.
At shutdown the agent logs them (count, sequence range, fault) and writes a small *loss marker*
to another file system, ``loss_marker_dir`` (default: ``$RUNTIME_DIRECTORY`` under systemd, else
``/dev/shm``; both RAM, so the marker survives an agent restart but not a reboot or a power cut).
At the next start the marker keeps the sequence from reusing the lost numbers (the cloud ingest
would drop reused numbers as duplicates), ``edgeship_telemetry_lost_at_restart_total`` counts the
loss, and once the spool takes a message again a ``telemetry_lost`` event with the count, the
sequence range and the fault goes out, and the marker is removed. After a reboot or power cut with
the disk unwritable the memory and the marker are both gone: the cloud then sees the device's
sequence restart below its old high-water mark.

Spool line format (one message per line; payloads are compact JSON, no newlines or tabs needed)::

    <seq>\\t<topic>\\t<payload JSON>\\n

::

    tele = Telemetry(config.telemetry, device_id="store-1", fleet="default", folder=state / "telemetry",
                     registry=metrics.registry, collect=lambda: {"requests": 12})
    tele.attach(link)        # link.event_sink = tele.event; sender uses link.client
    tele.start()             # periodic telemetry + sender
    tele.event("active", {"version": 3})
    tele.stop()
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.monitoring.metrics import TelemetryMetrics
from models.fsutil import atomic_write_bytes
from models import topics
from models.messages import DeviceEvent, disk_reason
from models.serving import ACTUALS_CHUNK_ROWS, ACTUALS_EVENT, SalesActuals, TelemetryRecord

__all__ = ["TelemetryConfig", "Spool", "Telemetry", "for_agent"]

logger = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^seg-(\d{12})\.log$")
_CURSOR = "delivered"
LOST_EVENT = "telemetry_lost"


class TelemetryConfig(BaseModel):
    """Periodic telemetry and the on-disk spool behind telemetry and events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float = Field(default=60.0, ge=0.0, description="Seconds between telemetry messages (0 = none).")
    spool_max_bytes: int = Field(
        default=8 << 20, ge=16 << 10, description="Disk the spool may use; beyond it the oldest messages are dropped."
    )
    segment_bytes: int = Field(default=256 << 10, ge=1 << 10, description="Spool file size before a new one starts.")
    window: int = Field(default=16, ge=1, le=64, description="Messages in flight (QoS 1) while delivering.")
    fsync: bool = Field(default=True, description="fsync every appended message (survives a power cut).")
    loss_marker_dir: Path | None = Field(
        default=None,
        description="Where a loss marker goes when messages held in memory die with the process (another "
        "file system than the state folder; default $RUNTIME_DIRECTORY, else /dev/shm).",
    )


def loss_marker_path(folder: Path, marker_dir: Path | None = None) -> Path | None:
    """The loss marker of the spool in ``folder``: one per spool folder, in ``marker_dir`` (or the default).

    >>> loss_marker_path(Path("/var/lib/edgeship/telemetry"), Path("/run/x")).name.startswith("edgeship-telemetry-lost-")
    True
    """
    import hashlib

    if marker_dir is None:
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        marker_dir = Path(runtime) if runtime else Path("/dev/shm")
        if not marker_dir.is_dir():
            return None
    tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return Path(marker_dir) / f"edgeship-telemetry-lost-{tag}.json"


@dataclasses.dataclass
class _Segment:
    path: Path
    first: int
    last: int
    size: int


class Spool:
    """Append-only, bounded, crash-safe queue of ``(seq, topic, payload)`` on disk. Thread-safe."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        max_bytes: int = 8 << 20,
        segment_bytes: int = 256 << 10,
        fsync: bool = True,
        on_drop: Callable[[int], None] | None = None,
        memory_max: int = 1000,
        loss_marker: Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(max_bytes // 4, 1024))
        self.fsync = fsync
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._pending: collections.deque[tuple[int, str, bytes]] = collections.deque()
        self.delivered = 0
        self.dropped = 0
        self.memory_max = memory_max
        #: Why the last append could not be written to disk (a models.messages disk reason code), else None.
        self.fault: str | None = None
        self.unspooled = 0  # messages ever kept in memory only
        self._memory: collections.deque[int] = collections.deque()  # seqs held in memory only, in order
        self._broken = False
        self.loss_marker = loss_marker
        #: A loss from before this start (the marker :meth:`close` left), until :meth:`loss_reported`.
        self.lost_before: dict[str, Any] | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._read_loss_marker()

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> None:
        try:
            self.delivered = int((self.folder / _CURSOR).read_text().strip() or 0)
        except (OSError, ValueError):
            self.delivered = 0
        last = self.delivered
        for path in sorted(p for p in self.folder.iterdir() if _SEGMENT.match(p.name)):
            records, good = self._read(path)
            if good != path.stat().st_size:  # a torn last line from a crash: cut it off
                try:
                    with open(path, "r+b") as fh:
                        fh.truncate(good)
                except OSError as exc:  # a read-only disk at start: appends go to a new segment
                    logger.warning("cannot cut the torn end of %s: %s", path.name, exc)
                    self._broken = True
            if not records:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                continue
            self._segments.append(_Segment(path, records[0][0], records[-1][0], good))
            self._pending.extend(r for r in records if r[0] > self.delivered)
            last = max(last, records[-1][0])
        self._next = last + 1
        self._durable = last  # the highest number a restart would find on disk (spooled or cursor)
        for tmp in self.folder.glob(f".{_CURSOR}.*"):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _read_loss_marker(self) -> None:
        if self.loss_marker is None:
            return
        try:
            lost = json.loads(self.loss_marker.read_text())
            count, first, last = int(lost["count"]), int(lost["first_seq"]), int(lost["last_seq"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("unreadable telemetry loss marker %s: %s", self.loss_marker, exc)
            return
        self._next = max(self._next, int(lost.get("next_seq") or last + 1))  # never reuse a number that went out
        if count <= 0:  # only the sequence's high-water mark
            with contextlib.suppress(OSError):
                self.loss_marker.unlink(missing_ok=True)
            return
        self.lost_before = {**lost, "count": count, "first_seq": first, "last_seq": last}
        logger.error(
            "%d telemetry/event messages (seq %d..%d) were lost at the last shutdown (%s): the spool could not "
            "be written; reported as a %s event once it can", count, first, last, lost.get("reason"), LOST_EVENT,
        )  # fmt: skip

    def loss_reported(self) -> None:
        """The ``telemetry_lost`` event for :attr:`lost_before` is spooled: forget the marker."""
        with self._lock:
            self.lost_before = None
            if self.loss_marker is not None:
                with contextlib.suppress(OSError):
                    self.loss_marker.unlink(missing_ok=True)

    @staticmethod
    def _read(path: Path) -> tuple[list[tuple[int, str, bytes]], int]:
        records: list[tuple[int, str, bytes]] = []
        good = 0
        with open(path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                try:
                    seq, topic, payload = line[:-1].split(b"\t", 2)
                    records.append((int(seq), topic.decode(), payload))
                except ValueError:
                    break
                good += len(line)
        return records, good

    # -- writing ----------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def memory_only(self) -> int:
        """Undelivered messages held in memory only (the disk could not take them)."""
        return len(self._memory)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def append(self, topic: str, build: Callable[[int], bytes]) -> int:
        """Give the next sequence number to ``build(seq)`` and store the payload it returns."""
        with self._lock:
            seq = self._next
            payload = build(seq)
            if b"\n" in payload or "\t" in topic:
                raise ValueError("spooled payloads may not contain newlines, topics no tabs")
            line = b"%d\t%s\t%s\n" % (seq, topic.encode(), payload)
            self._next = seq + 1
            self._pending.append((seq, topic, payload))
            try:
                self._write_memory()
                self._write(seq, line)
            except OSError as exc:
                reason = disk_reason(exc) or "disk_io"
                if self.fault != reason:
                    logger.error("telemetry spool not writable (%s): %s; holding messages in memory", reason, exc)
                self.fault = reason
                self.unspooled += 1
                self._memory.append(seq)
                self._bound_memory()
                return seq
            if self.fault is not None:
                logger.info("telemetry spool writable again (was %s)", self.fault)
                self.fault = None
            self._enforce_cap()
            return seq

    def _write(self, seq: int, line: bytes) -> None:
        """Append ``line`` to the current segment (or a new one); on failure nothing half stays."""
        seg = self._segments[-1] if self._segments and not self._broken else None
        new = seg is None or seg.size + len(line) > self.segment_bytes
        path = self.folder / f"seg-{seq:012d}.log" if new else seg.path  # type: ignore[union-attr]
        size = 0 if new else seg.size  # type: ignore[union-attr]
        try:
            with open(path, "ab") as fh:
                fh.write(line)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
        except OSError:
            self._broken = True
            try:  # cut a torn line off (or drop a new, empty file) so the segment stays readable
                if new:
                    path.unlink(missing_ok=True)
                else:
                    os.truncate(path, size)
            except OSError:
                pass
            raise
        self._broken = False
        self._durable = max(self._durable, seq)
        if new:
            seg = _Segment(path, seq, seq, len(line))
            self._segments.append(seg)
        else:
            seg.last, seg.size = seq, seg.size + len(line)  # type: ignore[union-attr]

    def _write_memory(self) -> None:
        """Spool the messages held in memory (all older than the next one), oldest first."""
        if not self._memory:
            return
        held = set(self._memory)
        for seq, topic, payload in [r for r in self._pending if r[0] in held]:
            self._write(seq, b"%d\t%s\t%s\n" % (seq, topic.encode(), payload))
            self._memory.popleft()
        self._memory.clear()
        logger.info("telemetry held in memory is spooled to disk again (%d messages)", len(held))

    def _bound_memory(self) -> None:
        while len(self._memory) > self.memory_max:
            seq = self._memory.popleft()
            for record in self._pending:
                if record[0] == seq:
                    self._pending.remove(record)
                    break
            self.dropped += 1
            logger.warning("telemetry held in memory full: dropped message %d", seq)
            if self._on_drop is not None:
                self._on_drop(1)

    def _enforce_cap(self) -> None:
        while len(self._segments) > 1 and self.bytes > self.max_bytes:
            oldest = self._segments.pop(0)
            lost = 0
            while self._pending and self._pending[0][0] <= oldest.last:
                self._pending.popleft()
                lost += 1
            with contextlib.suppress(OSError):
                oldest.path.unlink(missing_ok=True)
            if lost:
                self.dropped += lost
                logger.warning("telemetry spool full: dropped %d undelivered messages", lost)
                if self._on_drop is not None:
                    self._on_drop(lost)

    # -- delivering -------------------------------------------------------------------------
    def peek(self, limit: int) -> list[tuple[int, str, bytes]]:
        """The oldest undelivered messages, in order."""
        with self._lock:
            return [self._pending[i] for i in range(min(limit, len(self._pending)))]

    def ack(self, seq: int) -> None:
        """Everything up to ``seq`` was delivered: move the durable cursor, delete finished segments."""
        with self._lock:
            if seq <= self.delivered:
                return
            self.delivered = seq
            while self._pending and self._pending[0][0] <= seq:
                self._pending.popleft()
            while self._memory and self._memory[0] <= seq:
                self._memory.popleft()
            while len(self._segments) > 1 and self._segments[0].last <= seq:
                with contextlib.suppress(OSError):  # a read-only disk: deleted on a later ack or at start
                    self._segments.pop(0).path.unlink(missing_ok=True)
            atomic_write_bytes(self.folder / _CURSOR, b"%d\n" % seq, durable=self.fsync)
            self._durable = max(self._durable, seq)

    def close(self) -> int:
        """At shutdown: spool what is held in memory if the disk takes it now; else log the loss and
        leave a loss marker (see the module's notes). Returns how many messages are lost."""
        with self._lock:
            if not self._memory:
                if self._next - 1 > self._durable and self.loss_marker is not None:
                    # nothing lost, but numbers that went out live are on no disk: keep the next start from reusing them
                    with contextlib.suppress(OSError):
                        marker = {**(self.lost_before or {"count": 0, "first_seq": 0, "last_seq": 0}), "next_seq": self._next}
                        atomic_write_bytes(self.loss_marker, json.dumps(marker).encode(), durable=False)
                return 0
            try:
                self._write_memory()
                return 0
            except OSError as exc:
                reason = disk_reason(exc) or "disk_io"
            held = list(self._memory)
            before = self.lost_before or {}
            lost = {
                "count": len(held) + before.get("count", 0),
                "first_seq": before.get("first_seq", held[0]), "last_seq": held[-1],
                "next_seq": self._next, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "spool": str(self.folder),
            }  # fmt: skip
            where = "no loss marker directory"
            if self.loss_marker is not None:
                try:
                    atomic_write_bytes(self.loss_marker, json.dumps(lost).encode(), durable=False)
                    where = f"loss marker {self.loss_marker}"
                except OSError as exc:
                    where = f"loss marker not written: {exc}"
            logger.error(
                "shutdown with the spool not writable (%s): %d telemetry/event messages held in memory are lost "
                "(seq %d..%d; %s)", reason, len(held), held[0], held[-1], where,
            )  # fmt: skip
            return len(held)


class Telemetry:
    """The per-device sequence, the spool, periodic telemetry and the sender thread."""

    def __init__(
        self,
        config: TelemetryConfig | None = None,
        *,
        device_id: str,
        fleet: str,
        folder: str | os.PathLike[str],
        registry: CollectorRegistry | None = None,
        collect: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config or TelemetryConfig()
        self.device_id = device_id
        self.metrics = TelemetryMetrics(registry)
        self.spool = Spool(
            folder,
            max_bytes=self.config.spool_max_bytes,
            segment_bytes=self.config.segment_bytes,
            fsync=self.config.fsync,
            on_drop=self.metrics.dropped.inc,
            loss_marker=loss_marker_path(Path(folder), self.config.loss_marker_dir),
        )
        if self.spool.lost_before is not None:
            self.metrics.lost_at_restart.inc(self.spool.lost_before["count"])
        self._topic_events = topics.events(fleet, device_id)
        self._topic_telemetry = topics.telemetry(fleet, device_id)
        self._collect = collect or dict
        self._link: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = time.monotonic()
        self._reporting = False
        self._update_gauges()

    # -- wiring -----------------------------------------------------------------------------
    def attach(self, link: Any, *, events: bool = True) -> None:
        """Send through ``link`` (an :class:`edge.delivery.link.MqttLink`) and (``events``) take over its events."""
        self._link = link
        if events:
            link.event_sink = self.event

    def start(self) -> None:
        targets = [("edgeship-telemetry-send", self._send_loop)]
        if self.config.interval_s > 0:
            targets.append(("edgeship-telemetry", self._tick_loop))
        for name, target in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> int:
        """Stop the threads (what is undelivered stays on disk for the next start). Returns how many
        messages held in memory are lost because the disk still cannot take them (logged, marked)."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()
        return self.spool.close()

    # -- producing --------------------------------------------------------------------------
    def event(self, kind: str, detail: dict[str, Any]) -> int | None:
        """Spool one :class:`DeviceEvent`; returns its sequence number (None if it could not be built)."""
        try:
            DeviceEvent(device_id=self.device_id, kind=kind, detail=detail)  # validate before numbering
        except ValidationError as exc:
            logger.error("event %r not sent: %s", kind, exc)
            return None

        def build(seq: int) -> bytes:
            return DeviceEvent(device_id=self.device_id, kind=kind, detail=detail, seq=seq).model_dump_json().encode()

        return self._append(self._topic_events, build, "event")

    def actuals(self, rows: list[Any], transport: str | None = None) -> list[int]:
        """Spool accepted sales rows for the cloud (events of kind ``sales``, at most
        :data:`models.serving.ACTUALS_CHUNK_ROWS` rows each); returns their sequence numbers.

        ``rows``: :class:`models.serving.SalesRow` objects or dicts with the same fields.
        """
        plain = [r.model_dump(mode="json") if hasattr(r, "model_dump") else dict(r) for r in rows]
        seqs = []
        for i in range(0, len(plain), ACTUALS_CHUNK_ROWS):
            try:
                detail = SalesActuals.model_validate({"sales": plain[i : i + ACTUALS_CHUNK_ROWS], "transport": transport})
            except ValidationError as exc:
                logger.error("sales rows not forwarded: %s", exc)
                continue
            seq = self.event(ACTUALS_EVENT, detail.model_dump(mode="json", exclude_none=True))
            if seq is not None:
                seqs.append(seq)
        return seqs

    def telemetry(self) -> int | None:
        """Spool one :class:`TelemetryRecord` with what ``collect()`` returns now."""
        try:
            data = dict(self._collect())
        except Exception:  # telemetry must not die of a collector bug
            logger.exception("collecting telemetry failed")
            data = {}
        data.update(
            uptime_s=round(time.monotonic() - self._started, 3),
            spool_pending=self.spool.pending,
            dropped_total=self.spool.dropped,
            spool_fault=self.spool.fault,
            in_memory=self.spool.memory_only,
        )

        def build(seq: int) -> bytes:
            return TelemetryRecord(device_id=self.device_id, seq=seq, data=data).model_dump_json().encode()

        return self._append(self._topic_telemetry, build, "telemetry")

    def send(self, topic: str, build: Callable[[int], bytes], kind: str) -> int | None:
        """Spool any message: ``build(seq)`` gets the next number and returns the payload (e.g. feedback)."""
        return self._append(topic, build, kind)

    @property
    def spool_fault(self) -> str | None:
        """The disk fault that keeps messages in memory (disk_full / disk_readonly / disk_io), else None."""
        return self.spool.fault

    def _append(self, topic: str, build: Callable[[int], bytes], kind: str) -> int | None:
        try:
            before = self.spool.unspooled
            seq = self.spool.append(topic, build)
        except ValueError as exc:
            logger.error("could not spool %s: %s", kind, exc)
            return None
        if self.spool.unspooled != before:
            self.metrics.unspooled.inc()
        else:
            self.metrics.spooled.labels(kind).inc()
            if self.spool.lost_before is not None and not self._reporting:
                self._report_loss()
        self._update_gauges()
        self._wake.set()
        return seq

    def _report_loss(self) -> None:
        """The spool took a message again after a start with a loss marker: say what was lost."""
        lost = self.spool.lost_before or {}
        detail = {k: lost[k] for k in ("count", "first_seq", "last_seq", "reason", "at") if k in lost}
        before = self.spool.unspooled
        self._reporting = True
        try:
            seq = self.event(LOST_EVENT, detail)
        finally:
            self._reporting = False
        if seq is not None and self.spool.unspooled == before:  # on disk: it will go out, even after a restart
            logger.warning("reported the %d telemetry/event messages lost at the last shutdown (event %d)", detail["count"], seq)
            self.spool.loss_reported()

    def _update_gauges(self) -> None:
        self.metrics.pending.set(self.spool.pending)
        self.metrics.spool_bytes.set(self.spool.bytes)
        self.metrics.in_memory.set(self.spool.memory_only)
        self.metrics.spool_ok.set(0 if self.spool.fault else 1)

    # -- threads ----------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            self.telemetry()

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            link = self._link
            if link is None or not link.connected:
                self._stop.wait(0.2)
                continue
            batch = self.spool.peek(self.config.window)
            if not batch:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if not self._deliver(link.client, batch):
                self._stop.wait(0.5)  # disconnected or queue full: try again shortly

    def _deliver(self, client: Any, batch: list[tuple[int, str, bytes]]) -> bool:
        infos = []
        for seq, topic, payload in batch:
            info = client.publish(topic, payload, qos=1)
            if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (queued by paho)
                break
            infos.append((seq, info))
        delivered = None
        for seq, info in infos:
            try:
                info.wait_for_publish(timeout=5.0)
            except (RuntimeError, ValueError):
                break
            if not info.is_published():
                break
            delivered = seq
        if delivered is None:
            return False
        count = sum(1 for seq, _ in infos if seq <= delivered)
        try:
            self.spool.ack(delivered)
        except OSError as exc:
            logger.error("could not save the telemetry cursor: %s", exc)
        self.metrics.delivered.inc(count)
        self._update_gauges()
        return True


def for_agent(agent: Any) -> Telemetry:
    """Telemetry of an :class:`edge.agent.Agent`: model, request counts, memory and serving state."""
    c = agent.config

    def collect() -> dict[str, Any]:
        current = agent.predictor
        requests: dict[str, float] = {}
        for family in agent.metrics.requests.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    key = f"{s.labels['transport']}_{s.labels['outcome']}"
                    requests[key] = requests.get(key, 0) + s.value
        data: dict[str, Any] = {
            "status": agent.device_state().status,
            "model": None if current is None else {"version": current.version, "digest": current.digest,
                                                   "name": current.name, "variant": current.variant},
            "metrics": agent.metrics.summary(),  # counters + latency histograms for the fleet exporter
            "store": c.attributes.get("store_nbr") or c.attributes.get("store"),
            "requests": requests,
            "rss_bytes": _rss_bytes(),
            "disk": agent.disk_health(),
        }
        serving = getattr(agent, "serving", None)
        if serving is not None:
            data.update(serving.snapshot())
        return data

    return Telemetry(
        c.telemetry,
        device_id=c.device_id,
        fleet=c.fleet,
        folder=Path(c.state_dir) / "telemetry",
        registry=agent.metrics.registry,
        collect=collect,
    )


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None

"""The bridge: shop devices on serial links ↔ the edge agent over HTTP. Several devices per process.

* sale → persisted in the bridge's queue → ``POST /v1/sales/events`` (idempotency key
  device/boot/seq; the agent validates it as ``POST /v1/sales`` and updates its lag state) →
  :class:`Ack` only once the agent accepted it (or already had it); :class:`Nack` ``invalid`` if the
  agent refused it, ``unavailable`` if it could not be reached (the device re-sends with the same
  seq; the queue also retries by itself, across bridge restarts: nothing lost, nothing doubled);
* prediction request → ``POST /v1/predict`` → :class:`PredictResponse` and a :class:`Display` line;
* sensor reading → ``POST /v1/sensors`` (agent metrics and telemetry, ``transport="serial"``);
* time request → :class:`TimeSync` (shop-local time; ``--date`` pins the business day, for demos);
* hello → remembered (device id and boot id key the sales); the bridge says hello on every link-up,
  and a device answers with its own.

Usage::

    bridge = Bridge(["/dev/ttyUSB0", "socket://127.0.0.1:7000"], "http://127.0.0.1:8080", state_dir)
    bridge.start(); ...; bridge.stop()
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import math
import queue
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_bridge.crash import crash_point
from firmware_bridge.link import SerialLink
from firmware_bridge.metrics import BridgeMetrics
from firmware_bridge.protocol import (
    SENSOR_KINDS,
    UNITS,
    Ack,
    Display,
    Frame,
    Hello,
    Nack,
    NackReason,
    PredictRequest,
    PredictResponse,
    ProtocolError,
    Sale,
    SensorReading,
    TimeRequest,
    TimeSync,
)

__all__ = ["AgentClient", "AgentUnavailable", "SaleQueue", "Clock", "Bridge", "BRIDGE_VERSION"]

logger = logging.getLogger(__name__)

BRIDGE_VERSION = "1.0.0"
_EPOCH = dt.date(1970, 1, 1)


class AgentUnavailable(RuntimeError):
    """The agent could not be reached, or answered 5xx: try again later."""


class AgentClient:
    """JSON over HTTP/1.1 keep-alive to the agent, one connection per thread."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"--agent: {base_url!r} is not an http(s):// URL")
        self.scheme, self.host, self.port = u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", "X-Edgeship-Transport": "serial"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self.host, self.port, timeout=self.timeout)
        return conn

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        """(status, decoded JSON) for 2xx/4xx; :class:`AgentUnavailable` otherwise."""
        data = json.dumps(body).encode()
        for attempt in (0, 1):  # one silent retry: a kept-alive connection the server closed meanwhile
            conn = self._conn()
            try:
                conn.request("POST", self.prefix + path, body=data, headers=self.headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise AgentUnavailable(f"{path}: {exc}") from None
        if status >= 500:
            raise AgentUnavailable(f"{path}: HTTP {status}")
        try:
            return status, json.loads(raw)
        except ValueError:
            raise AgentUnavailable(f"{path}: HTTP {status} with a body that is not JSON") from None


class SaleQueue:
    """Sale events received and not yet settled with the agent (SQLite, survives kill -9)."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending (key TEXT PRIMARY KEY, device_id TEXT, boot_id INTEGER, seq INTEGER, "
            "day TEXT, store INTEGER, item INTEGER, quantity REAL, received REAL)"
        )
        self._lock = threading.Lock()

    def add(self, device_id: str, boot_id: int, seq: int, day: str, sale: Sale) -> str:
        key = f"{device_id}/{boot_id}/{seq}"
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, device_id, boot_id, seq, day, sale.store_nbr, sale.item_nbr, sale.quantity_milli / 1000, time.time()),
            )
        return key

    def remove(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE key = ?", (key,))

    def pending(self, limit: int = 256) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, device_id, boot_id, seq, day, store, item, quantity FROM pending ORDER BY received LIMIT ?",
                (limit,),
            ).fetchall()
        return [dict(zip(("key", "device_id", "boot_id", "seq", "day", "store", "item", "quantity"), r, strict=True)) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class Clock:
    """Shop-local wall clock for :class:`TimeSync`; ``business_date`` pins the day (keeping the time of day)."""

    business_date: dt.date | None = None
    utc_offset_s: int = field(default_factory=lambda: int(time.localtime().tm_gmtoff))

    def local_seconds(self) -> int:
        now = time.time() + self.utc_offset_s
        if self.business_date is not None:
            now = (self.business_date - _EPOCH).days * 86400 + now % 86400
        return int(now)


@dataclass
class _Device:
    link: SerialLink
    device_id: str | None = None
    boot_id: int = 0
    firmware: str = ""
    last_seen: float = 0.0
    work: queue.Queue[tuple[Frame, float] | None] = field(default_factory=queue.Queue)


class Bridge:
    """Serial links to devices, a worker per link for agent calls, and the queue's retry loop."""

    def __init__(
        self,
        urls: list[str],
        agent_url: str,
        state_dir: str | Path,
        *,
        baud: int = 115200,
        token: str | None = None,
        clock: Clock | None = None,
        retry_interval: float = 1.0,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        if not urls:
            raise ValueError("--serial: at least one device URL is required")
        self.metrics = metrics or BridgeMetrics()
        self.agent = AgentClient(agent_url, token=token)
        self.queue = SaleQueue(Path(state_dir) / "sale_queue.sqlite3")
        self.clock = clock or Clock()
        self.retry_interval = retry_interval
        self.boot_id = int(time.time()) & 0xFFFFFFFF
        self.devices: list[_Device] = []
        for url in urls:
            link = SerialLink(
                url, baud=baud, on_frame=self._on_frame, on_connect=self._on_connect, on_drop=self._on_drop,
                metrics=self.metrics,
            )  # fmt: skip
            self.devices.append(_Device(link))
        self._by_link = {id(d.link): d for d in self.devices}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepted = 0  # sale events the agent accepted in this process (crash point bridge_after_accept_<N>)
        self._accepted_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Bridge:
        self.metrics.queue.set(len(self.queue))
        for d in self.devices:
            t = threading.Thread(target=self._worker, args=(d,), name=f"bridge-{d.link.url}", daemon=True)
            t.start()
            self._threads.append(t)
            d.link.start()
        t = threading.Thread(target=self._retry_loop, name="bridge-retry", daemon=True)
        t.start()
        self._threads.append(t)
        logger.info("bridge started", extra={"devices": [d.link.url for d in self.devices], "pending": len(self.queue)})
        return self

    def stop(self) -> None:
        self._stop.set()
        for d in self.devices:
            d.link.stop()
            d.work.put(None)
        for t in self._threads:
            t.join(5)
        self.queue.close()

    # -- link callbacks (reader threads) -------------------------------------------------------
    def _on_connect(self, link: SerialLink) -> None:
        link.send(Hello("bridge", BRIDGE_VERSION, self.boot_id, 0x0F))
        link.send(TimeSync(self.clock.local_seconds()))

    def _on_drop(self, link: SerialLink, exc: ProtocolError) -> None:
        if exc.seq is None:
            return
        if exc.reason == "type":
            link.send(Nack(exc.seq, NackReason.UNSUPPORTED, f"type {exc.type}"))
        elif exc.reason == "payload":
            link.send(Nack(exc.seq, NackReason.BAD_PAYLOAD, str(exc)[:64]))

    def _on_frame(self, link: SerialLink, frame: Frame) -> None:
        d = self._by_link[id(link)]
        d.last_seen = time.monotonic()
        m = frame.message
        if isinstance(m, Hello):
            if (d.device_id, d.boot_id) != (m.device_id, m.boot_id):
                logger.info("device hello", extra={"url": link.url, "device": m.device_id, "firmware": m.firmware})
            d.device_id, d.boot_id, d.firmware = m.device_id, m.boot_id, m.firmware
            link.send(TimeSync(self.clock.local_seconds()))
        elif isinstance(m, TimeRequest):
            link.send(TimeSync(self.clock.local_seconds()))
        elif isinstance(m, (Sale, PredictRequest, SensorReading)):
            d.work.put((frame, time.perf_counter()))
        # heartbeats only refresh last_seen; acks/nacks from a device need nothing

    # -- agent calls (one worker thread per device) ---------------------------------------------
    def _worker(self, d: _Device) -> None:
        while True:
            item = d.work.get()
            if item is None or self._stop.is_set():
                return
            frame, received = item
            try:
                if isinstance(frame.message, Sale):
                    self._sale(d, frame)
                elif isinstance(frame.message, PredictRequest):
                    self._predict(d, frame, received)
                else:
                    self._sensor(d, frame)
            except Exception:
                logger.exception("handling %s from %s failed", type(frame.message).__name__, d.link.url)

    def _sale(self, d: _Device, frame: Frame) -> None:
        sale: Sale = frame.message
        if d.device_id is None:
            d.link.send(Nack(frame.seq, NackReason.UNAVAILABLE, "hello first"))
            d.link.send(Hello("bridge", BRIDGE_VERSION, self.boot_id, 0x0F))  # a device answers with its hello
            return
        if sale.time == 0:
            d.link.send(Nack(frame.seq, NackReason.INVALID, "no time: send a time request first"))
            return
        day = (_EPOCH + dt.timedelta(seconds=sale.time)).isoformat()[:10]
        key = self.queue.add(d.device_id, d.boot_id, frame.seq, day, sale)
        self.metrics.queue.set(len(self.queue))
        row = {"key": key, "device_id": d.device_id, "boot_id": d.boot_id, "seq": frame.seq, "day": day,
               "store": sale.store_nbr, "item": sale.item_nbr, "quantity": sale.quantity_milli / 1000}  # fmt: skip
        outcome = self._settle([row]).get(key)
        if outcome is None:
            self.metrics.sales.labels("retry").inc()
            d.link.send(Nack(frame.seq, NackReason.UNAVAILABLE, "agent unavailable"))

    def _settle(self, rows: list[dict[str, Any]]) -> dict[str, str]:
        """Send queued events to the agent (grouped by device and boot); ack/nack the ones settled."""
        out: dict[str, str] = {}
        groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault((r["device_id"], r["boot_id"]), []).append(r)
        for (device_id, boot_id), group in groups.items():
            body = {
                "device_id": device_id,
                "boot_id": boot_id,
                "events": [{"seq": r["seq"], "date": r["day"], "store_nbr": r["store"], "item_nbr": r["item"],
                            "quantity": r["quantity"]} for r in group],  # fmt: skip
            }
            try:
                status, answer = self.agent.post("/v1/sales/events", body)
            except AgentUnavailable as exc:
                self.metrics.agent_errors.inc()
                logger.debug("sale events not delivered: %s", exc)
                continue
            by_seq = {r["seq"]: r for r in group}
            if status != 200:  # the whole batch was refused (malformed): settle each as invalid
                message = str(answer.get("error", {}).get("message", status))[:64]
                results = [{"seq": r["seq"], "outcome": "invalid", "details": [{"message": message}]} for r in group]
            else:
                results = answer.get("results", [])
            for res in results:
                r = by_seq.get(res.get("seq"))
                if r is None:
                    continue
                outcome = str(res.get("outcome"))
                if outcome == "accepted":
                    with self._accepted_lock:
                        self._accepted += 1
                        n = self._accepted
                    crash_point(f"bridge_after_accept_{n}")
                self.queue.remove(r["key"])
                out[r["key"]] = outcome
                self.metrics.sales.labels(outcome).inc()
                link = self._link_for(device_id, boot_id)
                if link is not None:
                    if outcome in ("accepted", "duplicate"):
                        link.send(Ack(r["seq"]))
                    else:
                        details = res.get("details") or [{"message": "refused"}]
                        link.send(Nack(r["seq"], NackReason.INVALID, str(details[0].get("message", ""))[:64]))
        self.metrics.queue.set(len(self.queue))
        return out

    def _link_for(self, device_id: str, boot_id: int) -> SerialLink | None:
        for d in self.devices:
            if d.device_id == device_id and d.boot_id == boot_id:
                return d.link
        return None

    def _retry_loop(self) -> None:
        while not self._stop.wait(self.retry_interval):
            try:
                rows = self.queue.pending()
                if rows:
                    self._settle(rows)
            except Exception:
                logger.exception("retrying queued sales failed")

    def _predict(self, d: _Device, frame: Frame, received: float) -> None:
        req: PredictRequest = frame.message
        day = (_EPOCH + dt.timedelta(days=req.day)).isoformat()
        instance = {"date": day, "store_nbr": req.store_nbr, "item_nbr": req.item_nbr, "onpromotion": bool(req.onpromotion)}
        try:
            status, answer = self.agent.post("/v1/predict", {"instances": [instance]})
        except AgentUnavailable:
            self.metrics.agent_errors.inc()
            d.link.send(PredictResponse(frame.seq, NackReason.UNAVAILABLE, math.nan, 0))
            return
        if status != 200:
            d.link.send(PredictResponse(frame.seq, NackReason.INVALID, math.nan, 0))
            return
        value = float(answer["predictions"][0])
        d.link.send(PredictResponse(frame.seq, 0, value, int(answer["model"]["version"])))
        self.metrics.predict_seconds.observe(time.perf_counter() - received)
        d.link.send(Display(req.item_nbr, f"{day[5:]} fcst {value:.1f}"))

    def _sensor(self, d: _Device, frame: Frame) -> None:
        r: SensorReading = frame.message
        if d.device_id is None:
            d.link.send(Nack(frame.seq, NackReason.UNAVAILABLE, "hello first"))
            return
        reading: dict[str, Any] = {"sensor_id": r.sensor_id, "kind": SENSOR_KINDS[r.kind], "unit": UNITS[r.unit],
                                   "value": r.scaled}  # fmt: skip
        if r.time:
            reading["time"] = (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=r.time)).isoformat()
        try:
            status, _ = self.agent.post("/v1/sensors", {"device_id": d.device_id, "readings": [reading]})
        except AgentUnavailable:
            self.metrics.agent_errors.inc()
            d.link.send(Nack(frame.seq, NackReason.UNAVAILABLE, "agent unavailable"))
            return
        d.link.send(Ack(frame.seq) if status == 200 else Nack(frame.seq, NackReason.INVALID, f"HTTP {status}"))

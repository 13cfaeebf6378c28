"""A host simulator of a shelf device: speaks the serial protocol on a pty or a TCP port.

It behaves like the reference firmware (``firmware/shelf_label/``): hello and a time request on
start, sale events drawn from a demand profile (weekday, month and payday effects, as in the
synthetic data), re-sent with the same sequence number until acked, prediction requests for
tomorrow, heartbeats, a sensor reading now and then. ``unplug()``/``replug()`` close and reopen
its pty (the symlink at ``link`` follows, like a udev name)::

    sim = DeviceSim(PtyTransport("/tmp/shelf"), items=[103520, 105574], store=1, rate=20)
    sim.start()                      # the bridge opens /tmp/shelf
    ...; sim.stats.acked_units       # {(store, item, "2017-08-16"): 12.0, ...}
    sim.stop()
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import random
import select
import socket
import threading
import time
import tty
from collections import Counter
from pathlib import Path
from typing import Any

from firmware_bridge.protocol import (
    Ack,
    Decoder,
    Display,
    Frame,
    Heartbeat,
    Hello,
    Nack,
    NackReason,
    PredictRequest,
    PredictResponse,
    Sale,
    SensorReading,
    TimeRequest,
    TimeSync,
    encode,
)

__all__ = ["DEFAULT_ITEMS", "DemandProfile", "PtyTransport", "TcpTransport", "DeviceSim", "SimStats"]

logger = logging.getLogger(__name__)

#: Item numbers of the sample catalogue (items.csv of the test kit and of the Favorita extract).
DEFAULT_ITEMS = (103520, 105574, 999001)


@dataclasses.dataclass(frozen=True)
class DemandProfile:
    """Day effects on demand: weekday (Mon..Sun), month (Jan..Dec), paydays (15th, last day, and the day after).

    ``edgeship firmware-sim`` passes the synthetic data's profile (:mod:`cloud.data.synth`)."""

    weekday: tuple[float, ...] = (1.0,) * 7
    month: tuple[float, ...] = (1.0,) * 12
    payday_lift: float = 1.0
    payday_after: float = 1.0

    def factor(self, day: dt.date) -> float:
        last = (day + dt.timedelta(days=1)).day == 1
        pay = self.payday_lift if day.day == 15 or last else self.payday_after if day.day in (16, 1) else 1.0
        return self.weekday[day.weekday()] * self.month[day.month - 1] * pay


class PtyTransport:
    """The device end of a pseudo-terminal; the bridge opens ``link`` (a symlink to the slave)."""

    def __init__(self, link: str | os.PathLike[str] | None = None) -> None:
        self.link = Path(link) if link is not None else None
        self.master: int | None = None
        self.slave: int | None = None
        self.path = ""
        self.open()

    def open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo or newline translation before the bridge configures the port
        self.master, self.slave, self.path = master, slave, os.ttyname(slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link)

    @property
    def url(self) -> str:
        return str(self.link) if self.link is not None else self.path

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    def read(self, timeout: float) -> bytes:
        fd = self.master
        if fd is None:
            time.sleep(timeout)
            return b""
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return b""
        try:
            return os.read(fd, 4096)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        fd = self.master
        if fd is None:
            return
        try:
            os.write(fd, data)
        except OSError as exc:  # unplugged meanwhile
            logger.debug("pty write failed: %s", exc)


class TcpTransport:
    """The device on a TCP port (the bridge uses ``socket://127.0.0.1:PORT``); one client at a time."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.server = socket.create_server((host, port))
        self.port = self.server.getsockname()[1]
        self.host = host
        self.conn: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def open(self) -> None:
        pass

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def read(self, timeout: float) -> bytes:
        if self.conn is None:
            r, _, _ = select.select([self.server], [], [], timeout)
            if r:
                self.conn, _ = self.server.accept()
            return b""
        r, _, _ = select.select([self.conn], [], [], timeout)
        if not r:
            return b""
        try:
            data = self.conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.close()
        return data

    def write(self, data: bytes) -> None:
        if self.conn is not None:
            try:
                self.conn.sendall(data)
            except OSError:
                self.close()


@dataclasses.dataclass
class SimStats:
    sent: int = 0
    acked: int = 0
    refused: int = 0
    retries: int = 0
    acked_units: Counter[tuple[int, int, str]] = dataclasses.field(default_factory=Counter)
    predictions: list[tuple[int, float, int]] = dataclasses.field(default_factory=list)  # (item, value, model version)
    displays: list[str] = dataclasses.field(default_factory=list)
    time_syncs: int = 0
    nacks: Counter[int] = dataclasses.field(default_factory=Counter)


class DeviceSim:
    """One simulated shelf device. ``rate``: sale events per second on an ordinary day, scaled by the
    ``profile``'s factor of the synced day (0: only what :meth:`sell` adds)."""

    def __init__(
        self,
        transport: Any,
        *,
        items: list[int],
        store: int = 1,
        rate: float = 5.0,
        device_id: str = "sim-shelf",
        profile: DemandProfile | None = None,
        predict_every: int = 10,
        retry_s: float = 0.5,
        seed: int = 0,
        max_sales: int | None = None,
    ) -> None:
        if not items:
            raise ValueError("items: at least one item number is required")
        self.transport = transport
        self.items = list(items)
        self.store = store
        self.rate = rate
        self.device_id = device_id
        self.profile = profile or DemandProfile()
        self.predict_every = predict_every
        self.retry_s = retry_s
        self.max_sales = max_sales
        self.rng = random.Random(seed)
        self.base = [self.rng.lognormvariate(0.0, 0.8) for _ in self.items]  # relative item popularity
        self.boot_id = self.rng.getrandbits(32)
        self.stats = SimStats()
        self.decoder = Decoder()
        self._seq = 0
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Sale, float]] = {}  # seq -> (sale, last sent)
        self._clock: tuple[int, float] | None = None  # (local seconds, monotonic) at the last time sync
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = time.monotonic()
        self._response = threading.Condition()
        self.prediction_answers: dict[int, PredictResponse] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> DeviceSim:
        for target in (self._reader, self._runner):
            t = threading.Thread(target=target, name=f"sim-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        self._hello()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.transport.close()

    def unplug(self) -> None:
        self.transport.close()

    def replug(self) -> None:
        self.transport.open()
        self._hello()

    # -- device behaviour -------------------------------------------------------------------
    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _send(self, message: Any, seq: int | None = None) -> int:
        seq = self._next_seq() if seq is None else seq
        self.transport.write(encode(message, seq))
        return seq

    def _hello(self) -> None:
        self._send(Hello(self.device_id, "sim-1.0", self.boot_id, 0x0F))
        self._send(TimeRequest(int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF))

    def now_local(self) -> int:
        if self._clock is None:
            return 0
        base, at = self._clock
        return int(base + time.monotonic() - at)

    @property
    def synced(self) -> bool:
        return self._clock is not None

    @property
    def today(self) -> dt.date:
        return dt.date(1970, 1, 1) + dt.timedelta(seconds=self.now_local())

    def sell(self, item: int, quantity: float = 1.0) -> int:
        """Record one sale now (sent at once, re-sent until acked); returns its sequence number."""
        sale = Sale(self.store, item, round(quantity * 1000), self.now_local())
        seq = self._next_seq()
        with self._lock:
            self._pending[seq] = (sale, time.monotonic())
        self.stats.sent += 1
        self._send(sale, seq)
        return seq

    def request_prediction(self, item: int, day: dt.date | None = None, onpromotion: bool = False) -> int:
        day = day or (self.today + dt.timedelta(days=1))
        return self._send(PredictRequest(self.store, item, (day - dt.date(1970, 1, 1)).days, int(onpromotion)))

    def wait_prediction(self, seq: int, timeout: float = 10.0) -> PredictResponse | None:
        with self._response:
            self._response.wait_for(lambda: seq in self.prediction_answers, timeout)
            return self.prediction_answers.get(seq)

    def sensor(self, kind: int, unit: int, value: int, exponent: int = 0, sensor_id: int = 1) -> int:
        return self._send(SensorReading(sensor_id, kind, unit, exponent, value, self.now_local()))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def next_interval(self, day: dt.date) -> float:
        """Seconds to the next sale: Poisson arrivals at ``rate`` × the profile's factor of ``day``
        (``rate`` is the average of an ordinary day; a Sunday or a payday in December sells more)."""
        return self.rng.expovariate(self.rate * self.profile.factor(day))

    def _pick_item(self) -> tuple[int, float]:
        i = self.rng.choices(range(len(self.items)), self.base)[0]  # the day's factor scales every item alike
        qty = 1 + int(self.rng.expovariate(1.5))  # mostly single units, some multi-packs
        return self.items[i], float(qty)

    def _runner(self) -> None:
        next_sale = time.monotonic()
        last_beat = last_retry = time.monotonic()
        while not self._stop.wait(0.01):
            now = time.monotonic()
            if not self.synced:
                if now - last_beat > 1.0:
                    self._hello()
                    last_beat = now
                continue
            done = self.max_sales is not None and self.stats.sent >= self.max_sales
            if self.rate > 0 and not done and now >= next_sale:
                item, qty = self._pick_item()
                self.sell(item, qty)
                if self.predict_every and self.stats.sent % self.predict_every == 0:
                    self.request_prediction(item)
                next_sale = now + self.next_interval(self.today)
            if now - last_retry > self.retry_s / 2:
                last_retry = now
                with self._lock:
                    due = [(seq, sale) for seq, (sale, at) in self._pending.items() if now - at > self.retry_s]
                    for seq, sale in due:
                        self._pending[seq] = (sale, now)
                for seq, sale in due:
                    self.stats.retries += 1
                    self._send(sale, seq)  # the same seq: the bridge and the agent deduplicate
            if now - last_beat > 2.0:
                self._send(Heartbeat(int((now - self._t0) * 1000) & 0xFFFFFFFF))
                if self.rng.random() < 0.2:
                    self.sensor(kind=2, unit=2, value=400 + self.rng.randint(-20, 20), exponent=-2)
                last_beat = now

    def _reader(self) -> None:
        while not self._stop.is_set():
            data = self.transport.read(0.05)
            if data:
                for frame in self.decoder.feed(data):
                    self._on_frame(frame)

    def _on_frame(self, frame: Frame) -> None:
        m = frame.message
        if isinstance(m, TimeSync):
            self._clock = (m.local_seconds, time.monotonic())
            self.stats.time_syncs += 1
        elif isinstance(m, Hello):  # the bridge (re)started: introduce ourselves
            self._send(Hello(self.device_id, "sim-1.0", self.boot_id, 0x0F))
        elif isinstance(m, Ack):
            with self._lock:
                entry = self._pending.pop(m.acked_seq, None)
            if entry is not None:
                sale = entry[0]
                day = (dt.date(1970, 1, 1) + dt.timedelta(seconds=sale.time)).isoformat()
                self.stats.acked += 1
                self.stats.acked_units[(sale.store_nbr, sale.item_nbr, day)] += sale.quantity_milli / 1000
        elif isinstance(m, Nack):
            self.stats.nacks[m.reason] += 1
            if m.reason == NackReason.INVALID:
                with self._lock:
                    if self._pending.pop(m.nacked_seq, None) is not None:
                        self.stats.refused += 1
        elif isinstance(m, PredictResponse):
            with self._response:
                self.prediction_answers[m.request_seq] = m
                self._response.notify_all()
            if m.status == 0:
                self.stats.predictions.append((0, m.value, m.model_version))
        elif isinstance(m, Display):
            self.stats.displays.append(m.text)
            del self.stats.displays[:-20]

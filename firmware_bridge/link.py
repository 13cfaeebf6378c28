"""One serial device on pyserial: read frames, write frames, reconnect with backoff when unplugged.

The URL is anything :func:`serial.serial_for_url` opens: ``/dev/ttyUSB0``, a pty path (or a
symlink to one, which survives a replug), ``loop://``, ``socket://127.0.0.1:7000``,
``rfc2217://host:port``. A reader thread feeds a :class:`firmware_bridge.protocol.Decoder`;
garbage never stops it, and a read error, EOF or a vanished device closes the port and reopens
it after 0.05 s, 0.1 s, … up to ``max_backoff`` s::

    link = SerialLink("loop://", on_frame=lambda link, frame: print(frame.message))
    link.start()
    link.send(Heartbeat(5))        # loop:// echoes: prints Heartbeat(uptime_ms=5)
    link.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import serial

from firmware_bridge.metrics import BridgeMetrics
from firmware_bridge.protocol import Decoder, Frame, ProtocolError, encode

__all__ = ["SerialLink"]

logger = logging.getLogger(__name__)


class SerialLink:
    """A device link; ``on_frame(link, frame)`` runs on the reader thread for every good frame."""

    def __init__(
        self,
        url: str,
        *,
        baud: int = 115200,
        on_frame: Callable[[SerialLink, Frame], None],
        on_connect: Callable[[SerialLink], None] | None = None,
        on_drop: Callable[[SerialLink, ProtocolError], None] | None = None,
        metrics: BridgeMetrics | None = None,
        max_backoff: float = 2.0,
    ) -> None:
        self.url = url
        self.baud = baud
        self.on_frame = on_frame
        self.on_connect = on_connect
        self.on_drop = on_drop
        self.metrics = metrics or BridgeMetrics()
        self.max_backoff = max_backoff
        self.decoder = Decoder(on_error=self._dropped)
        self._port: Any = None
        self._write_lock = threading.Lock()
        self._seq_lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.connects = 0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> SerialLink:
        self._thread = threading.Thread(target=self._run, name=f"serial-{self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- sending ----------------------------------------------------------------------------
    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            return self._seq

    def send(self, message: Any, seq: int | None = None) -> bool:
        """Write one frame; False (and nothing raised) while the device is away."""
        wire = encode(message, self.next_seq() if seq is None else seq)
        with self._write_lock:
            port = self._port
            if port is None:
                return False
            try:
                port.write(wire)
                port.flush()
            except (serial.SerialException, OSError, ValueError) as exc:
                logger.warning("write to %s failed: %s", self.url, exc)
                return False
        self.metrics.frames_out.labels(type(message).__name__).inc()
        return True

    # -- reading ----------------------------------------------------------------------------
    def _dropped(self, exc: ProtocolError) -> None:
        self.metrics.dropped.labels(exc.reason).inc()
        logger.debug("dropped a frame from %s: %s", self.url, exc)
        if self.on_drop is not None:
            self.on_drop(self, exc)

    def _open(self) -> Any:
        port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=0.05, do_not_open=True)
        if hasattr(port, "exclusive") and not self.url.startswith(("loop://", "socket://", "rfc2217://")):
            port.exclusive = True
        port.open()
        return port

    def _close(self) -> None:
        with self._write_lock:
            port, self._port = self._port, None
        self.connected.clear()
        if port is not None:
            try:
                port.close()
            except Exception:  # closing a vanished device may fail in many ways; it is gone either way
                pass

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                logger.debug("cannot open %s (%s); retrying in %.2f s", self.url, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            with self._write_lock:
                self._port = port
            self.decoder.reset()
            self.connects += 1
            self.metrics.connects.inc()
            self.connected.set()
            logger.info("serial link up", extra={"url": self.url, "connects": self.connects})
            if self.on_connect is not None:
                try:
                    self.on_connect(self)
                except Exception:
                    logger.exception("on_connect failed for %s", self.url)
            opened = time.monotonic()
            try:
                self._read_loop(port)
            except (serial.SerialException, OSError, ValueError, TypeError, AttributeError) as exc:
                if not self._stop.is_set():
                    logger.warning("serial link %s lost: %s", self.url, exc)
            self._close()
            if self._stop.is_set():
                break
            self.metrics.disconnects.inc()
            if time.monotonic() - opened > 5:
                backoff = 0.05  # it was up for a while: a fresh unplug, retry fast
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _read_loop(self, port: Any) -> None:
        while not self._stop.is_set():
            data = port.read(max(1, min(port.in_waiting, 4096)))
            if not data:
                continue
            for frame in self.decoder.feed(data):
                self.metrics.frames_in.labels(type(frame.message).__name__).inc()
                try:
                    self.on_frame(self, frame)
                except Exception:  # a handler bug must not kill the link
                    logger.exception("handling %s from %s failed", type(frame.message).__name__, self.url)

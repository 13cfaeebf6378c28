"""systemd's notify protocol in a few lines (no dependency, a no-op outside systemd).

``Type=notify`` units learn that the agent is serving (``READY=1``), ``WatchdogSec=`` units get a
ping (``WATCHDOG=1``) at most every half watchdog interval, and ``STOPPING=1`` marks a clean stop::

    notify = Notifier.from_env()      # reads NOTIFY_SOCKET and WATCHDOG_USEC
    notify.ready("serving as store-1")
    while running:
        notify.watchdog()             # cheap to call often: sends only when half the interval has passed
    notify.stopping()

>>> Notifier.from_env({}).ready()     # no NOTIFY_SOCKET: nothing is sent
False
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)


class Notifier:
    """Datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.interval_s = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_ping = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog)

    def send(self, message: str) -> bool:
        """Send one notification; False (and a debug log) when there is no socket or it fails."""
        if not self.address:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(addr)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            logger.debug("sd_notify %r failed: %s", message, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        """Ping the watchdog if one is configured and half its interval has passed since the last ping."""
        if self.interval_s is None:
            return False
        now = time.monotonic()
        if now - self._last_ping < self.interval_s:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

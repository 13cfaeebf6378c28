"""Fleet inventory: what every device says about itself over MQTT (``edgeship fleet status``).

Availability comes from the retained ``availability`` topic (``offline`` is the broker-published
last will), hardware, runtimes, attributes, model version and last gate result from the retained
``state``; events and telemetry are followed while watching (the rollout controller uses them).

    $ edgeship fleet status --broker mqtt://127.0.0.1:1883
    device   online  model  last seen  gate                 hardware          attributes
    store-1  yes     v3     4s ago     passed (v3)          x86_64            store_type=A
    store-2  no      v2     2h ago     failed (v3: nwrmsle) aarch64 rpi4      store_type=B

>>> # rows = fleet_status("mqtt://127.0.0.1:1883", fleet="default")
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from models import topics
from models.broker import BrokerURL, connect_and_wait, new_client
from models.messages import DeviceState, utcnow

__all__ = ["DeviceView", "FleetView", "fleet_status", "format_table"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DeviceView:
    """One device as the fleet view knows it."""

    device_id: str
    online: bool | None = None
    state: DeviceState | None = None
    last_seen: dt.datetime | None = None
    events: collections.deque[dict[str, Any]] = dataclasses.field(default_factory=lambda: collections.deque(maxlen=200))
    telemetry: dict[str, Any] | None = None

    def seen(self, at: dt.datetime | None = None) -> None:
        at = at or utcnow()
        if self.last_seen is None or at > self.last_seen:
            self.last_seen = at

    @property
    def version(self) -> int | None:
        return self.state.model.version if self.state and self.state.model else None

    @property
    def digest(self) -> str | None:
        return self.state.model.digest if self.state and self.state.model else None

    def attributes(self) -> dict[str, str]:
        """Attributes a rollout selects on: the operator's, plus hardware facts (machine, …)."""
        if self.state is None:
            return {}
        hw = {k: v for k, v in self.state.hardware.items() if k in ("machine", "system")}
        return {**hw, **self.state.attributes}

    def gate(self) -> dict[str, Any] | None:
        """The last on-device gate result (retained state, or the newest gate event seen)."""
        for e in reversed(self.events):
            if e.get("kind") in ("gate_passed", "gate_failed"):
                d = e.get("detail", {})
                figures = d.get("figures") or {k: v for k, v in d.items() if isinstance(v, (int, float)) and k != "version"}
                return {"result": e["kind"], "version": d.get("version"), "reason": d.get("reason"), "figures": figures}
        g = self.state.gate if self.state else None
        if g is not None:
            return {"result": g.outcome, "version": g.version, "reason": g.reason, "figures": dict(g.figures)}
        return None

    def row(self) -> dict[str, Any]:
        s = self.state
        gate = self.gate()
        return {
            "device": self.device_id,
            "online": self.online,
            "model": s.model.name if s and s.model else None,
            "version": self.version,
            "digest": self.digest,
            "variant": s.model.variant if s and s.model else None,
            "status": s.status if s else None,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "gate": gate,
            "last_update": s.last_update.model_dump(mode="json") if s and s.last_update else None,
            "hardware": dict(s.hardware) if s else {},
            "attributes": dict(s.attributes) if s else {},
            "runtimes": dict(s.runtimes) if s else {},
            "delivery": s.delivery if s else None,
            "keylist_version": (s.trust or {}).get("keylist_version") if s else None,
        }


class FleetView:
    """Watches one fleet: retained availability and state, events and telemetry as they come.

    Thread-safe; ``listeners`` are called (from paho's thread) with ``(device_id, kind, payload)``.
    """

    def __init__(self, broker: str, fleet: str = "default") -> None:
        self.url = BrokerURL.parse(broker)
        self.fleet = topics.validate_id(fleet, "fleet")
        self.devices: dict[str, DeviceView] = {}
        self.lock = threading.RLock()
        self.listeners: list[Callable[[str, str, Any], None]] = []
        self._last_message = time.monotonic()
        self._connected = threading.Event()
        self._started = False
        self._refused: str | None = None
        #: Device messages dropped as malformed (bad JSON, naive times, schema), per device.
        self.bad_messages: collections.Counter[str] = collections.Counter()
        self.loop_restarts = 0
        self.client = new_client(f"edgeship-fleet-{uuid.uuid4().hex[:8]}", self.url)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self._connected.clear()
        self.client.on_message = self._on_message

    def start(self, timeout: float = 15.0) -> FleetView:
        """Connect once (``with view.start()`` after ``start()`` does not reconnect)."""
        if not self._started:
            connect_and_wait(self.client, self.url, self._connected, timeout=timeout, refused=lambda: self._refused)
            self._started = True
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False

    def alive(self) -> bool:
        """True while the network loop runs and the broker connection is up: only then is what the
        view says current (a rollout never acts on a dead view)."""
        thread = getattr(self.client, "_thread", None)
        return thread is not None and thread.is_alive() and self._connected.is_set()

    def ensure_alive(self) -> None:
        """Restart a dead network loop (counted in ``loop_restarts``)."""
        thread = getattr(self.client, "_thread", None)
        if thread is None or not thread.is_alive():
            self.loop_restarts += 1
            logger.error("fleet view: the MQTT loop died; restarting it")
            self.client._thread = None
            self.client.loop_start()
            try:
                self.client.reconnect()
            except Exception as exc:
                logger.warning("fleet view: reconnect failed (%s); paho retries", exc)

    def __enter__(self) -> FleetView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_quiet(self, quiet: float = 0.3, at_most: float = 3.0) -> None:
        """Wait until no message came for ``quiet`` seconds (the retained ones are in), at most ``at_most``."""
        start = time.monotonic()
        time.sleep(min(quiet, at_most))
        while time.monotonic() - start < at_most and time.monotonic() - self._last_message < quiet:
            time.sleep(0.05)

    def snapshot(self) -> dict[str, DeviceView]:
        with self.lock:
            return {d: dataclasses.replace(v, events=collections.deque(v.events, maxlen=200)) for d, v in self.devices.items()}

    def device(self, device_id: str) -> DeviceView:
        with self.lock:
            return self.devices.setdefault(device_id, DeviceView(device_id))

    # -- paho -------------------------------------------------------------------------------
    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            return
        c.subscribe([(topics.device_wildcard(self.fleet, leaf), 1) for leaf in ("availability", "state", "events", "telemetry")])
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._last_message = time.monotonic()
        parts = msg.topic.split("/")
        if len(parts) != 4 or parts[1] != self.fleet:
            return
        device, leaf = parts[2], parts[3]
        payload: Any = None
        with self.lock:
            view = self.devices.setdefault(device, DeviceView(device))
            try:
                if leaf == "availability":
                    if not msg.payload:
                        return
                    view.online = msg.payload == b"online"
                    payload = view.online
                    if view.online and not msg.retain:
                        view.seen()
                elif leaf == "state":
                    if not msg.payload:
                        return
                    view.state = DeviceState.model_validate_json(msg.payload)
                    view.seen(view.state.updated_at)
                    payload = view.state
                elif leaf == "events":
                    payload = json.loads(msg.payload)
                    at = _when(payload.get("at"))  # raises for a time without a zone: nothing kept
                    view.events.append(payload)
                    view.seen(at)
                elif leaf == "telemetry":
                    payload = json.loads(msg.payload)
                    at = _when(payload.get("at"))
                    view.telemetry = payload
                    view.seen(at)
                else:
                    return
            except Exception as exc:  # whatever one device sends, the view goes on (dropped and counted)
                self.bad_messages[device] += 1
                logger.warning("bad %s from %s: %s", leaf, device, (str(exc).splitlines() or [""])[0][:200])
                return
        for listener in list(self.listeners):
            try:
                listener(device, leaf, payload)
            except Exception:
                logger.exception("fleet listener failed")


def _when(value: Any) -> dt.datetime | None:
    """A message's time: None when absent; ValueError when unreadable or without a time zone."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"time {value!r} is not an ISO 8601 string")
    at = dt.datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    return at


def fleet_status(broker: str, fleet: str = "default", *, wait: float = 3.0) -> list[dict[str, Any]]:
    """One row per device the broker holds retained state or availability for."""
    with FleetView(broker, fleet) as view:
        view.wait_quiet(quiet=0.4, at_most=wait)
        devices = view.snapshot()
    return [devices[d].row() for d in sorted(devices)]


def _ago(iso: str | None, now: dt.datetime) -> str:
    if not iso:
        return "—"
    s = max(0.0, (now - dt.datetime.fromisoformat(iso)).total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def _gate_text(g: dict[str, Any] | None) -> str:
    if not g:
        return "—"
    word = "passed" if g["result"] == "gate_passed" else "failed"
    figures = g.get("figures") or {}
    nums = ", ".join(f"{k} {v:.4g}" for k, v in list(figures.items())[:2] if isinstance(v, (int, float)))
    return f"{word} (v{g.get('version')}{': ' + nums if nums else ''})"


def format_table(rows: list[dict[str, Any]], now: dt.datetime | None = None) -> str:
    """The table ``edgeship fleet status`` prints."""
    now = now or utcnow()
    header = ["device", "online", "model", "last seen", "gate", "hardware", "attributes"]
    lines = [header]
    for r in rows:
        hw = r["hardware"]
        hardware = " ".join(x for x in (hw.get("machine"), r["attributes"].get("hardware")) if x) or "—"
        attrs = ",".join(f"{k}={v}" for k, v in sorted(r["attributes"].items()) if k != "hardware") or "—"
        online = {True: "yes", False: "no", None: "?"}[r["online"]]
        model = f"v{r['version']}" if r["version"] is not None else "none"
        if r.get("delivery") and r["delivery"].get("state") == "downloading":
            d = r["delivery"]
            model += f" (→v{d['version']} {d.get('have', 0)}/{d.get('total', '?')})"
        lines.append([r["device"], online, model, _ago(r["last_seen"], now), _gate_text(r["gate"]), hardware, attrs])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)

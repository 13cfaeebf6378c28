"""The agent's MQTT side: availability, retained state, events, and receiving bundles.

One paho client (MQTT 3.1.1, ``CallbackAPIVersion.VERSION2``, from :func:`models.broker.new_client`),
last will ``offline`` set before connecting, ``connect_async`` + ``loop_start`` (one loop style),
automatic reconnects with exponential back-off, subscriptions made in ``on_connect`` (so they come
back after a reconnect). Topics come from :mod:`models.topics`, payloads from :mod:`models.messages`.

Receiving a model is :class:`edge.delivery.updater.Delivery`'s job (signed targets, key lists, a resumable
pull of retained chunks with a bounded window, stall handling); this link creates it, forwards each
connect to it, and starts and stops it. Installs run on delivery's worker thread.

Usage (the agent does this)::

    link = MqttLink(config, agent, downloads_dir=store.downloads_dir, metrics=metrics)  # agent: a LinkHost
    link.start()                 # returns at once; connects and reconnects in the background
    link.publish_event("active", version=3)
    link.stop()                  # "offline" published explicitly, then a clean disconnect
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge.config import AgentConfig
from edge.delivery.updater import Delivery, DeliveryHost
from edge.monitoring.metrics import AgentMetrics
from edge.delivery.trust import TrustStore
from models import topics
from models.broker import new_client
from models.messages import DeviceEvent, DeviceState

__all__ = ["MqttLink"]

logger = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"


class LinkHost(DeliveryHost, Protocol):
    """What the link needs from the agent: the delivery host's methods and the retained state to publish."""

    def device_state(self) -> DeviceState:
        """The retained ``state`` message (model, gate, hardware, attributes …)."""


class MqttLink:
    """The agent's MQTT client, its bundle transfers and its single update worker."""

    def __init__(
        self,
        config: AgentConfig,
        host: LinkHost,
        *,
        downloads_dir: str | Path,
        metrics: AgentMetrics,
        trust: TrustStore | None = None,
    ) -> None:
        url = config.broker_url
        if url is None:
            raise ValueError("MqttLink needs config.broker")
        self.config = config
        self.url = url
        self.downloads_dir = Path(downloads_dir)
        self.metrics = metrics
        self.host = host
        self._availability = topics.availability(config.fleet, config.device_id)
        self._lock = threading.RLock()
        self._stopping = False
        self._connected = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.loop_restarts = 0
        self.disconnects = 0  # connections lost (not counting stop())
        #: Called with the client after every (re)connect (edge.serving.mqtt subscribes its requests here).
        self.on_connected: list[Callable[[mqtt.Client], None]] = []
        #: When set, events go through it (edge.monitoring.telemetry: sequenced, spooled on disk, none lost offline).
        self.event_sink: Callable[[str, dict[str, Any]], None] | None = None

        # the client id is the broker username when there is one (the shipped broker config enforces
        # use_username_as_clientid: nobody else's credentials can take this id)
        client_id = os.environ.get("EDGESHIP_MQTT_USERNAME") or f"edgeship-{config.fleet}-{config.device_id}"
        c = new_client(client_id, url, clean_session=True)
        c.will_set(self._availability, OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(
            min_delay=max(1, round(config.reconnect_min_s)), max_delay=max(1, round(config.reconnect_max_s))
        )
        c.max_queued_messages_set(100)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_other_message
        self.client = c
        if trust is None:
            trust = TrustStore(config.state_dir, pinned=config.trust, roots=config.trust_root)
        self.delivery = Delivery(config, c, trust=trust, downloads_dir=self.downloads_dir, metrics=metrics, host=host, link=self)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the delivery worker and connect in the background (retrying until the broker answers)."""
        self.delivery.start()
        self.client.connect_async(self.url.host, self.url.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()
        self._watchdog = threading.Thread(target=self._watch_loop, name="edgeship-mqtt-watchdog", daemon=True)
        self._watchdog.start()
        logger.info("connecting to MQTT broker", extra={"broker": str(self.url)})

    def loop_alive(self) -> bool:
        """Whether paho's network thread is running (a callback that raised would have ended it)."""
        thread = getattr(self.client, "_thread", None)
        return thread is not None and thread.is_alive()

    def _watch_loop(self, interval: float = 1.0) -> None:
        """Restart a dead network loop (counted, shown in ``/healthz``): a device never stays deaf."""
        stop = threading.Event()
        while not self._stopping:
            stop.wait(interval)
            if self._stopping:
                return
            if not self.loop_alive():
                self.loop_restarts += 1
                self.metrics.mqtt_loop_restarts.inc()
                self._connected.clear()
                logger.error("MQTT network loop died; restarting it (restart %d)", self.loop_restarts)
                try:
                    self.client._thread = None  # paho refuses loop_start while the dead thread is referenced
                    self.client.loop_start()
                    self.client.reconnect()
                except Exception as exc:  # the loop's own reconnects take over from here
                    logger.warning("MQTT reconnect after loop restart failed: %s", exc)

    def health(self) -> dict[str, Any]:
        """For ``/healthz``: is the MQTT side alive and connected."""
        return {"connected": self.connected, "loop_alive": self.loop_alive(), "loop_restarts": self.loop_restarts}

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (retained), disconnect, stop the loop and the worker."""
        self._stopping = True
        if self.connected:
            try:
                info = self.client.publish(self._availability, OFFLINE, qos=1, retain=True)
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:
                logger.warning("could not publish offline: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self.delivery.stop(timeout)  # a transfer's part file is kept for a resume

    # -- publishing -------------------------------------------------------------------------
    def publish_state(self) -> None:
        """Publish the retained DeviceState (if connected; it is published again on connect)."""
        if self.connected:
            topic = topics.state(self.config.fleet, self.config.device_id)
            self.client.publish(topic, self.host.device_state().model_dump_json(), qos=1, retain=True)

    def publish_event(self, kind: str, **detail: Any) -> None:
        """Publish one DeviceEvent on the events topic (dropped while disconnected, unless
        :attr:`event_sink` spools it)."""
        if self.event_sink is not None:
            self.event_sink(kind, detail)
            return
        if self.connected:
            event = DeviceEvent(device_id=self.config.device_id, kind=kind, detail=detail)
            self.client.publish(topics.events(self.config.fleet, self.config.device_id), event.model_dump_json(), qos=1)

    # -- paho callbacks (network thread: keep them short) -----------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            logger.warning("MQTT connection refused: %s", reason)
            return
        logger.info("connected to MQTT broker", extra={"broker": str(self.url)})
        self.delivery.on_connect(client)
        client.publish(self._availability, ONLINE, qos=1, retain=True)
        self._connected.set()
        self.publish_state()
        for hook in list(self.on_connected):
            try:
                hook(client)
            except Exception:  # a hook's fault must not break the connection
                logger.exception("on_connected hook failed")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        self.disconnects += 1
        if not self._stopping:
            logger.warning("disconnected from MQTT broker (%s); reconnecting", reason)

    def _on_other_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        logger.debug("ignoring message on %s", msg.topic)



"""``edgeship feedback collect``: follow every device's ``feedback`` topic into a :class:`FeedbackSet`.

A persistent MQTT session (``clean_session=False``, QoS 1, a fixed client id) so that records a
device sends while the collector is down wait at the broker; each record is appended once (dedup by
``id``). Per device the collector tracks the ``seq`` numbers it saw, so gaps can be reported::

    c = Collector("mqtt://127.0.0.1:1883", "feedback/").start()
    c.wait_connected(10); ...; c.stop()
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from cloud.feedback.store import FeedbackSet
from models import topics
from models.broker import BrokerURL, new_client
from models.feedback import FeedbackRecord

__all__ = ["Collector"]

logger = logging.getLogger(__name__)


class Collector:
    """Subscribes to ``<prefix>/<fleet>/+/feedback`` and appends what arrives."""

    def __init__(
        self, broker: str, out: str | os.PathLike[str], *, fleet: str = "default", client_id: str = "edgeship-feedback"
    ) -> None:
        self.url = BrokerURL.parse(broker)
        self.store = FeedbackSet(out)
        self.fleet = fleet
        self.seen: dict[str, set[int]] = {}
        self.received = 0
        self._connected = threading.Event()
        self.client = new_client(client_id, self.url, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self._connected.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 5)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            logger.error("broker refused the collector: %s", rc)
            return
        client.subscribe(topics.device_wildcard(self.fleet, "feedback"), qos=1)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            record = FeedbackRecord.model_validate_json(msg.payload)
        except ValidationError as exc:
            logger.warning("not a feedback record on %s: %s", msg.topic, exc)
            return
        self.received += 1
        if record.seq is not None:
            self.seen.setdefault(record.device_id, set()).add(record.seq)
        if self.store.add(record):
            logger.info("feedback %s from %s (seq %s)", record.id, record.device_id, record.seq)

    def gaps(self) -> dict[str, list[int]]:
        """Per device, the sequence numbers missing between 1 and the highest seen."""
        return {d: sorted(set(range(1, max(s) + 1)) - s) for d, s in self.seen.items() if s}

    def start(self) -> Collector:
        self.client.connect_async(self.url.host, self.url.port, keepalive=30)
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

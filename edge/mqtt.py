"""The agent's MQTT side: availability, retained state, events, and receiving bundles.

One paho client (MQTT 3.1.1, ``CallbackAPIVersion.VERSION2``, from :func:`models.broker.new_client`),
last will ``offline`` set before connecting, ``connect_async`` + ``loop_start`` (one loop style),
automatic reconnects with exponential back-off, subscriptions made in ``on_connect`` (so they come
back after a reconnect). Topics come from :mod:`models.topics`, payloads from :mod:`models.messages`.

Receiving a model::

    <prefix>/<fleet>/models/<model>/announce   retained ModelAnnouncement  → should_fetch(ann)?
    <prefix>/<fleet>/bundles/<id>/chunk/<i>    retained raw chunk bytes    → Transfer.add_chunk
    complete                                   → on_complete(transfer) on the worker thread

Paho's network thread only parses, hashes one chunk and writes it at its offset; the whole-file
hash, verification, unpacking and model loading run on one worker thread. A newer announcement
while a transfer runs replaces it. A transfer without a new chunk for ``chunk_timeout_s`` is
re-requested by subscribing again (the broker re-sends the retained chunks; duplicates are
ignored) up to ``transfer_retries`` times, then abandoned with its part file kept for a resume.

Usage (the agent does this)::

    link = MqttLink(config, downloads_dir=store.downloads_dir, metrics=metrics, should_fetch=...,
                    on_complete=..., on_failed=..., state=...)
    link.start()                 # returns at once; connects and reconnects in the background
    link.publish_event("active", version=3)
    link.stop()                  # "offline" published explicitly, then a clean disconnect
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge.config import AgentConfig
from edge.metrics import AgentMetrics
from edge.transfer import ChunkError, Transfer
from models import topics
from models.broker import new_client
from models.messages import DeviceEvent, DeviceState, ModelAnnouncement

__all__ = ["MqttLink"]

logger = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"


class MqttLink:
    """The agent's MQTT client, its bundle transfers and its single update worker."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        downloads_dir: str | Path,
        metrics: AgentMetrics,
        should_fetch: Callable[[ModelAnnouncement], str | None],
        on_complete: Callable[[Transfer], None],
        on_failed: Callable[[ModelAnnouncement, str, str], None],
        state: Callable[[], DeviceState],
    ) -> None:
        url = config.broker_url
        if url is None:
            raise ValueError("MqttLink needs config.broker")
        self.config = config
        self.url = url
        self.downloads_dir = Path(downloads_dir)
        self.metrics = metrics
        self._should_fetch = should_fetch
        self._on_complete = on_complete
        self._on_failed = on_failed
        self._state = state
        self._availability = topics.availability(config.fleet, config.device_id)
        self._announce = topics.model_announce(config.fleet, config.model)
        self._lock = threading.RLock()
        self._transfer: Transfer | None = None
        self._chunk_filter: str | None = None
        self._retries = 0
        self._handed_off: set[str] = set()
        self._jobs: queue.Queue[Transfer | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._connected = threading.Event()

        c = new_client(f"edgeship-{config.fleet}-{config.device_id}", url, clean_session=True)
        c.will_set(self._availability, OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(
            min_delay=max(1, round(config.reconnect_min_s)), max_delay=max(1, round(config.reconnect_max_s))
        )
        c.max_queued_messages_set(100)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_other_message
        c.message_callback_add(self._announce, self._on_announce)
        self.client = c

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker and connect in the background (retrying until the broker answers)."""
        self._worker = threading.Thread(target=self._work, name="edgeship-update", daemon=True)
        self._worker.start()
        self.client.connect_async(self.url.host, self.url.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()
        logger.info("connecting to MQTT broker", extra={"broker": str(self.url)})

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
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        with self._lock:
            if self._transfer is not None:
                self._transfer.close()  # part file kept for a resume
                self._transfer = None

    # -- publishing -------------------------------------------------------------------------
    def publish_state(self) -> None:
        """Publish the retained DeviceState (if connected; it is published again on connect)."""
        if self.connected:
            topic = topics.state(self.config.fleet, self.config.device_id)
            self.client.publish(topic, self._state().model_dump_json(), qos=1, retain=True)

    def publish_event(self, kind: str, **detail: Any) -> None:
        """Publish one DeviceEvent on the events topic (dropped while disconnected)."""
        if self.connected:
            event = DeviceEvent(device_id=self.config.device_id, kind=kind, detail=detail)
            self.client.publish(topics.events(self.config.fleet, self.config.device_id), event.model_dump_json(), qos=1)

    # -- paho callbacks (network thread: keep them short) -----------------------------------
    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            logger.warning("MQTT connection refused: %s", reason)
            return
        logger.info("connected to MQTT broker", extra={"broker": str(self.url)})
        client.subscribe(self._announce, qos=1)
        with self._lock:
            if self._chunk_filter is not None:
                client.subscribe(self._chunk_filter, qos=1)
        client.publish(self._availability, ONLINE, qos=1, retain=True)
        self._connected.set()
        self.publish_state()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._stopping:
            logger.warning("disconnected from MQTT broker (%s); reconnecting", reason)

    def _on_other_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        logger.debug("ignoring message on %s", msg.topic)

    def _on_announce(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained announcement being cleared
            return
        try:
            ann = ModelAnnouncement.model_validate_json(msg.payload)
            if msg.topic != topics.model_announce(self.config.fleet, ann.model):
                raise ValueError(f"announcement for model {ann.model!r} on topic {msg.topic}")
        except (ValidationError, ValueError) as exc:
            self.metrics.bad_messages.inc()
            logger.warning("bad announcement on %s: %s", msg.topic, str(exc).splitlines()[0])
            return
        with self._lock:
            current = self._transfer
            if (current is not None and current.announcement.sha256 == ann.sha256) or ann.sha256 in self._handed_off:
                return
            skip = self._should_fetch(ann)
            if skip is not None:
                logger.info("ignoring announcement of %s v%d: %s", ann.model, ann.version, skip)
                return
            self._begin(ann)

    def _on_chunk(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained chunk being cleared
            return
        try:
            _fleet, bundle_id, index = topics.parse_chunk_topic(msg.topic)
        except ValueError:
            self.metrics.bad_messages.inc()
            return
        with self._lock:
            t = self._transfer
            if t is None or t.bundle_id != bundle_id:
                return
            try:
                if t.add_chunk(index, msg.payload):
                    self.metrics.bundle_bytes_received.inc(len(msg.payload))
            except ChunkError as exc:
                self.metrics.bad_chunks.inc()
                logger.warning("rejected chunk: %s", exc, extra={"bundle_id": bundle_id, "reason": exc.reason})
                return
            if not t.complete:
                return
            self._end_transfer()
            self._handed_off.add(t.announcement.sha256)
        logger.info("bundle received", extra={"bundle_id": bundle_id, "bytes": t.announcement.size})
        self._jobs.put(t)

    # -- transfers (under self._lock) -------------------------------------------------------
    def _begin(self, ann: ModelAnnouncement) -> None:
        if self._transfer is not None:
            logger.info(
                "announcement of v%d replaces the transfer of v%d", ann.version, self._transfer.announcement.version
            )
            old = self._end_transfer()
            if old is not None:
                old.discard()
        try:
            t = Transfer(ann, self.downloads_dir)
        except (ValueError, OSError) as exc:
            logger.error("cannot receive %s v%d: %s", ann.model, ann.version, exc)
            self._on_failed(ann, "bad_announcement" if isinstance(exc, ValueError) else "disk", str(exc))
            return
        logger.info(
            "receiving bundle",
            extra={"model": ann.model, "version": ann.version, "bundle_id": ann.bundle_id, "chunks": t.chunks},
        )
        self.publish_event("downloading", model=ann.model, version=ann.version, sha256=ann.sha256, size=ann.size)
        if t.complete:  # fully resumed from disk
            self._handed_off.add(ann.sha256)
            self._jobs.put(t)
            return
        self._transfer, self._retries = t, 0
        self._chunk_filter = topics.bundle_chunks(self.config.fleet, ann.bundle_id)
        self.client.message_callback_add(self._chunk_filter, self._on_chunk)
        self.client.subscribe(self._chunk_filter, qos=1)

    def _end_transfer(self) -> Transfer | None:
        """Stop receiving the current transfer (unsubscribe); its files are the caller's to keep or drop."""
        t, self._transfer = self._transfer, None
        if self._chunk_filter is not None:
            self.client.unsubscribe(self._chunk_filter)
            self.client.message_callback_remove(self._chunk_filter)
            self._chunk_filter = None
        return t

    def _check_stalled(self) -> None:
        with self._lock:
            t = self._transfer
            if t is None or time.monotonic() - t.last_chunk_at < self.config.chunk_timeout_s:
                return
            if self._retries < self.config.transfer_retries:
                self._retries += 1
                t.last_chunk_at = time.monotonic()
                logger.warning("transfer %s stalled at %d/%d chunks; re-requesting", t.bundle_id, t.received, t.chunks)
                if self._chunk_filter is not None:
                    self.client.unsubscribe(self._chunk_filter)
                    self.client.subscribe(self._chunk_filter, qos=1)
                return
            self._end_transfer()
            t.close()  # keep the part file: a later announcement or reconnect resumes it
        self._on_failed(t.announcement, "stalled", f"{len(t.missing())} of {t.chunks} chunks never arrived")

    # -- worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=1.0)
            except queue.Empty:
                self._check_stalled()
                continue
            if job is None:
                return
            try:
                self._on_complete(job)
            except Exception:
                logger.exception("installing bundle %s failed", job.bundle_id)
            finally:
                with self._lock:
                    self._handed_off.discard(job.announcement.sha256)
            self._check_stalled()

"""``edgeship publish``: send a bundle's bytes, as they are, to every device of a fleet over MQTT.

The bundle goes out as retained chunks (each with its sha256 in the announcement) followed by a
retained announcement of the desired version, so a device that comes online later still finds
both. Chunks are paced with a bounded in-flight window (Mosquitto silently drops QoS 1 messages
past ``max_queued_messages``). The previous version's retained chunks are cleared afterwards.
Publishing signs nothing: the bundle was signed when it was made, and agents verify it.

>>> # publish("out/favorita-demand-v1.bundle.tar", "mqtt://127.0.0.1:1883")
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import paho.mqtt.client as mqtt
from tqdm import tqdm

from models import topics
from models.broker import BrokerURL, new_client
from models.messages import ModelAnnouncement

__all__ = ["DEFAULT_CHUNK_SIZE", "announcement_for", "publish", "PublishError"]

logger = logging.getLogger(__name__)
DEFAULT_CHUNK_SIZE = 64 * 1024


class PublishError(RuntimeError):
    """The broker could not be reached or did not take the bundle."""


def announcement_for(bundle: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[ModelAnnouncement, bytes]:
    """The announcement for ``bundle`` and the bundle's bytes. Reads the manifest, checks nothing signed."""
    data = bundle.read_bytes()
    try:
        with tarfile.open(bundle, "r:") as tar:
            fh = tar.extractfile("manifest.json")
            meta = json.loads(fh.read()) if fh else None
    except (tarfile.TarError, KeyError, ValueError) as exc:
        raise PublishError(f"{bundle}: not an edgeship bundle ({exc})") from exc
    if not meta or "name" not in meta or "version" not in meta:
        raise PublishError(f"{bundle}: manifest.json lacks name or version")
    digest = hashlib.sha256(data).hexdigest()
    chunks = [hashlib.sha256(data[i : i + chunk_size]).hexdigest() for i in range(0, len(data), chunk_size)]
    ann = ModelAnnouncement(
        model=meta["name"],
        version=int(meta["version"]),
        bundle_id=digest[:32],
        sha256=digest,
        size=len(data),
        chunk_size=chunk_size,
        chunk_sha256=chunks,
        filename=bundle.name,
    )
    return ann, data


def publish(
    bundle: str | Path,
    broker: str,
    *,
    fleet: str = "default",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    window: int = 16,
    timeout: float = 120.0,
    progress: bool = True,
) -> ModelAnnouncement:
    """Publish ``bundle`` to ``fleet`` through ``broker``; return the announcement sent."""
    topics.validate_id(fleet, "fleet")
    url = BrokerURL.parse(broker)
    ann, data = announcement_for(Path(bundle), chunk_size)
    client = new_client(f"edgeship-publish-{uuid.uuid4().hex[:8]}", url)
    connected = threading.Event()
    previous: dict[str, ModelAnnouncement] = {}
    announce_topic = topics.model_announce(fleet, ann.model)

    def on_connect(c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        if reason.is_failure:
            logger.error("broker refused the connection: %s", reason)
            return
        c.subscribe(announce_topic, qos=1)
        connected.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == announce_topic and msg.retain and msg.payload:
            try:
                previous["ann"] = ModelAnnouncement.model_validate_json(msg.payload)
            except ValueError:
                logger.warning("ignoring a malformed retained announcement on %s", msg.topic)

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(url.host, url.port, keepalive=30)
    except OSError as exc:
        raise PublishError(f"cannot reach broker {url}: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout=15):
            raise PublishError(f"broker {url} did not accept the connection within 15 s")
        time.sleep(0.3)  # let the current retained announcement arrive, so its chunks can be cleared
        deadline = time.monotonic() + timeout
        in_flight: deque[mqtt.MQTTMessageInfo] = deque()

        def send(topic: str, payload: bytes) -> None:
            info = client.publish(topic, payload, qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
            in_flight.append(info)
            while len(in_flight) >= window:
                _wait(in_flight.popleft(), deadline)

        for i in tqdm(range(len(ann.chunk_sha256)), desc="publish", unit="chunk", disable=not progress):
            send(topics.bundle_chunk(fleet, ann.bundle_id, i), data[i * chunk_size : (i + 1) * chunk_size])
        while in_flight:
            _wait(in_flight.popleft(), deadline)
        send(announce_topic, ann.model_dump_json().encode())
        while in_flight:
            _wait(in_flight.popleft(), deadline)
        old = previous.get("ann")
        if old is not None and old.bundle_id != ann.bundle_id:
            for i in range(len(old.chunk_sha256)):  # clear the superseded version's retained chunks
                send(topics.bundle_chunk(fleet, old.bundle_id, i), b"")
            while in_flight:
                _wait(in_flight.popleft(), deadline)
        logger.info("published %s v%d (%d bytes, %d chunks) to %s", ann.model, ann.version, ann.size, len(ann.chunk_sha256), url)
        return ann
    finally:
        client.disconnect()
        client.loop_stop()


def _wait(info: mqtt.MQTTMessageInfo, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PublishError("timed out waiting for the broker to acknowledge the bundle")
    info.wait_for_publish(timeout=remaining)
    if not info.is_published():
        raise PublishError("timed out waiting for the broker to acknowledge the bundle")

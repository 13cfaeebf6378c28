"""Putting bundles on the broker: ``edgeship publish`` (everyone now), the bundle server, signing targets.

A bundle goes out as retained chunks ``<fleet>/bundles/<id>/chunk/<i>`` (paced: a bounded window of
in-flight QoS 1 messages, since Mosquitto silently drops past ``max_queued_messages``), then a
retained announcement carrying the **signed targets** document (:mod:`models.targets`: version,
bundle sha256, size, every chunk's sha256, fleet, hardware, expiry) and the root-signed key list.
Devices pull the chunks themselves, a window at a time (:mod:`edge.delivery.updater`), so a device that
joins late or lost chunks fetches exactly what it lacks from the retained copies.

:class:`Publisher` is the connected cloud client the CLI commands share. With :meth:`Publisher.serve`
it also answers devices' :class:`models.messages.ChunkRequest` by re-publishing the requested chunks
(the broker may have lost retained messages: a restart without persistence); ``edgeship
serve-bundles`` and the rollout controller keep one running.

>>> # publish("out/favorita-demand-v2.bundle.tar", "mqtt://127.0.0.1:1883", key="keys/signing.key")
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import queue
import tarfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from tqdm import tqdm

from models import topics
from models.broker import BrokerURL, connect_and_wait, new_client
from models.envelope import Signed, sign_document
from models.messages import ChunkRequest, DeviceCommand, ModelAnnouncement, utcnow
from models.signing import load_private_key
from models.targets import BundleRef, Targets, announcement_of

__all__ = [
    "sign_candidate",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_EXPIRES_S",
    "DEFAULT_KEEP_RETAINED",
    "PreparedBundle",
    "Publisher",
    "PublishError",
    "NotNewerError",
    "announcement_for",
    "check_newer",
    "load_keylist",
    "publish",
    "read_bundle",
    "serve_bundles",
    "sign_targets",
]

logger = logging.getLogger(__name__)
DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_EXPIRES_S = 7 * 24 * 3600
#: Versions per model whose chunks stay retained on the broker (older ones are cleared on publish).
DEFAULT_KEEP_RETAINED = 3


class PublishError(RuntimeError):
    """The broker could not be reached, did not take the bundle, or the bundle or key is unusable."""


class NotNewerError(PublishError):
    """The fleet already announces this model at the bundle's version or above (or the same version
    with another digest): devices would ignore it, or it is a rollback and must be said so."""


def check_newer(previous: ModelAnnouncement | None, b: PreparedBundle, *, rollback: bool = False) -> None:
    """Refuse (:class:`NotNewerError`, logged as a warning) to send ``b`` over ``previous``, the
    fleet's retained announcement, unless ``b`` is newer, or ``rollback`` says an older one is meant.

    >>> check_newer(None, b)  # doctest: +SKIP  (nothing announced yet: fine)
    """
    if previous is None or previous.model != b.model:
        return
    if previous.version < b.version:
        return
    if previous.version == b.version and previous.sha256 == b.sha256:
        why = f"the fleet already announces {b.model} v{b.version} with this very bundle (sha256 {b.sha256[:12]}…): nothing to do"
    elif previous.version == b.version:
        why = (f"the fleet already announces {b.model} v{b.version} with another digest ({previous.sha256[:12]}… vs this "
               f"bundle's {b.sha256[:12]}…): two different models may not share a version; train again for a new number")
    else:
        why = f"the fleet already announces {b.model} v{previous.version}, above this bundle's v{b.version}"
    if rollback and previous.version != b.version:
        logger.warning("%s; going ahead as a rollback", why)
        return
    logger.warning("refusing: %s", why)
    raise NotNewerError(why + ("" if previous.version == b.version else " (say --rollback to go back to it on purpose)"))


@dataclasses.dataclass(frozen=True)
class PreparedBundle:
    """A bundle file's bytes and what the targets document says about them."""

    path: Path
    data: bytes
    model: str
    version: int
    sha256: str
    chunk_size: int
    chunk_sha256: list[str]

    @property
    def bundle_id(self) -> str:
        return self.sha256[:32]

    @property
    def size(self) -> int:
        return len(self.data)

    def chunk(self, i: int) -> bytes:
        return self.data[i * self.chunk_size : (i + 1) * self.chunk_size]

    def rechunked(self, chunk_size: int) -> PreparedBundle:
        """The same bytes cut into ``chunk_size`` chunks (as a signed announcement declares them)."""
        if chunk_size == self.chunk_size:
            return self
        d = self.data
        chunks = [hashlib.sha256(d[i : i + chunk_size]).hexdigest() for i in range(0, len(d), chunk_size)]
        return dataclasses.replace(self, chunk_size=chunk_size, chunk_sha256=chunks)

    def ref(self) -> BundleRef:
        return BundleRef(
            bundle_id=self.bundle_id,
            size=self.size,
            chunk_size=self.chunk_size,
            chunk_sha256=self.chunk_sha256,
            filename=self.path.name,
        )


def read_bundle(bundle: str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> PreparedBundle:
    """Read a bundle and its manifest's name and version (nothing is verified here: devices verify)."""
    bundle = Path(bundle)
    data = bundle.read_bytes()
    try:
        with tarfile.open(bundle, "r:") as tar:
            fh = tar.extractfile("manifest.json")
            meta = json.loads(fh.read()) if fh else None
    except (tarfile.TarError, KeyError, ValueError) as exc:
        raise PublishError(f"{bundle}: not an edgeship bundle ({exc})") from exc
    if not meta or "name" not in meta or "version" not in meta:
        raise PublishError(f"{bundle}: manifest.json lacks name or version")
    chunks = [hashlib.sha256(data[i : i + chunk_size]).hexdigest() for i in range(0, len(data), chunk_size)]
    return PreparedBundle(bundle, data, meta["name"], int(meta["version"]), hashlib.sha256(data).hexdigest(), chunk_size, chunks)


def _private(key: str | Path | Ed25519PrivateKey) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    try:
        return load_private_key(key)
    except (OSError, ValueError) as exc:
        raise PublishError(f"signing key {key}: {exc}") from exc


def load_keylist(path: str | Path | None, key: str | Path | Ed25519PrivateKey | None = None) -> Signed | None:
    """The root-signed key list at ``path``; with ``path=None``, ``keylist.json`` beside a key file, if any."""
    if path is None:
        if not isinstance(key, (str, Path)):
            return None
        path = Path(key).parent / "keylist.json"
        if not path.exists():
            return None
    try:
        return Signed.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as exc:
        raise PublishError(f"key list {path}: {exc}") from exc


def sign_targets(
    key: str | Path | Ed25519PrivateKey,
    *,
    bundle: PreparedBundle | None = None,
    model: str | None = None,
    version: int | None = None,
    sha256: str | None = None,
    fleet: str = "default",
    expires_in: float = DEFAULT_EXPIRES_S,
    devices: Sequence[str] | None = None,
    hardware: Sequence[str] | None = None,
    attributes: dict[str, str] | None = None,
    downgrade: bool = False,
    rollout: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[Targets, Signed]:
    """Sign the delivery metadata for ``bundle`` (or, for a rollback to a version devices still hold,
    for ``model``/``version``/``sha256`` alone)."""
    now = now or utcnow()
    if bundle is not None:
        model, version, sha256 = bundle.model, bundle.version, bundle.sha256
    if model is None or version is None or sha256 is None:
        raise PublishError("sign_targets needs a bundle, or model, version and sha256")
    if expires_in <= 0:
        raise PublishError("--expires-in must be positive")
    t = Targets(
        model=model,
        version=version,
        sha256=sha256,
        bundle=bundle.ref() if bundle is not None else None,
        fleet=topics.validate_id(fleet, "fleet"),
        devices=list(devices) if devices is not None else None,
        hardware=list(hardware) if hardware else None,
        attributes=dict(attributes or {}),
        downgrade=downgrade,
        rollout=rollout,
        issued_at=now,
        expires_at=now + dt.timedelta(seconds=expires_in),
    )
    return t, sign_document(t.document(), _private(key))


def sign_candidate(
    key: str | Path | Ed25519PrivateKey,
    *,
    model: str,
    devices: Sequence[str],
    version: int | None = None,
    sha256: str | None = None,
    fleet: str = "default",
    mode: str = "shadow",
    share: float = 1.0,
    expires_in: float = 3600.0,
    now: dt.datetime | None = None,
) -> Signed:
    """A signed ``candidate`` order for ``devices`` (models.targets.CandidateOrder): send it as
    ``{"command": "candidate", "signed": <this>}`` on each device's ``set`` topic."""
    from models.targets import CandidateOrder

    now = now or utcnow()
    order = CandidateOrder(
        model=model, version=version, sha256=sha256, fleet=topics.validate_id(fleet, "fleet"), devices=list(devices),
        mode=mode, share=share, issued_at=now, expires_at=now + dt.timedelta(seconds=expires_in),  # type: ignore[arg-type]
    )  # fmt: skip
    return sign_document(order.document(), _private(key))


def announcement_for(
    bundle: str | Path,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    key: str | Path | Ed25519PrivateKey | None = None,
    keys: Signed | None = None,
    fleet: str = "default",
    expires_in: float = DEFAULT_EXPIRES_S,
    **targets: object,
) -> tuple[ModelAnnouncement, bytes]:
    """The announcement for ``bundle`` and the bundle's bytes; signed when ``key`` is given (devices
    refuse an unsigned one). ``targets`` go to :func:`sign_targets` (devices, hardware, downgrade…)."""
    b = read_bundle(bundle, chunk_size)
    if key is None:
        ann = ModelAnnouncement(
            model=b.model, version=b.version, bundle_id=b.bundle_id, sha256=b.sha256, size=b.size,
            chunk_size=chunk_size, chunk_sha256=b.chunk_sha256, filename=b.path.name,
        )  # fmt: skip
        return ann, b.data
    t, env = sign_targets(key, bundle=b, fleet=fleet, expires_in=expires_in, **targets)  # type: ignore[arg-type]
    return announcement_of(t, env, keys), b.data


class Publisher:
    """A connected cloud-side client: retained chunks, announcements, assignments, chunk requests.

    >>> # with Publisher("mqtt://127.0.0.1:1883").connect() as pub:
    >>> #     pub.put_chunks(read_bundle("m-v2.bundle.tar")); pub.announce(ann)
    """

    def __init__(self, broker: str, *, fleet: str = "default", window: int = 16, timeout: float = 120.0) -> None:
        self.url = BrokerURL.parse(broker)
        self.fleet = topics.validate_id(fleet, "fleet")
        self.window = window
        self.timeout = timeout
        self.client = new_client(f"edgeship-cloud-{uuid.uuid4().hex[:8]}", self.url)
        self._connected = threading.Event()
        self._refused: str | None = None
        self._retained: dict[str, bytes] = {}
        self._subacks: dict[int, threading.Event] = {}
        self._probes: dict[str, threading.Event] = {}  # probe topic → set when the probe came back (retained())
        self._early_acks: set[int] = set()
        self._started = False
        self._lock = threading.Lock()
        self._in_flight: deque[mqtt.MQTTMessageInfo] = deque()
        self._served: dict[str, PreparedBundle] = {}
        self._requests: queue.Queue[ChunkRequest | None] = queue.Queue(maxsize=1000)
        self._server: threading.Thread | None = None
        self._last_answer: dict[tuple[str, int], float] = {}
        self.answered_chunks = 0
        self.answered_bytes = 0
        self.handled_requests = 0
        #: Most chunks re-published for one request (bounds what one device can make the server send).
        self.max_answer = 1024
        #: What one device can make the server re-publish: each chunk at most once per interval for that
        #: device (it cannot be missing it again sooner), and at most one bundle's bytes per interval.
        self.device_interval_s = 600.0
        self._device_sent: dict[str, dict[tuple[str, int], float]] = {}
        self._device_bytes: dict[str, deque[tuple[float, int]]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self._connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_subscribe  # same signature: (client, userdata, mid, codes, properties)

    # -- connection -------------------------------------------------------------------------
    def connect(self, timeout: float = 15.0) -> Publisher:
        """Connect once (``with Publisher(...).connect() as pub`` does not connect twice: a second
        CONNECT with the same client id would make the broker drop the first session and its subscriptions)."""
        if self._started:
            return self
        try:
            connect_and_wait(self.client, self.url, self._connected, timeout=timeout, refused=lambda: self._refused)
        except ConnectionError as exc:
            raise PublishError(str(exc)) from exc
        self._started = True
        return self

    def close(self) -> None:
        if self._server is not None:
            self._requests.put(None)
            self._server.join(5)
            self._server = None
        try:
            self.flush()
        except PublishError as exc:
            logger.warning("closing with unacknowledged messages: %s", exc)
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False

    def __enter__(self) -> Publisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            logger.error("broker refused the connection: %s", reason)
            return
        if self._served:
            c.subscribe(topics.device_wildcard(self.fleet, "fetch"), qos=1)
        self._connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, _codes: object, _p: object) -> None:
        with self._lock:
            ev = self._subacks.get(mid)
            if ev is None:
                self._early_acks.add(mid)  # acked before retained() could file its mid
        if ev is not None:
            ev.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/fetch"):
            try:
                req = ChunkRequest.model_validate_json(msg.payload)
            except ValidationError:
                logger.warning("bad chunk request on %s", msg.topic)
                return
            if msg.topic != topics.fetch(self.fleet, req.device_id):
                logger.warning("chunk request from %s on another device's topic %s", req.device_id, msg.topic)
                return
            try:
                self._requests.put_nowait(req)
            except queue.Full:
                logger.warning("chunk request queue full; dropping a request from %s", req.device_id)
            return
        with self._lock:
            probe = self._probes.get(msg.topic)
            if probe is None and msg.retain:
                self._retained[msg.topic] = msg.payload
        if probe is not None:
            probe.set()

    def retained(self, topic: str, wait: float = 1.0) -> bytes | None:
        """The retained message on ``topic`` (None if there is none).

        Subscribes to ``topic`` and to this client's probe topic (:func:`models.topics.probe`), then
        publishes a probe: the broker delivers a subscription's retained messages before any message
        published after it, so once the probe is back the answer is complete. No probe back within
        ``max(wait, 10)`` seconds raises :class:`PublishError` (fail closed: a slow broker never reads as
        "nothing retained")."""
        probe = topics.probe(self.fleet, uuid.uuid4().hex[:16])
        subscribed, arrived = threading.Event(), threading.Event()
        with self._lock:
            self._probes[probe] = arrived
        # paho calls are made without our lock held: its network thread takes our lock in callbacks
        rc, mid = self.client.subscribe([(topic, 1), (probe, 1)])
        try:
            if rc != mqtt.MQTT_ERR_SUCCESS:
                raise PublishError(f"subscribe to {topic} failed: {mqtt.error_string(rc)}")
            with self._lock:
                self._subacks[mid] = subscribed
                if mid in self._early_acks:
                    self._early_acks.discard(mid)
                    subscribed.set()
            limit = max(wait, 10.0)
            if not subscribed.wait(limit):
                raise PublishError(f"the broker did not confirm the subscription to {topic} within {limit:.0f} s")
            info = self.client.publish(probe, b"", qos=1, retain=False)
            if info.rc != mqtt.MQTT_ERR_SUCCESS or not arrived.wait(limit):
                raise PublishError(
                    f"the broker did not complete the read of {topic} within {limit:.0f} s; nothing was sent "
                    "(a slow broker, or an identity the ACL does not allow to use the cloud's topics)"
                )
        finally:
            with self._lock:
                self._subacks.pop(mid, None)
                self._probes.pop(probe, None)
            self.client.unsubscribe([topic, probe])
        with self._lock:
            return self._retained.pop(topic, None) or None

    # -- sending ----------------------------------------------------------------------------
    def send(self, topic: str, payload: bytes | str, *, retain: bool = True) -> None:
        """Publish QoS 1, keeping at most ``window`` messages unacknowledged."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self._in_flight.append(info)
        deadline = time.monotonic() + self.timeout
        while len(self._in_flight) >= self.window:
            _wait(self._in_flight.popleft(), deadline)

    def flush(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self._in_flight:
            _wait(self._in_flight.popleft(), deadline)

    def put_chunks(self, b: PreparedBundle, indexes: Iterable[int] | None = None, *, progress: bool = False) -> None:
        """Publish ``b``'s chunks retained (all, or ``indexes``), paced, and wait for the broker's acks."""
        order = list(range(len(b.chunk_sha256))) if indexes is None else list(indexes)
        for i in tqdm(order, desc="publish", unit="chunk", disable=not progress):
            self.send(topics.bundle_chunk(self.fleet, b.bundle_id, i), b.chunk(i))
        self.flush()

    def clear_chunks(self, bundle_id: str, count: int) -> None:
        for i in range(count):
            self.send(topics.bundle_chunk(self.fleet, bundle_id, i), b"")
        self.flush()

    def retain_versions(self, b: PreparedBundle, keep: int = DEFAULT_KEEP_RETAINED) -> list[str]:
        """Record that ``b``'s chunks are retained and clear the chunks of all but the newest ``keep``
        versions of its model (rollback and late joiners need those), so the broker's memory and
        persistence stay bounded. The index is itself retained on ``models/<model>/retained``.
        Returns the bundle ids cleared."""
        if keep < 1:
            raise PublishError("keep must be at least 1")
        topic = topics.model_retained(self.fleet, b.model)
        entries: list[dict] = []
        raw = self.retained(topic, wait=1.0)
        if raw:
            try:
                entries = [e for e in json.loads(raw) if isinstance(e, dict) and {"version", "bundle_id", "chunks"} <= e.keys()]
            except (ValueError, TypeError):
                logger.warning("ignoring a malformed retained index on %s", topic)
        entries = [e for e in entries if e["bundle_id"] != b.bundle_id]
        entries.append({"version": b.version, "bundle_id": b.bundle_id, "chunks": len(b.chunk_sha256)})
        entries.sort(key=lambda e: int(e["version"]))
        old, kept = entries[:-keep], entries[-keep:]
        for e in old:
            self.clear_chunks(str(e["bundle_id"]), int(e["chunks"]))
            logger.info("cleared the retained chunks of %s v%s (%s)", b.model, e["version"], e["bundle_id"])
        self.send(topic, json.dumps(kept))
        self.flush()
        return [str(e["bundle_id"]) for e in old]
    def announced(self, model: str) -> ModelAnnouncement | None:
        """The fleet's retained announcement for ``model`` (None when there is none or it is malformed)."""
        topic = topics.model_announce(self.fleet, model)
        raw = self.retained(topic, wait=1.0)
        if not raw:
            return None
        try:
            return ModelAnnouncement.model_validate_json(raw)
        except ValidationError:
            logger.warning("ignoring a malformed retained announcement on %s", topic)
            return None

    def announce(self, ann: ModelAnnouncement) -> None:
        """The fleet's retained announcement for ``ann.model``."""
        self.send(topics.model_announce(self.fleet, ann.model), ann.model_dump_json())
        self.flush()

    def assign(self, device: str, ann: ModelAnnouncement | None, *, rollout: str | None = None) -> None:
        """A retained per-device command (``None`` clears it)."""
        payload = b"" if ann is None else DeviceCommand(command="assign", announcement=ann, rollout=rollout).model_dump_json()
        self.send(topics.command(self.fleet, device), payload)

    def publish_keylist(self, keylist: Signed) -> None:
        self.send(topics.keylist(self.fleet), keylist.model_dump_json())
        self.flush()

    # -- serving chunk requests -------------------------------------------------------------
    def serve(self, b: PreparedBundle) -> None:
        """Answer devices' chunk requests for ``b`` (re-publish the chunks retained) until :meth:`close`."""
        first = not self._served
        self._served[b.bundle_id] = b
        if first:
            self.client.subscribe(topics.device_wildcard(self.fleet, "fetch"), qos=1)
            self._server = threading.Thread(target=self._serve_requests, name="edgeship-bundle-server", daemon=True)
            self._server.start()

    def _device_budget(self, device: str, b: PreparedBundle, wanted: list[int], now: float) -> list[int]:
        """The part of ``wanted`` this device may still make the server send (see ``device_interval_s``)."""
        horizon = now - self.device_interval_s
        sent = self._device_sent.setdefault(device, {})
        for key in [k for k, t in sent.items() if t < horizon]:
            del sent[key]
        spent = self._device_bytes.setdefault(device, deque())
        while spent and spent[0][0] < horizon:
            spent.popleft()
        used = sum(n for _, n in spent)
        out = []
        for i in wanted:
            size = len(b.chunk(i))
            if (b.bundle_id, i) in sent or used + size > b.size:
                continue
            sent[(b.bundle_id, i)] = now
            spent.append((now, size))
            used += size
            out.append(i)
        if len(out) < len(wanted):
            logger.warning("%s asked for %d chunks of %s; %d within its budget", device, len(wanted), b.bundle_id, len(out))
        return out

    def _serve_requests(self) -> None:
        while True:
            req = self._requests.get()
            if req is None:
                return
            b = self._served.get(req.bundle_id)
            if b is None:
                self.handled_requests += 1
                continue
            if req.chunk_size is not None and req.chunk_size != b.chunk_size:
                # the device follows the chunking its signed announcement declares, whoever published it
                b = self._served[req.bundle_id] = b.rechunked(req.chunk_size)
            n = len(b.chunk_sha256)
            now = time.monotonic()
            wanted = sorted({i for start, end in req.ranges for i in range(max(0, start), min(end, n))})[: self.max_answer]
            wanted = self._device_budget(req.device_id, b, wanted, now)
            # each chunk at most once a second: several devices waiting for it share the re-publish
            fresh = [i for i in wanted if now - self._last_answer.get((b.bundle_id, i), 0.0) > 1.0]
            try:
                for i in fresh:
                    self._last_answer[(b.bundle_id, i)] = now
                    self.send(topics.bundle_chunk(self.fleet, b.bundle_id, i), b.chunk(i))
                self.flush()
            except PublishError as exc:
                logger.warning("answering a chunk request failed: %s", exc)
                self.handled_requests += 1
                continue
            self.answered_chunks += len(fresh)
            self.answered_bytes += sum(len(b.chunk(i)) for i in fresh)
            self.handled_requests += 1
            logger.info("re-published %d chunks of %s for %s", len(fresh), b.bundle_id, req.device_id)


def _wait(info: mqtt.MQTTMessageInfo, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise PublishError("timed out waiting for the broker to acknowledge")
    info.wait_for_publish(timeout=remaining)
    if not info.is_published():
        raise PublishError("timed out waiting for the broker to acknowledge")


def publish(
    bundle: str | Path,
    broker: str,
    *,
    key: str | Path | Ed25519PrivateKey,
    fleet: str = "default",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    window: int = 16,
    timeout: float = 120.0,
    progress: bool = True,
    expires_in: float = DEFAULT_EXPIRES_S,
    hardware: Sequence[str] | None = None,
    attributes: dict[str, str] | None = None,
    keylist: str | Path | Signed | None = None,
    downgrade: bool = False,
    keep_retained: int | None = None,
    rollback: bool = False,
) -> ModelAnnouncement:
    """Publish ``bundle`` to every device of ``fleet``: retained chunks, then the signed announcement
    (with the key list: ``keylist``, or ``keylist.json`` beside ``key``); clears the chunks of versions
    older than the newest ``keep_retained`` (default 3). Returns the announcement sent.

    Refuses (:class:`NotNewerError`, nothing sent) when the fleet's retained announcement is already
    at or above the bundle's version, or the same version with another digest, unless ``rollback``
    (which also signs the targets as a downgrade, so devices accept the older version)."""
    keep_retained = keep_retained or DEFAULT_KEEP_RETAINED
    b = read_bundle(bundle, chunk_size)
    downgrade = downgrade or rollback
    keys = keylist if isinstance(keylist, Signed) else load_keylist(keylist, key)
    t, env = sign_targets(
        key, bundle=b, fleet=fleet, expires_in=expires_in, hardware=hardware, attributes=attributes, downgrade=downgrade
    )
    ann = announcement_of(t, env, keys)
    with Publisher(broker, fleet=fleet, window=window, timeout=timeout).connect() as pub:
        previous = pub.announced(b.model)
        check_newer(previous, b, rollback=rollback)
        pub.put_chunks(b, progress=progress)
        if keys is not None:
            pub.publish_keylist(keys)
        pub.announce(ann)
        pub.retain_versions(b, keep_retained)  # chunks of the newest keep_retained versions stay on the broker
    logger.info("published %s v%d (%d bytes, %d chunks) to %s", b.model, b.version, b.size, len(b.chunk_sha256), broker)
    return ann


def _announced_chunk_size(pub: Publisher, fleet: str, b: PreparedBundle) -> int | None:
    """The chunk size of the retained announcement of ``b``'s model, if it announces ``b``."""
    raw = pub.retained(topics.model_announce(fleet, b.model), wait=1.0)
    try:
        ann = ModelAnnouncement.model_validate_json(raw) if raw else None
    except ValidationError:
        return None
    return ann.chunk_size if ann is not None and ann.sha256 == b.sha256 else None


def serve_bundles(
    bundles: Sequence[str | Path],
    broker: str,
    *,
    fleet: str = "default",
    chunk_size: int | None = None,
    stop: threading.Event | None = None,
    republish: bool = True,
) -> None:
    """``edgeship serve-bundles``: keep ``bundles``' chunks retained and answer chunk requests until ``stop``.

    ``chunk_size`` None: each bundle is cut as the retained announcement of its model declares (when
    that announcement is for this bundle) and its chunks are published retained in that chunking; a
    bundle nothing announces yet is only served on request (its chunk topics are left alone: a
    publisher may be putting them there in its own chunking right now, and retained chunks of another
    size would make every device abort the transfer). A device's chunk request names the chunking of
    its signed announcement anyway, and is answered in it."""
    stop = stop or threading.Event()
    prepared = [read_bundle(p, chunk_size or DEFAULT_CHUNK_SIZE) for p in bundles]
    with Publisher(broker, fleet=fleet).connect() as pub:
        for i, b in enumerate(prepared):
            announced = True
            if chunk_size is None:
                declared = _announced_chunk_size(pub, fleet, b)
                announced = declared is not None
                b = prepared[i] = b.rechunked(declared or b.chunk_size)
            if republish and announced:
                pub.put_chunks(b)
            elif republish:
                logger.info("%s v%d is not announced yet: its chunks are sent on request only", b.model, b.version)
            pub.serve(b)
            logger.info("serving %s v%d (%s, %d chunks)", b.model, b.version, b.bundle_id, len(b.chunk_sha256))
        while not stop.wait(0.5):
            pass

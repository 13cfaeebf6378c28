"""The device side of delivery: signed targets, trust updates, and a resumable, flow-controlled pull.

What arrives (topics from :mod:`models.topics`)::

    <fleet>/models/<model>/announce   retained ModelAnnouncement + signed targets + key list (everyone)
    <fleet>/<device>/set              retained DeviceCommand "assign" (a rollout wave or a rollback)
    <fleet>/trust/keylist             retained root-signed key list
    <fleet>/bundles/<id>/chunk/<i>    retained chunk bytes, pulled one window at a time

Nothing is acted on before the targets document verifies with a trusted, unrevoked signing key
(:mod:`models.targets`): an unsigned, badly signed or expired document, one for another fleet,
device or hardware, an older version without a signed rollback command, or one issued before the
newest this device acted on (a replay) is refused and reported (``refused`` event with a reason).

**The pull.** The device, not the sender, paces a transfer: it subscribes to at most
``transfer_window`` chunk topics at a time (the broker answers each with the retained chunk),
unsubscribes each chunk as it lands, then asks for the next missing one, optionally under a
``transfer_max_bps`` budget. So a Pi is never flooded, no broker queue overflows
(``max_queued_messages``), a device that joins late or was offline gets exactly what it lacks, and
with nothing lost each chunk crosses the wire once (bytes per device ≈ the bundle's size). Progress
is on disk (:class:`edge.delivery.transfer.Transfer`: part file + bitmap, re-verified on reopening), so after
a reconnect, a broker restart or ``kill -9`` only the missing chunks are fetched.

**Slow retrieval.** With no new chunk for ``chunk_timeout_s`` the device re-subscribes its window
and publishes a :class:`models.messages.ChunkRequest` on ``<device>/fetch`` (a bundle server —
``edgeship serve-bundles`` or the rollout controller — re-publishes those chunks if the broker lost
them); after ``transfer_retries`` tries the transfer is abandoned (part file kept, ``failed`` /
``stalled``) and resumed after a back-off. **Endless data**: a chunk longer than declared, or more
than twice the declared size offered in one session, aborts the transfer (``endless_data``).
A transfer with no new chunk for ``chunk_timeout_s`` says so at once (``transfer_stalled`` event
with what it has and what it waits for), not only when it gives up.

**Clock sanity** (a Pi has no real-time clock: until NTP answers it may believe it is 1970 or the
time of its last shutdown): time is never taken as earlier than the newest signed ``issued_at`` this
device verified and acted on (persisted in ``<state>/delivery.json``), so an expired document does
not become valid again on a clock that went backwards; a clock behind that floor is reported once
(``clock_wrong`` event with both times, :attr:`Delivery.clock_ok` for ``/healthz``).

**Disk faults** (a Pi's SD card fills up or goes read-only): before a download the free space of
the state folder's disk is checked against the bundle, room to unpack it and
``disk_reserve_bytes``; when short, stale downloads of other bundles and versions beyond
``keep_versions`` are pruned first. An ``ENOSPC``/``EROFS``/``EIO`` (or too little space) is a
transient fault (``failed`` with reason ``disk_full`` / ``disk_readonly`` / ``disk_io``, from
:data:`models.messages.TRANSIENT_REASONS`), reported once per fault, never remembered against the
bundle; the transfer (or the install of a complete download) is retried with a doubling back-off
(``disk_retry_min_s`` … ``disk_retry_max_s``) and on every announcement, and resumes from what is
on disk, without a restart.

The paho network thread only parses, hashes one chunk and writes it; installs and timers run on
this module's own worker thread.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edge.config import AgentConfig
from models.fsutil import atomic_write_bytes
from edge.monitoring.metrics import AgentMetrics
from edge.delivery.transfer import ChunkError, Transfer
from edge.delivery.trust import TrustStore
from edge.store.policy import update_verdict
from models import topics
from models.envelope import Signed
from models.keys import KeyListError
from models.messages import (
    DISK_REASONS,
    ActiveModel,
    ChunkRequest,
    DeviceCommand,
    ModelAnnouncement,
    disk_reason,
)
from models.signing import key_id
from models.targets import MAX_CLOCK_SKEW, Targets, TargetsError, announcement_of, applicability, verify_targets

__all__ = ["Delivery", "DeliveryHost", "DeliveryLink", "ranges", "disk_room"]

logger = logging.getLogger(__name__)

_TICK_S = 0.1
#: Aborted tries of one version may be offered at most this many times its size, all tries together.
RETRY_BYTES_FACTOR = 8
RETRY_BYTES_FLOOR = 64 * 2**20  # … or 64 MiB for small bundles
#: A wall clock before this is not trusted to judge stored replay marks (no RTC yet).
_PLAUSIBLE_AFTER = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
#: A stored mark further than this past a plausible clock is not a clock lagging behind (Delivery.now
#: covers that) but a future-dated document (a leaked key, a signer's wrong clock): dropped at start.
_MAX_MARK_AHEAD = dt.timedelta(days=30)


def disk_room(folder: str | Path) -> tuple[int, bool]:
    """``(bytes free to an unprivileged writer, mounted read-only)`` for the disk holding ``folder``."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize, bool(st.f_flag & os.ST_RDONLY)


def ranges(indexes: list[int]) -> list[tuple[int, int]]:
    """Sorted indexes as half-open ranges: ``[1, 2, 3, 7]`` → ``[(1, 4), (7, 8)]``."""
    out: list[tuple[int, int]] = []
    for i in sorted(indexes):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


class DeliveryHost(Protocol):
    """What the delivery worker needs from the device it updates (:class:`edge.agent.Agent` is one).

    Every method is called from the delivery worker's thread."""

    def active_model(self) -> ActiveModel | None:
        """The model served now (None: none yet)."""

    def should_fetch(self, announcement: ModelAnnouncement) -> str | None:
        """None if the announced bundle should be downloaded, else why not (a reason code first)."""

    def on_transfer_complete(self, transfer: Transfer) -> None:
        """A bundle is complete and hash-checked on disk: verify, gate, install, activate."""

    def report(self, outcome: str, version: int, reason: str | None = None, **detail: Any) -> None:
        """An update step (``models.messages.UpdateOutcome``) for events, state and metrics."""

    def activate_installed(self, version: int, sha256: str) -> bool:
        """Serve an already installed version again (a signed rollback); False if it is not installed."""

    def recheck_trust(self) -> None:
        """The trusted keys changed: re-verify what is served and what would be fallen back to."""


class DeliveryLink(Protocol):
    """The MQTT side the worker reports through (:class:`edge.delivery.link.MqttLink`)."""

    @property
    def connected(self) -> bool: ...  # noqa: D102

    def publish_event(self, kind: str, **detail: Any) -> None: ...  # noqa: D102

    def publish_state(self) -> None: ...  # noqa: D102


class Delivery:
    """One device's delivery client. Created by :class:`edge.delivery.link.MqttLink`, which forwards connects."""

    def __init__(
        self,
        config: AgentConfig,
        client: mqtt.Client,
        *,
        trust: TrustStore,
        downloads_dir: str | Path,
        metrics: AgentMetrics,
        host: DeliveryHost,
        link: DeliveryLink,
    ) -> None:
        self.config = config
        self.client = client
        self.trust = trust
        self.downloads_dir = Path(downloads_dir)
        self.metrics = metrics
        self.host = host  # the device being updated (edge.agent.Agent)
        self.link = link  # the MQTT side it reports through (edge.delivery.link.MqttLink)
        self._stale_reported = False
        self._spent: dict[str, int] = {}  # bundle sha256 -> chunk bytes offered over all aborted tries
        self._aborts: dict[str, int] = {}
        fleet, device = config.fleet, config.device_id
        self.announce_filter = topics.model_announce(fleet, config.model)
        self.command_topic = topics.command(fleet, device)
        self.keylist_topic = topics.keylist(fleet)
        self.chunk_filter = topics.bundle_chunks(fleet, None)  # the callback; subscriptions are per chunk
        self.fetch_topic = topics.fetch(fleet, device)
        self._lock = threading.RLock()
        self._transfer: Transfer | None = None
        self._pending: tuple[Targets, ModelAnnouncement] | None = None
        self._missing: collections.deque[int] = collections.deque()
        self._outstanding: dict[int, float] = {}
        self._arrived: list[str] = []
        self._last_progress = time.monotonic()
        self._retries = 0
        self._rearm_at: float | None = None
        self._tokens = 0.0
        self._tokens_at = time.monotonic()
        self._handed_off: set[str] = set()
        # refusals already reported: bounded (keys can hold unsigned fields an attacker varies at will)
        self._reported: collections.OrderedDict[tuple[str, str, str], None] = collections.OrderedDict()
        self._seen: dict[tuple[str, str], ModelAnnouncement] = {}
        self._jobs: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._state_path = Path(config.state_dir) / "delivery.json"
        #: per model: (issued_at, version, signing key id) of the newest target acted on (the replay check)
        self._issued: dict[str, tuple[dt.datetime, int, str]] = self._load_issued()
        #: The disk fault that stopped the pending transfer or install (a reason code), its back-off and start.
        self.disk_fault: str | None = None
        self._disk_backoff = config.disk_retry_min_s
        self._disk_fault_at: float | None = None
        self._stall_reported = False
        self.clock_ok = True
        #: Called with the bytes still needed when the disk is short of space before a download: the
        #: agent prunes versions beyond keep_versions (set by edge.agent; stale downloads are pruned here).
        self.make_room: Callable[[int], None] | None = None
        #: Counters for tests and benchmarks: chunk payload bytes and metadata bytes received, etc.
        self.stats: collections.Counter[str] = collections.Counter()
        self.downloaded_at: float | None = None  # time.monotonic() of the last complete transfer
        client.message_callback_add(self.announce_filter, self._on_announcement)
        client.message_callback_add(self.keylist_topic, self._on_keylist)
        client.message_callback_add(self.chunk_filter, self._on_chunk)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="edgeship-delivery", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._jobs.put(None)
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)
        with self._lock:
            if self._transfer is not None:
                self._transfer.close()  # the part file stays for a resume
                self._transfer = None

    def on_connect(self, client: mqtt.Client) -> None:
        """(Re)subscribe after every connect: the broker re-sends what is retained."""
        subs = [(self.announce_filter, 1), (self.command_topic, 1), (self.keylist_topic, 1)]
        with self._lock:
            self._last_progress = time.monotonic()
            t = self._transfer
            if t is not None:
                subs += [(topics.bundle_chunk(self.config.fleet, t.bundle_id, i), 1) for i in self._outstanding]
        client.subscribe(subs)

    # -- what the device reports ------------------------------------------------------------
    def info(self) -> dict[str, Any] | None:
        """Transfer progress or the last target, for the retained DeviceState."""
        with self._lock:
            t = self._transfer
            if t is not None:
                tg = t.targets
                return {
                    "state": "downloading",
                    "version": t.announcement.version,
                    "bundle_id": t.bundle_id,
                    "have": t.received,
                    "total": t.chunks,
                    "rollout": getattr(tg, "rollout", None),
                }
            if self._pending is not None:
                tg, ann = self._pending
                waiting = {"state": "waiting", "version": tg.version, "bundle_id": ann.bundle_id, "rollout": tg.rollout}
                return waiting | ({"disk": self.disk_fault} if self.disk_fault else {})
        return None

    # -- paho callbacks (network thread) ----------------------------------------------------
    def _on_announcement(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:  # a retained announcement being cleared
            return
        self.stats["meta_bytes"] += len(msg.payload)
        try:
            ann = ModelAnnouncement.model_validate_json(msg.payload)
            if msg.topic != topics.model_announce(self.config.fleet, ann.model):
                raise ValueError(f"announcement for model {ann.model!r} on topic {msg.topic}")
        except (ValidationError, ValueError) as exc:
            self.metrics.bad_messages.inc()
            logger.warning("bad announcement on %s: %s", msg.topic, str(exc).splitlines()[0])
            return
        self._consider(ann, "fleet")

    def on_assign(self, body: dict[str, Any] | bytes) -> None:
        """An ``assign`` command from ``<device>/set`` (dispatched by ``edge.serving.mqtt``'s command registry)."""
        try:
            if isinstance(body, (bytes, str)):
                self.stats["meta_bytes"] += len(body)
                cmd = DeviceCommand.model_validate_json(body)
            else:
                cmd = DeviceCommand.model_validate(body)
        except ValidationError as exc:
            self.metrics.bad_messages.inc()
            logger.warning("bad assign command: %s", str(exc).splitlines()[0])
            return
        if cmd.command == "assign" and cmd.announcement is not None:
            self._consider(cmd.announcement, "assignment")

    def _on_keylist(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        self.stats["meta_bytes"] += len(msg.payload)
        try:
            env = Signed.model_validate_json(msg.payload)
        except ValidationError:
            self.metrics.bad_messages.inc()
            logger.warning("bad key list on %s", msg.topic)
            return
        self._take_keylist(env)

    def _on_chunk(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload
        if not payload:  # a retained chunk being cleared
            return
        try:
            _fleet, bundle_id, index = topics.parse_chunk_topic(msg.topic)
        except ValueError:
            self.metrics.bad_messages.inc()
            return
        done: Transfer | None = None
        with self._lock:
            t = self._transfer
            if t is None or t.bundle_id != bundle_id:
                return
            self.stats["chunk_bytes"] += len(payload)
            budget = 2 * t.announcement.size + 4 * self.config.transfer_window * t.announcement.chunk_size
            try:
                stored = t.add_chunk(index, payload)
            except OSError as exc:  # the disk failed under a running transfer: keep what is verified, retry
                self._end_transfer()
                with contextlib.suppress(OSError):
                    t.close()
                self._disk_failed(t.announcement, disk_reason(exc) or "disk_io", f"writing chunk {index}: {exc}")
                return
            except ChunkError as exc:
                self.metrics.bad_chunks.inc()
                if exc.reason == "too_large":
                    self._abort("endless_data", str(exc))
                elif t.bytes_offered > budget:  # bad chunks count too: an endless stream of junk ends here
                    self._abort("endless_data", f"{t.bytes_offered} bytes offered for a {t.announcement.size}-byte bundle")
                else:
                    logger.warning("rejected chunk: %s", exc, extra={"bundle_id": bundle_id, "reason": exc.reason})
                return
            if t.bytes_offered > budget:
                self._abort("endless_data", f"{t.bytes_offered} bytes offered for a {t.announcement.size}-byte bundle")
                return
            if self._outstanding.pop(index, None) is not None:
                self._arrived.append(topics.bundle_chunk(self.config.fleet, bundle_id, index))  # unsubscribed in a batch
            if stored:
                self.stats["chunks"] += 1
                self.metrics.bundle_bytes_received.inc(len(payload))
                self._last_progress = time.monotonic()
                self._retries, self._stall_reported = 0, False
                self._aborts.pop(t.announcement.sha256, None)  # progress: the back-off starts over
            if t.complete:
                done = self._end_transfer()
            else:
                self._pump()
        if done is not None:
            self._hand_off(done)

    # -- trust ------------------------------------------------------------------------------
    def _take_keylist(self, env: Signed) -> None:
        if not self.trust.roots:
            return  # a device with pinned keys only ignores key lists
        try:
            changed = self.trust.update(env)
        except KeyListError as exc:
            key = ("keylist", exc.reason, json.dumps(env.signed.get("version"), default=str)[:64])
            self.metrics.refused_documents.labels(exc.reason).inc()
            if self._first_report(key):
                logger.warning("key list refused: %s", exc, extra={"reason": exc.reason})
                self.link.publish_event("keylist_refused", reason=exc.reason, message=str(exc))
            return
        if changed:
            self.forget_revoked()
            self.link.publish_event("keylist", version=self.trust.keylist_version, keys=self.trust.info()["keys"])
            self._jobs.put(("trust", None))  # re-verify what is served (edge.agent: revocation policy)
            self.link.publish_state()
            for (source, _model), ann in list(self._seen.items()):  # what failed for want of a key may verify now
                self._consider(ann, source, from_keylist=True)

    # -- deciding ---------------------------------------------------------------------------
    def _hardware(self) -> set[str]:
        return {platform.machine(), self.config.attributes.get("hardware", "")} - {""}

    def _refuse(self, version: int, sha256: str, reason: str, message: str, stamp: str) -> None:
        """Report a refusal once per (bundle, reason, document)."""
        self.metrics.refused_documents.labels(reason).inc()
        if not self._first_report((sha256, reason, stamp)):
            return
        self.host.report("refused", version, reason, message=message, sha256=sha256)

    def _first_report(self, key: tuple[str, str, str], limit: int = 512) -> bool:
        """True the first time ``key`` is seen (the memory is bounded: oldest forgotten first)."""
        if key in self._reported:
            return False
        self._reported[key] = None
        while len(self._reported) > limit:
            self._reported.popitem(last=False)
        return True

    def _consider(self, ann: ModelAnnouncement, source: str, *, from_keylist: bool = False) -> None:
        if ann.keys is not None and not from_keylist:
            self._take_keylist(ann.keys)
        self._seen[(source, ann.model)] = ann
        stamp = ann.published_at.isoformat()
        try:
            now = self.now()
            # documents dated past this clock (+ skew) are refused; while the clock is known to be behind
            # signed time (no RTC yet) it cannot judge that, and the floor alone is used
            skew = MAX_CLOCK_SKEW if self.clock_ok else dt.timedelta(days=36500)
            t = verify_targets(ann.targets, self.trust.keys, now=now, max_skew=skew)
        except TargetsError as exc:
            self._refuse(ann.version, ann.sha256, exc.reason, str(exc), stamp)
            return
        stamp = t.issued_at.isoformat()
        c = self.config
        problem = applicability(
            t, fleet=c.fleet, device_id=c.device_id, hardware=self._hardware(), attributes=c.attributes
        )
        if problem is not None:
            reason, message = problem
            if reason == "not_selected":
                logger.info("not selected: %s", message)
            else:
                self._refuse(t.version, t.sha256, reason, message, stamp)
            return
        if c.model is not None and t.model != c.model:
            return
        if self.trust.stale():
            self._refuse(t.version, t.sha256, "keylist_expired",
                         f"the key list v{self.trust.keylist_version} has expired: no update until a current one arrives",
                         stamp)  # fmt: skip
            return
        with self._lock:
            newest = self._issued.get(t.model)
            # Replay check. Ordering rests on the signed version (a monotonic counter per model) first:
            # a newer version is never ignored for its date; issued_at orders only targets for the same
            # or an older version (a replayed rollback command), and a future-dated one never got here.
            if newest is not None and t.issued_at < newest[0] and (t.downgrade or t.version <= newest[1]):
                logger.info(
                    "ignoring %s v%d issued %s: a newer target (issued %s) was acted on",
                    t.model, t.version, t.issued_at.isoformat(), newest[0].isoformat(),
                )  # fmt: skip
                return
            ann_eff = announcement_of(t, ann.targets, ann.keys) if t.bundle is not None else None  # type: ignore[arg-type]
            verdict = update_verdict(self.host.active_model(), t.model, t.version, t.sha256, downgrade=t.downgrade)
            if verdict is not None and verdict.reason == "already_active":
                self._set_issued(t, self._signer(t, ann))
                self._cancel_other(t.sha256)
                return
            if verdict is not None:
                self._refuse(t.version, t.sha256, verdict.reason, verdict.message, stamp)
                return
            if not t.downgrade and ann_eff is not None:
                skip = self.host.should_fetch(ann_eff)
                if skip is not None:
                    # e.g. refused before, or rolled back from (edge.store.versions: never installed again)
                    logger.info("not fetching %s v%d: %s", t.model, t.version, skip)
                    if source == "assignment":  # tell the rollout controller instead of letting it time out
                        self._refuse(t.version, t.sha256, skip.split(" ")[0], f"not fetched: {skip}", stamp)
                    return
            if ann_eff is None and not t.downgrade:
                self._refuse(t.version, t.sha256, "malformed", "targets without transfer data", stamp)
                return
            self._set_issued(t, self._signer(t, ann))
            if t.downgrade:
                self._cancel_other(t.sha256)
                self._jobs.put(("rollback", (t, ann_eff)))
            else:
                self._begin(t, ann_eff)  # type: ignore[arg-type]

    def now(self) -> dt.datetime:
        """The time documents are checked against: the wall clock, but never earlier than the newest
        signed ``issued_at`` acted on here (a board without an RTC may boot in the past)."""
        wall = dt.datetime.now(dt.timezone.utc)
        floor = max((v[0] for v in self._issued.values()), default=None)
        if floor is None or wall >= floor:
            self.clock_ok = True
            return wall
        if self.clock_ok:
            self.clock_ok = False
            behind = (floor - wall).total_seconds()
            logger.error(
                "the clock says %s, %.0f s before a signed document this device already acted on (%s): "
                "it is wrong (no RTC, NTP not synced yet?); checking expiry against %s",
                wall.isoformat(), behind, floor.isoformat(), floor.isoformat(),
            )  # fmt: skip
            self.link.publish_event("clock_wrong", wall=wall.isoformat(), floor=floor.isoformat(), behind_s=round(behind, 3))
        return floor

    def superseded(self, targets: object | None) -> bool:
        """True when a newer signed target for the same model was acted on after ``targets`` (the
        :class:`models.targets.Targets` a transfer serves): e.g. a rollback command that arrived while
        that transfer was being installed. The agent then does not activate it."""
        if not isinstance(targets, Targets):
            return False
        with self._lock:
            newest = self._issued.get(targets.model)
        # a later mark set for another version (the mark of an upgrade may keep an earlier, higher time)
        return newest is not None and targets.issued_at < newest[0] and newest[1] != targets.version

    def _signer(self, t: Targets, ann: ModelAnnouncement) -> str:
        trusted = {key_id(k) for k in self.trust.keys}
        sigs = ann.targets.signatures if ann.targets is not None else []
        return next((s.keyid for s in sigs if s.keyid in trusted), "")

    def _set_issued(self, t: Targets, signer: str = "") -> None:
        held = self._issued.get(t.model)
        if held is not None and held[0] >= t.issued_at and held[1] >= t.version:
            return
        self._issued[t.model] = (max(t.issued_at, held[0]) if held and not t.downgrade else t.issued_at, t.version, signer)
        self._save_issued()

    def _save_issued(self) -> None:
        payload = {"issued": {m: [v[0].isoformat(), v[1], v[2]] for m, v in self._issued.items()}}
        try:
            atomic_write_bytes(self._state_path, json.dumps(payload).encode())
        except OSError as exc:
            logger.warning("cannot persist delivery state: %s", exc)

    def forget_revoked(self) -> None:
        """Revoking a key clears what it set: replay marks set by a now-revoked (or no longer trusted) key go."""
        trusted = {key_id(k) for k in self.trust.keys}
        with self._lock:
            gone = [m for m, v in self._issued.items() if v[2] and v[2] not in trusted]
            for m in gone:
                logger.warning("forgetting the replay mark for %s: its signing key %s is no longer trusted", m, self._issued[m][2])
                del self._issued[m]
            if gone:
                self._save_issued()

    def _load_issued(self) -> dict[str, tuple[dt.datetime, int, str]]:
        try:
            data = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("delivery state unreadable, starting afresh: %s", exc)
            return {}
        wall = dt.datetime.now(dt.timezone.utc)
        # marks beyond the clock were set by a wrong-clocked or leaked signer (or before future dates were
        # refused): dropped, unless this clock itself is implausible (a board without an RTC booting in
        # 1970), when the marks are the better clock (Delivery.now)
        limit = wall + _MAX_MARK_AHEAD if wall >= _PLAUSIBLE_AFTER else dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        out: dict[str, tuple[dt.datetime, int, str]] = {}
        for m, v in (data.get("issued", {}) if isinstance(data, dict) else {}).items():
            try:
                at, version, signer = (v, 0, "") if isinstance(v, str) else (v[0], int(v[1]), str(v[2]))
                when = dt.datetime.fromisoformat(at)
                if when.tzinfo is None:
                    raise ValueError("no time zone")
            except (ValueError, TypeError, IndexError) as exc:
                logger.warning("delivery state: dropping the entry for %s (%s)", m, exc)
                continue
            if when > limit:  # written by a signer with a wrong clock (or before future dates were refused)
                logger.warning("delivery state: dropping %s's replay mark dated %s, in the future", m, at)
                continue
            out[m] = (when, version, signer)
        return out

    def _cancel_other(self, sha256: str) -> None:
        with self._lock:
            t = self._transfer
            if t is not None and t.announcement.sha256 != sha256:
                logger.info("a newer target supersedes the transfer of v%d", t.announcement.version)
                self._end_transfer()
                t.discard()
            if self._pending is not None and self._pending[0].sha256 != sha256:
                self._pending = None

    # -- transfers (under self._lock) -------------------------------------------------------
    def _begin(self, targets: Targets, ann: ModelAnnouncement) -> None:
        with self._lock:
            current = self._transfer
            if current is not None and current.announcement.sha256 == ann.sha256:
                return
            if ann.sha256 in self._handed_off:
                return
            if current is not None:
                logger.info("v%d replaces the transfer of v%d", ann.version, current.announcement.version)
                self._end_transfer()
                current.discard()
            self._pending, self._rearm_at = (targets, ann), None
            try:
                self._check_room(ann)
                t = Transfer(ann, self.downloads_dir)
            except _NoRoom as exc:
                self._disk_failed(ann, exc.reason, str(exc))
                return
            except ValueError as exc:
                logger.error("cannot receive %s v%d: %s", ann.model, ann.version, exc)
                self.host.report("failed", ann.version, "malformed", message=str(exc))
                return
            except OSError as exc:
                self._disk_failed(ann, disk_reason(exc) or "disk_io", f"cannot receive {ann.model} v{ann.version}: {exc}")
                return
            self._disk_recovered()
            t.downgrade, t.targets = targets.downgrade, targets
            logger.info(
                "receiving bundle",
                extra={"model": ann.model, "version": ann.version, "bundle_id": ann.bundle_id, "chunks": t.chunks,
                       "have": t.received},
            )  # fmt: skip
            self.link.publish_event(
                "downloading", model=ann.model, version=ann.version, sha256=ann.sha256, size=ann.size,
                chunks=t.chunks, have=t.received, rollout=targets.rollout,
            )  # fmt: skip
            if t.complete:  # fully resumed from disk
                done = t
            else:
                self._transfer, self._retries, self._stall_reported = t, 0, False
                self._missing = collections.deque(t.missing())
                self._outstanding = {}
                self._last_progress = time.monotonic()
                self._tokens, self._tokens_at = float(ann.chunk_size), time.monotonic()
                self._pump()
                done = None
        if done is not None:
            self._hand_off(done)
        self.link.publish_state()

    # -- disk faults (under self._lock) -------------------------------------------------------
    def _check_room(self, ann: ModelAnnouncement) -> None:
        """Raise :class:`_NoRoom` unless the disk is writable and holds the bundle, room to unpack it
        and the reserve (after pruning stale downloads and old versions)."""
        folder = self.downloads_dir if self.downloads_dir.exists() else self.downloads_dir.parent
        free, readonly = disk_room(folder)
        if readonly:
            raise _NoRoom("disk_readonly", f"{folder} is on a read-only file system")
        mine = (self.downloads_dir / f"{ann.bundle_id}.{ext}" for ext in ("part", "tar"))
        have = any(p.exists() for p in mine)  # a part file is preallocated; a complete download needs no more
        need = (0 if have else ann.size) + ann.size + self.config.disk_reserve_bytes
        if free >= need:
            return
        freed = self._prune_downloads(keep=ann.bundle_id)
        if self.make_room is not None:
            try:
                self.make_room(need - free - freed)
            except OSError as exc:
                logger.warning("making room failed: %s", exc)
        free, readonly = disk_room(folder)
        if free < need:
            raise _NoRoom(
                "disk_full",
                f"{ann.model} v{ann.version} needs {need} bytes free (bundle {ann.size}, unpacking {ann.size}, "
                f"reserve {self.config.disk_reserve_bytes}{', part file on disk' if have else ''}), {free} are",
            )

    def _prune_downloads(self, keep: str) -> int:
        """Delete downloads of other bundles (stale part files, bitmaps, finished tars); bytes freed."""
        freed = 0
        try:
            for p in self.downloads_dir.iterdir():
                if p.is_file() and not p.name.startswith(f"{keep}."):
                    size = p.stat().st_size
                    p.unlink(missing_ok=True)
                    freed += size
                    logger.info("pruned stale download %s (%d bytes)", p.name, size)
        except OSError as exc:
            logger.warning("pruning downloads failed: %s", exc)
        return freed

    def _disk_failed(self, ann: ModelAnnouncement, reason: str, message: str, *, report: bool = True) -> None:
        """A disk fault stopped the transfer or install of ``ann``: report it once (``report=False``: the
        agent already did), retry after a back-off."""
        now = time.monotonic()
        first = self.disk_fault != reason and report
        if self.disk_fault is None:
            self._disk_fault_at, self._disk_backoff = now, self.config.disk_retry_min_s
        else:
            self._disk_backoff = min(2 * self._disk_backoff, self.config.disk_retry_max_s)
        self.disk_fault = reason
        self._rearm_at = now + self._disk_backoff
        self.stats["disk_faults"] += 1
        if first:
            logger.error("%s (%s); retrying in %.1f s", message, reason, self._disk_backoff)
            self.host.report("failed", ann.version, reason, message=message, retry_in_s=round(self._disk_backoff, 3))
            self.link.publish_state()
        else:
            logger.info("disk still faulty (%s); next retry in %.1f s", reason, self._disk_backoff)

    def _disk_recovered(self) -> None:
        if self.disk_fault is None:
            return
        was, since = self.disk_fault, self._disk_fault_at or time.monotonic()
        self.disk_fault, self._disk_fault_at, self._disk_backoff = None, None, self.config.disk_retry_min_s
        logger.info("disk writable again after %.1f s (%s); resuming", time.monotonic() - since, was)
        self.link.publish_event("disk_recovered", was=was, fault_s=round(time.monotonic() - since, 3))

    def _pump(self) -> None:
        """Request missing chunks until ``transfer_window`` are outstanding (and the rate budget allows).

        Refills once half the window arrived, so one SUBSCRIBE and one UNSUBSCRIBE packet cover several
        chunks."""
        t = self._transfer
        if t is None or not self.link.connected:
            return
        if len(self._outstanding) > self.config.transfer_window // 2:
            return
        if self._arrived:
            self.client.unsubscribe(self._arrived)
            self._arrived = []
        rate = self.config.transfer_max_bps
        if rate is not None:
            now = time.monotonic()
            self._tokens = min(self._tokens + (now - self._tokens_at) * rate, max(rate, t.announcement.chunk_size))
            self._tokens_at = now
        batch = []
        while len(self._outstanding) < self.config.transfer_window and self._missing:
            index = self._missing[0]
            if t.has(index):
                self._missing.popleft()
                continue
            if rate is not None:
                need = t.chunk_len(index)
                if self._tokens < need:
                    break
                self._tokens -= need
            self._missing.popleft()
            self._outstanding[index] = time.monotonic()
            batch.append((topics.bundle_chunk(self.config.fleet, t.bundle_id, index), 1))
        if batch:
            self.client.subscribe(batch)

    def _end_transfer(self) -> Transfer | None:
        t, self._transfer = self._transfer, None
        if t is not None and (self._outstanding or self._arrived):
            left = [topics.bundle_chunk(self.config.fleet, t.bundle_id, i) for i in self._outstanding]
            self.client.unsubscribe(left + self._arrived)
        self._outstanding.clear()
        self._arrived = []
        self._missing.clear()
        return t

    def _abort(self, reason: str, message: str) -> None:
        t = self._end_transfer()
        if t is None:
            return
        t.close()  # what was written is verified chunk by chunk: keep it for a resume
        sha = t.announcement.sha256
        self._spent[sha] = self._spent.get(sha, 0) + t.bytes_offered
        self._aborts[sha] = self._aborts.get(sha, 0) + 1
        cap = max(RETRY_BYTES_FACTOR * t.announcement.size, RETRY_BYTES_FLOOR)
        if self._spent[sha] > cap:  # retries are bounded in bytes per version, not only per session
            self._pending, self._rearm_at = None, None
            message = f"{message}; {self._spent[sha]} bytes offered in {self._aborts[sha]} tries exceed the cap of " \
                f"{cap} for this version: no more retries until it is announced again after a restart"
            reason = "byte_cap"
        else:  # back-off between consecutive failed tries: 2, 2, 4, 8 … × chunk_timeout_s, at most an hour
            delay = min(3600.0, 2 * self.config.chunk_timeout_s * 2 ** max(0, self._aborts[sha] - 2))
            self._rearm_at = time.monotonic() + delay
        logger.warning("transfer of v%d aborted (%s): %s", t.announcement.version, reason, message)
        self.host.report("failed", t.announcement.version, reason, message=message)

    def _hand_off(self, t: Transfer) -> None:
        self.downloaded_at = time.monotonic()
        self._handed_off.add(t.announcement.sha256)
        logger.info("bundle received", extra={"bundle_id": t.bundle_id, "bytes": t.announcement.size})
        self.link.publish_event(
            "downloaded", version=t.announcement.version, sha256=t.announcement.sha256, chunks=t.chunks,
            resumed_chunks=t.resumed_chunks, fetched_chunks=t.chunks - t.resumed_chunks,
            fetched_bytes=t.bytes_received, offered_bytes=t.bytes_offered,
        )  # fmt: skip
        self._jobs.put(("install", t))

    # -- worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stopping.is_set():
            busy = self._transfer is not None or self._pending is not None
            try:
                job = self._jobs.get(timeout=_TICK_S if busy else 1.0)  # idle: wake once a second
            except queue.Empty:
                self._tick()
                continue
            if job is None:
                return
            kind, arg = job
            try:
                if kind == "install":
                    self._install(arg)
                elif kind == "rollback":
                    self._rollback(*arg)
                elif kind == "trust":
                    self.host.recheck_trust()
            except Exception:
                logger.exception("delivery job %s failed", kind)
            self._tick()

    def _install(self, t: Transfer) -> None:
        fault: object = None
        try:
            fault = self.host.on_transfer_complete(t)  # the agent returns a disk reason code when a disk fault stopped it
        finally:
            with self._lock:
                self._handed_off.discard(t.announcement.sha256)
                mine = self._pending is not None and self._pending[1].sha256 == t.announcement.sha256
                if mine and isinstance(fault, str) and fault in DISK_REASONS:
                    # the complete download stays on disk (edge.delivery.transfer reuses it): retry the install
                    self._disk_failed(t.announcement, fault, f"installing v{t.announcement.version}: {fault}", report=False)
                elif mine:
                    self._pending = None
                    self._disk_recovered()

    def _rollback(self, t: Targets, ann: ModelAnnouncement | None) -> None:
        """A signed rollback command: activate the installed version if this device still holds it, else fetch it."""
        if self.host.activate_installed(t.version, t.sha256):
            return
        if ann is None:
            self._refuse(
                t.version, t.sha256, "rollback_unavailable",
                f"v{t.version} is not installed here and the rollback command carries no transfer data",
                t.issued_at.isoformat(),
            )  # fmt: skip
            return
        self._begin(t, ann)

    def _check_stale(self) -> None:
        """An expired key list is a loud state (metric, event, log), never silent trust."""
        stale = self.trust.stale()
        self.metrics.keylist_stale.set(1 if stale else 0)
        if stale and not self._stale_reported:
            logger.error("the key list v%s has expired: updates are refused until a current one arrives",
                         self.trust.keylist_version)  # fmt: skip
            self.link.publish_event("keylist_stale", keylist_version=self.trust.keylist_version,
                        expires_at=self.trust.info()["expires_at"])  # fmt: skip
            self.link.publish_state()
        self._stale_reported = stale

    def _tick(self) -> None:
        self._check_stale()
        with self._lock:
            now = time.monotonic()
            if not self.link.connected:
                self._last_progress = now  # a broker outage is not a stall: resume on reconnect
                return
            t = self._transfer
            if t is None:
                if self._pending is not None and self._rearm_at is not None and now >= self._rearm_at:
                    self._rearm_at = None
                    targets, ann = self._pending
                    logger.info("resuming the transfer of v%d", ann.version)
                    self._begin(targets, ann)
                return
            self._pump()
            if not self._outstanding or now - self._last_progress < self.config.chunk_timeout_s:
                return
            self._retries += 1
            if not self._stall_reported:  # say so within chunk_timeout_s, not only when giving up
                self._stall_reported = True
                self.link.publish_event(
                    "transfer_stalled", version=t.announcement.version, bundle_id=t.bundle_id, have=t.received,
                    total=t.chunks, waiting=ranges(sorted(self._outstanding))[:16],
                    idle_s=round(now - self._last_progress, 3),
                    hint="the broker lost retained chunks (persistence?) and no bundle server re-publishes them",
                )  # fmt: skip
            if self._retries <= self.config.transfer_retries:
                waiting = sorted(self._outstanding)
                logger.warning(
                    "transfer %s stalled at %d/%d chunks; asking again for %s",
                    t.bundle_id, t.received, t.chunks, ranges(waiting),
                )  # fmt: skip
                # ask for everything still missing (the broker may have lost all of it: a restart
                # without persistence); the server re-publishes retained, this device still pulls a window
                wanted = ranges(waiting + [i for i in self._missing if not t.has(i)])[:64]
                request = ChunkRequest(
                    device_id=self.config.device_id, bundle_id=t.bundle_id, ranges=wanted,
                    chunk_size=t.announcement.chunk_size,  # from the signed targets: the server re-chunks to it
                )  # fmt: skip
                self.client.publish(self.fetch_topic, request.model_dump_json(), qos=1)
                self.stats["fetch_requests"] += 1
                chunk_topics = [topics.bundle_chunk(self.config.fleet, t.bundle_id, i) for i in waiting]
                self.client.unsubscribe(chunk_topics)
                self.client.subscribe([(topic, 1) for topic in chunk_topics])  # the broker re-sends retained ones
                self._last_progress = now
                return
            missing = len(t.missing())
            self._abort("stalled", f"{missing} of {t.chunks} chunks never arrived")


class _NoRoom(Exception):
    """The disk cannot take a download now (``reason``: disk_full or disk_readonly)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

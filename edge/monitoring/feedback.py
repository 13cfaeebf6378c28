"""Staff feedback on the device: durable in SQLite (WAL), sent to the cloud store-and-forward.

Each :class:`models.feedback.FeedbackRecord` is committed to ``<state>/feedback/feedback.db``
(WAL journal, ``synchronous=FULL``: a committed record survives ``kill -9`` and a power cut) and
then handed to a :class:`edge.monitoring.telemetry.Telemetry` spool of its own
(``<state>/feedback/spool``): the same on-disk, sequenced, at-least-once delivery as telemetry,
with a per-device *feedback* sequence (so the telemetry/events sequence keeps no gaps). While the
broker is away records pile up on disk and go out in order after a reconnect. A record whose
spooling was interrupted by a crash (``seq`` still NULL) is spooled again at the next start; the
cloud collector deduplicates by ``id``.

**Disk faults.** A record the device cannot commit (a read-only or full SD card, an I/O error) is
*not* taken: :meth:`FeedbackStore.add` raises :class:`FeedbackNotStored` naming the disk state
(``disk_readonly``, ``disk_full``, ``disk_io``, the reason codes of :func:`models.messages.disk_reason`),
the route answers 503 with that code and the app shows it, the form still filled in, so the
validator can send it again. Nothing is acknowledged that a restart could lose, no sequence number
is used, and the lag state is not touched. Each operation opens the database and closes it again:
nothing holds the state folder open for writing (a kernel that remounts the card read-only, or an
operator, is not refused), and the first write after the disk comes back just works::

    store = FeedbackStore(state_dir / "feedback", device_id="store-1", fleet="default")
    store.attach(link)                    # an edge.delivery.link.MqttLink (optional)
    record = store.add(FeedbackIn(...))   # committed, then spooled; record.seq set
    store.records()                       # everything stored, oldest first
    store.close()
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge.monitoring.telemetry import Telemetry, TelemetryConfig
from models import topics
from models.feedback import FeedbackIn, FeedbackRecord
from models.messages import disk_reason

__all__ = ["FeedbackStore", "FeedbackNotStored", "feedback_disk_reason"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    seq INTEGER,
    record TEXT NOT NULL
)
"""

_FULL_BELOW = 64 << 10  # free bytes under which a failed write counts as a full disk (WAL frames, -shm pages)


class FeedbackNotStored(Exception):
    """The record could not be committed; ``reason`` is the disk state (disk_readonly / disk_full / disk_io)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"feedback not stored: {reason} ({detail})")
        self.reason = reason
        self.detail = detail


def feedback_disk_reason(exc: BaseException, folder: Path) -> str | None:
    """The disk reason code behind an ``OSError`` or a SQLite operational error, else None.

    >>> import errno; feedback_disk_reason(OSError(errno.ENOSPC, "full"), Path("."))
    'disk_full'
    """
    if isinstance(exc, OSError):
        return disk_reason(exc) or "disk_io"
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    with contextlib.suppress(OSError):  # SQLite says READONLY, CANTOPEN or IOERR (its -shm map): ask the mount
        st = os.statvfs(folder)
        if st.f_flag & os.ST_RDONLY:
            return "disk_readonly"
        if st.f_bavail * st.f_frsize < _FULL_BELOW:
            return "disk_full"
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "disk_full"
    if name.startswith("SQLITE_READONLY"):
        return "disk_readonly"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
        return "disk_io"
    return None


class FeedbackStore:
    """SQLite store of feedback records plus their store-and-forward sender. Thread-safe."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        device_id: str,
        fleet: str = "default",
        telemetry: TelemetryConfig | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.device_id = device_id
        self.path = self.folder / "feedback.db"
        self._lock = threading.Lock()
        #: the disk state of the last write that failed (disk_readonly / disk_full / disk_io), None when fine
        self.fault: str | None = None
        self.refused = 0  # records not taken because of a disk fault
        config = (telemetry or TelemetryConfig()).model_copy(update={"interval_s": 0.0})
        # registry=None: its counters stay out of the agent's /metrics (telemetry's are there already)
        self.sender = Telemetry(config, device_id=device_id, fleet=fleet, folder=self.folder / "spool", registry=None)
        self._topic = topics.feedback(fleet, device_id)
        try:
            self._respool()
        except (sqlite3.Error, OSError) as exc:  # a broken disk at start: the agent still starts
            self.fault = feedback_disk_reason(exc, self.folder) or "disk_io"
            logger.error("feedback store not usable at start (%s): %s", self.fault, exc)

    # -- wiring -----------------------------------------------------------------------------
    def attach(self, link: Any) -> None:
        """Deliver through ``link`` (an :class:`edge.delivery.link.MqttLink`); starts the sender."""
        self.sender.attach(link, events=False)
        self.sender.start()

    def close(self) -> None:
        self.sender.stop()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation (opened and closed here: no file stays open for writing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            yield db
        finally:
            db.close()

    # -- writing ----------------------------------------------------------------------------
    def add(self, feedback: FeedbackIn) -> FeedbackRecord:
        """Commit one record (durable when this returns), then spool it for delivery."""
        record = FeedbackRecord(**feedback.model_dump(), id=uuid.uuid4().hex, device_id=self.device_id)
        try:
            with self._lock, self._db() as db:
                db.execute(
                    "INSERT INTO feedback (id, at, seq, record) VALUES (?, ?, NULL, ?)",
                    (record.id, record.at.isoformat(), record.model_dump_json()),
                )
        except (sqlite3.Error, OSError) as exc:
            reason = feedback_disk_reason(exc, self.folder)
            if reason is None:
                raise
            if self.fault != reason:
                logger.error("feedback not stored: the disk is %s: %s", reason, exc)
            self.fault = reason
            self.refused += 1
            raise FeedbackNotStored(reason, str(exc)) from None
        if self.fault is not None:
            logger.info("feedback store writable again (was %s)", self.fault)
            self.fault = None
        return self._spool(record)

    def _spool(self, record: FeedbackRecord) -> FeedbackRecord:
        sent: list[FeedbackRecord] = []

        def build(seq: int) -> bytes:
            sent.append(record.model_copy(update={"seq": seq}))
            return sent[-1].model_dump_json().encode()

        seq = self.sender.send(self._topic, build, "feedback")
        if seq is None:  # disk trouble: stays NULL, retried at the next start
            return record
        try:
            with self._lock, self._db() as db:
                db.execute("UPDATE feedback SET seq = ?, record = ? WHERE id = ?", (seq, sent[-1].model_dump_json(), record.id))
        except (sqlite3.Error, OSError) as exc:  # committed and sent; seq still NULL: spooled again at the next start,
            logger.warning("feedback %s: seq not recorded (%s)", record.id, exc)  # the collector dedups by id
        return sent[-1]

    def _respool(self) -> None:
        if not self.path.exists():
            return
        with self._lock, self._db() as db:
            rows = db.execute("SELECT record FROM feedback WHERE seq IS NULL ORDER BY at").fetchall()
        for (raw,) in rows:
            logger.info("spooling feedback left unsent by an earlier run")
            self._spool(FeedbackRecord.model_validate_json(raw))

    # -- reading ----------------------------------------------------------------------------
    def records(self, limit: int | None = None) -> list[FeedbackRecord]:
        """Stored records, oldest first (the last ``limit`` if given)."""
        with self._lock, self._db() as db:
            rows = db.execute("SELECT record FROM feedback ORDER BY at").fetchall()
        out = [FeedbackRecord.model_validate_json(r) for (r,) in rows]
        return out[-limit:] if limit else out

    @property
    def pending(self) -> int:
        """Records spooled but not yet acknowledged by the broker."""
        return self.sender.spool.pending

    def stats(self) -> dict[str, Any]:
        with self._lock, self._db() as db:
            (n,) = db.execute("SELECT COUNT(*) FROM feedback").fetchone()
        return {"stored": n, "pending": self.pending, "fault": self.fault, "refused": self.refused}


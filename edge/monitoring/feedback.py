"""Staff feedback on the device: durable in SQLite (WAL), sent to the cloud store-and-forward.

Each :class:`models.feedback.FeedbackRecord` is committed to ``<state>/feedback/feedback.db``
(WAL journal, ``synchronous=FULL``: a committed record survives ``kill -9`` and a power cut) and
then handed to a :class:`edge.monitoring.telemetry.Telemetry` spool of its own
(``<state>/feedback/spool``): the same on-disk, sequenced, at-least-once delivery as telemetry,
with a per-device *feedback* sequence (so the telemetry/events sequence keeps no gaps). While the
broker is away records pile up on disk and go out in order after a reconnect. A record whose
spooling was interrupted by a crash (``seq`` still NULL) is spooled again at the next start; the
cloud collector deduplicates by ``id``::

    store = FeedbackStore(state_dir / "feedback", device_id="store-1", fleet="default")
    store.attach(link)                    # an edge.delivery.link.MqttLink (optional)
    record = store.add(FeedbackIn(...))   # committed, then spooled; record.seq set
    store.records()                       # everything stored, oldest first
    store.close()
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from edge.monitoring.telemetry import Telemetry, TelemetryConfig
from models import topics
from models.feedback import FeedbackIn, FeedbackRecord

__all__ = ["FeedbackStore"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    seq INTEGER,
    record TEXT NOT NULL
)
"""


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
        self.folder.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.path = self.folder / "feedback.db"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        config = (telemetry or TelemetryConfig()).model_copy(update={"interval_s": 0.0})
        # registry=None: its counters stay out of the agent's /metrics (telemetry's are there already)
        self.sender = Telemetry(config, device_id=device_id, fleet=fleet, folder=self.folder / "spool", registry=None)
        self._topic = topics.feedback(fleet, device_id)
        self._respool()

    # -- wiring -----------------------------------------------------------------------------
    def attach(self, link: Any) -> None:
        """Deliver through ``link`` (an :class:`edge.delivery.link.MqttLink`); starts the sender."""
        self.sender.attach(link, events=False)
        self.sender.start()

    def close(self) -> None:
        self.sender.stop()
        with self._lock:
            self._db.close()

    # -- writing ----------------------------------------------------------------------------
    def add(self, feedback: FeedbackIn) -> FeedbackRecord:
        """Commit one record (durable when this returns), then spool it for delivery."""
        record = FeedbackRecord(**feedback.model_dump(), id=uuid.uuid4().hex, device_id=self.device_id)
        with self._lock:
            self._db.execute(
                "INSERT INTO feedback (id, at, seq, record) VALUES (?, ?, NULL, ?)",
                (record.id, record.at.isoformat(), record.model_dump_json()),
            )
        return self._spool(record)

    def _spool(self, record: FeedbackRecord) -> FeedbackRecord:
        sent: list[FeedbackRecord] = []

        def build(seq: int) -> bytes:
            sent.append(record.model_copy(update={"seq": seq}))
            return sent[-1].model_dump_json().encode()

        seq = self.sender.send(self._topic, build, "feedback")
        if seq is None:  # disk trouble: stays NULL, retried at the next start
            return record
        with self._lock:
            self._db.execute(
                "UPDATE feedback SET seq = ?, record = ? WHERE id = ?", (seq, sent[-1].model_dump_json(), record.id)
            )
        return sent[-1]

    def _respool(self) -> None:
        with self._lock:
            rows = self._db.execute("SELECT record FROM feedback WHERE seq IS NULL ORDER BY at").fetchall()
        for (raw,) in rows:
            logger.info("spooling feedback left unsent by an earlier run")
            self._spool(FeedbackRecord.model_validate_json(raw))

    # -- reading ----------------------------------------------------------------------------
    def records(self, limit: int | None = None) -> list[FeedbackRecord]:
        """Stored records, oldest first (the last ``limit`` if given)."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM feedback ORDER BY at").fetchall()
        out = [FeedbackRecord.model_validate_json(r) for (r,) in rows]
        return out[-limit:] if limit else out

    @property
    def pending(self) -> int:
        """Records spooled but not yet acknowledged by the broker."""
        return self.sender.spool.pending

    def stats(self) -> dict[str, Any]:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()
        return {"stored": n, "pending": self.pending}


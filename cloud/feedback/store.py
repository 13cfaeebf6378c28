"""The cloud's feedback store: append-only JSON lines, deduplicated by record id.

``<dir>/feedback.jsonl`` holds one :class:`models.feedback.FeedbackRecord` per line, in arrival
order; a record already present (same ``id`` — MQTT QoS 1 may deliver twice, a device may re-spool
after a crash) is not appended again. Each append is flushed and fsynced; a torn last line (crash
mid-write) is ignored on reading and cut off before the next append::

    store = FeedbackSet("feedback/")
    store.add(record)          # True if new
    store.records()            # list[FeedbackRecord]
    store.content_hash()       # sha256 over the records' canonical JSON, sorted by id (lineage)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from pydantic import ValidationError

from models.feedback import FeedbackRecord

__all__ = ["FeedbackSet", "FILE"]

logger = logging.getLogger(__name__)

FILE = "feedback.jsonl"


class FeedbackSet:
    """An append-only, deduplicated feedback file in ``folder``. Thread-safe within a process."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE
        self._lock = threading.Lock()
        self._ids: set[str] = {r.id for r in self.records()}

    def records(self) -> list[FeedbackRecord]:
        if not self.path.exists():
            return []
        out: list[FeedbackRecord] = []
        with open(self.path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    logger.warning("%s: ignoring a torn last line", self.path)
                    break
                try:
                    out.append(FeedbackRecord.model_validate_json(line))
                except ValidationError as exc:
                    logger.warning("%s line %d is not a feedback record: %s", self.path, n, exc)
        return out

    def add(self, record: FeedbackRecord) -> bool:
        """Append ``record`` unless its id is stored already; True if it was appended."""
        with self._lock:
            if record.id in self._ids:
                return False
            self.folder.mkdir(parents=True, exist_ok=True)
            line = record.model_dump_json().encode() + b"\n"
            with open(self.path, "a+b") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                if size:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":  # a torn line from a crash: cut it off
                        fh.seek(0)
                        data = fh.read()
                        fh.truncate(data.rfind(b"\n") + 1)
                fh.seek(0, os.SEEK_END)
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._ids.add(record.id)
            return True

    def __len__(self) -> int:
        return len(self._ids)

    def content_hash(self) -> str:
        """sha256 of the set's records (canonical JSON, sorted by id): the same set, the same hash."""
        h = hashlib.sha256()
        for r in sorted(self.records(), key=lambda r: r.id):
            h.update(json.dumps(r.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode() + b"\n")
        return h.hexdigest()

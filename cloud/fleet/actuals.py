"""The fleet's actuals: sales rows devices accepted, appended durably and deduplicated, for retraining.

Devices forward every sales report they accept (HTTP/MQTT ``sales``, the serial bridge and staff
feedback, which reuse that route) as ``sales`` events through their sequenced, spooled telemetry
(:class:`models.serving.SalesActuals`). The fleet ingest (``edgeship fleet serve --state DIR``) hands
them to :class:`ActualsStore`, which appends them to ``DIR/actuals.jsonl``:

- **deduplicated** by ``(device, date, store_nbr, item_nbr)``: a row already stored with the same
  value is not written again (telemetry is at-least-once); a new value for the same key (a shop
  correcting a day) is appended and wins.
- **append-only and durable**: one ``write`` of whole lines per batch, then ``fsync``; a torn last
  line from a crash is cut off on the next open, so a reader never sees half a row.

:func:`fleet_table` reads the store back as one value per ``(date, store_nbr, item_nbr)``: the most
recently received row across devices wins (two devices of one store reporting the same day agree
or the later correction stands). :func:`table_hash` is the content hash ``edgeship retrain``
records in the new model's lineage.

::

    store = ActualsStore("/var/lib/edgeship-fleet")
    store.add("default", "store-1", [{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 7, "unit_sales": 3.0}])
    rows = fleet_table("/var/lib/edgeship-fleet")      # [("2017-08-16", 1, 7, 3.0)]
    table_hash(rows)                                  # sha256 hex
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ActualsStore", "ACTUALS_FILE", "read_rows", "fleet_table", "table_hash"]

logger = logging.getLogger(__name__)

ACTUALS_FILE = "actuals.jsonl"

Key = tuple[str, str, str, int, int]  # (fleet, device, date, store_nbr, item_nbr)
Row = tuple[str, int, int, float]  # (date, store_nbr, item_nbr, unit_sales)


def _recover(path: Path) -> int:
    """Cut a torn last line (a crash mid-append); returns the good length."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    with open(path, "rb") as fh:
        data = fh.read()
    good = data.rfind(b"\n") + 1
    if good != size:
        logger.warning("cutting a torn last line off %s (%d bytes)", path, size - good)
        with open(path, "r+b") as fh:
            fh.truncate(good)
            fh.flush()
            os.fsync(fh.fileno())
    return good


def read_rows(folder: str | os.PathLike[str]) -> Iterable[dict[str, Any]]:
    """Every stored record, in the order received (a torn last line is skipped)."""
    path = Path(folder) / ACTUALS_FILE
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            try:
                yield json.loads(line)
            except ValueError:
                logger.warning("skipping an unreadable line in %s", path)


class ActualsStore:
    """Append-only, deduplicated store of the sales rows devices forwarded. Thread-safe."""

    def __init__(self, folder: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ACTUALS_FILE
        self.fsync = fsync
        self._lock = threading.Lock()
        self._seen: dict[Key, float] = {}
        self.rows = 0  # records stored
        self.duplicates = 0  # rows not stored again (same key, same value)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)  # an empty store says "ingest ran, no sales yet"
        _recover(self.path)
        for r in read_rows(self.folder):
            try:
                self._seen[_key(r)] = float(r["unit_sales"])
                self.rows += 1
            except (KeyError, TypeError, ValueError):
                continue

    def add(self, fleet: str, device: str, rows: Iterable[Mapping[str, Any]], *, at: float | None = None) -> int:
        """Append the rows not stored yet with this value; returns how many were appended."""
        at = time.time() if at is None else at
        lines = []
        with self._lock:
            fresh: dict[Key, float] = {}
            for r in rows:
                rec = {
                    "fleet": fleet, "device": device, "date": str(r["date"]), "store_nbr": int(r["store_nbr"]),
                    "item_nbr": int(r["item_nbr"]), "unit_sales": float(r["unit_sales"]), "received_at": round(at, 3),
                }  # fmt: skip
                key = _key(rec)
                if fresh.get(key, self._seen.get(key)) == rec["unit_sales"]:
                    self.duplicates += 1
                    continue
                fresh[key] = rec["unit_sales"]
                lines.append(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
            if not lines:
                return 0
            with open(self.path, "ab") as fh:
                fh.write(b"".join(lines))  # whole lines in one write; a crash leaves at most a torn tail
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            self._seen.update(fresh)
            self.rows += len(lines)
        return len(lines)

    def __len__(self) -> int:
        return len(self._seen)


def _key(r: Mapping[str, Any]) -> Key:
    return (str(r.get("fleet", "")), str(r["device"]), str(r["date"]), int(r["store_nbr"]), int(r["item_nbr"]))


def fleet_table(folder: str | os.PathLike[str], *, fleet: str | None = None) -> list[Row]:
    """One ``(date, store_nbr, item_nbr, unit_sales)`` per key, sorted; the latest received row wins."""
    if not (Path(folder) / ACTUALS_FILE).exists():
        raise FileNotFoundError(f"{folder}: no {ACTUALS_FILE} (run `edgeship fleet serve --state {folder}` while devices report sales)")
    latest: dict[tuple[str, int, int], tuple[float, int, float]] = {}
    for n, r in enumerate(read_rows(folder)):
        if fleet is not None and r.get("fleet") != fleet:
            continue
        try:
            key = (str(r["date"]), int(r["store_nbr"]), int(r["item_nbr"]))
            when = (float(r.get("received_at", 0.0)), n, float(r["unit_sales"]))
        except (KeyError, TypeError, ValueError):
            continue
        if key not in latest or when[:2] >= latest[key][:2]:
            latest[key] = when
    return [(d, s, i, v[2]) for (d, s, i), v in sorted(latest.items())]


def table_hash(rows: Iterable[Row]) -> str:
    """sha256 of the merged table (sorted, canonical text): the same actuals give the same hash."""
    h = hashlib.sha256()
    for d, s, i, v in sorted(rows):
        h.update(f"{d},{s},{i},{v!r}\n".encode())
    return h.hexdigest()

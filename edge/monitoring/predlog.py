"""Sampled log of inputs and predictions on bounded disk, for retraining and realised-accuracy joins.

One JSON object per predicted row, in rotating files under ``<state>/predlog/``::

    {"ts": "2017-08-16T09:00:00.123+00:00", "date": "2017-08-17", "store_nbr": 1, "item_nbr": 103520,
     "onpromotion": false, "prediction": 4.2, "model": "favorita-demand", "version": 3,
     "digest": "ab12…", "arm": "live", "transport": "http", "request_id": "r-17"}

``(date, store_nbr, item_nbr)`` joins with the actual sales the shop reports later (``POST
/v1/sales``, or train.csv in the cloud) to give realised accuracy per model version and per A/B arm.
Requests are sampled as a whole (``sample_rate``); files rotate at ``segment_bytes`` and the oldest
are deleted while the folder holds more than ``max_bytes``, so the log never fills the disk.
Writes are appends (no fsync: a power cut may lose the last seconds, never corrupt older lines;
a torn last line is skipped by :func:`read_rows`).

::

    log = PredictionLog(state_dir / "predlog", PredLogConfig(sample_rate=0.05), registry)
    if log.sampled():
        log.write(rows, predictions, info, arm="live", transport="http", request_id="r-17")
    list(read_rows(state_dir / "predlog"))
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edge.monitoring.metrics import PredLogMetrics
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PredLogConfig", "PredictionLog", "read_rows"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^predictions-(\d{8})\.jsonl$")


class PredLogConfig(BaseModel):
    """Sampled prediction log on bounded disk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: float = Field(default=0.05, ge=0.0, le=1.0, description="Share of requests logged (0 = off).")
    max_bytes: int = Field(default=64 << 20, ge=1 << 12, description="Disk the log may use; oldest files go first.")
    segment_bytes: int = Field(default=4 << 20, ge=1 << 10, description="Size at which a new file is started.")


class PredictionLog:
    """Appends sampled rows; thread-safe; never raises into the serving path (errors are counted)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        config: PredLogConfig | None = None,
        registry: CollectorRegistry | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self.config = config or PredLogConfig()
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._fh: Any = None
        self._size = 0
        self._closed_bytes = 0
        self._files: list[Path] = []
        m = PredLogMetrics(registry)  # defined in edge.monitoring.metrics
        self.rows, self.errors, self.deleted, self.disk = m.rows, m.errors, m.deleted, m.disk

    @property
    def enabled(self) -> bool:
        return self.config.sample_rate > 0

    def sampled(self) -> bool:
        """Whether to log this request (decided once per request)."""
        rate = self.config.sample_rate
        return rate >= 1.0 or (rate > 0 and self._random.random() < rate)

    def write(
        self,
        rows: Sequence[Any],
        predictions: Sequence[float],
        model: Any,
        *,
        arm: str = "live",
        transport: str = "",
        request_id: str | None = None,
    ) -> None:
        """Log one request: ``rows`` are :class:`models.contract.RequestRow` (or dicts), one per prediction."""
        ts = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
        lines = []
        for row, pred in zip(rows, predictions, strict=False):
            r = row if isinstance(row, dict) else row.model_dump(mode="json")
            lines.append(
                json.dumps(
                    {
                        "ts": ts,
                        "date": str(r.get("date")),
                        "store_nbr": r.get("store_nbr"),
                        "item_nbr": r.get("item_nbr"),
                        "onpromotion": r.get("onpromotion"),
                        "prediction": pred,
                        "model": getattr(model, "name", None),
                        "version": getattr(model, "version", None),
                        "digest": getattr(model, "digest", None),
                        "arm": arm,
                        "transport": transport,
                        "request_id": request_id,
                    },
                    separators=(",", ":"),
                )
            )
        data = ("\n".join(lines) + "\n").encode()
        try:
            with self._lock:
                self._append(data)
            self.rows.inc(len(lines))
        except OSError as exc:
            self.errors.inc()
            logger.warning("prediction log write failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    # -- files (under the lock) -------------------------------------------------------------
    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files = sorted(p for p in self.folder.iterdir() if _NAME.match(p.name))
        number = int(_NAME.match(self._files[-1].name)[1]) + 1 if self._files else 1  # type: ignore[index]
        path = self.folder / f"predictions-{number:08d}.jsonl"
        self._fh = open(path, "ab")
        self._size = 0
        self._files.append(path)

    def _append(self, data: bytes) -> None:
        if self._fh is None or self._size >= self.config.segment_bytes:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            self._open()
            self._enforce_cap()
            self._closed_bytes = self._disk_bytes()
        self._fh.write(data)
        self._fh.flush()
        self._size += len(data)
        self.disk.set(self._closed_bytes + self._size)

    def _disk_bytes(self) -> int:
        total = 0
        for p in self._files:
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def _enforce_cap(self) -> None:
        while len(self._files) > 1 and self._disk_bytes() + self.config.segment_bytes > self.config.max_bytes:
            oldest = self._files.pop(0)
            oldest.unlink(missing_ok=True)
            self.deleted.inc()


def read_rows(folder: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every logged row, oldest first (torn lines from a power cut are skipped)."""
    for path in sorted(p for p in Path(folder).iterdir() if _NAME.match(p.name)):
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

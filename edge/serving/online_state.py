"""Online feature state: lag windows kept current from the actual sales a shop reports.

A bundle ships the last 56 days of log1p sales per store×item (``state.npz``, ending on its
``state_end_date``). Between model pushes the shop tells the agent what it actually sold — ``POST
/v1/sales``, MQTT ``request/sales``, or :meth:`OnlineState.apply` from the serial bridge — each row
a store×item's total for one day (re-sending a day replaces it, so MQTT's at-least-once delivery
is harmless)::

    {"sales": [{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "unit_sales": 7}]}

The agent keeps a *record* of what it was told (values and a "reported" mask over a 56-day window
ending on the newest reported day) and serves each model a *view* merging it with that model's
bundle state, day by day: a reported value wins; else the bundle's value for days up to its end;
else 0 (a day without reported sales sold nothing, as in train.csv). The view's end is the later
of the two ends, so lag features advance, the window shifts and missing days are zero-filled;
prediction dates are then accepted up to ``horizon_days`` after the view's end. A new bundle is
re-based the same way (:meth:`OnlineState.adopt`): its state wins for its days unless the shop
reported a value for that day, and newer reported days carry over.

The record is written atomically (temp file, fsync, rename) to ``<state>/online/sales_state.npz``
at most every ``flush_interval_s`` and on stop, and restored on start.

Rules a report must keep (all or nothing, 4xx naming ``sales[i].<field>``): schema (``required``,
``date_format``, ``finite``…), ``known_store``, ``known_item``, ``window`` (not older than the lag
window), ``date_advance`` (at most ``max_advance_days`` after the last known day), ``future`` (at most
``max_future_days`` after the device's own date: no report can block the days ahead), ``duplicate``
(one value per store×item×day per report), ``max_rows`` (413).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.serving.errors import ErrorDetail, RequestError, detail, from_validation_error
from models.fsutil import atomic_write_bytes
from models.contract import LAG_WINDOW_DAYS
from models.features import SalesState, Tables, target_transform
from models.serving import MAX_SALES_ROWS, SalesAck, SalesReport

__all__ = ["OnlineStateConfig", "SalesRecord", "OnlineState", "merge_state"]

logger = logging.getLogger(__name__)

W = LAG_WINDOW_DAYS
_DAY = np.timedelta64(1, "D")


class OnlineStateConfig(BaseModel):
    """Lag windows kept current from reported sales."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Accept sales reports and serve lag features from them.")
    flush_interval_s: float = Field(
        default=2.0, ge=0.0, le=3600, description="Longest a reported sale waits to be saved (0 = on every report)."
    )
    max_advance_days: int = Field(
        default=W, ge=1, le=3660, description="A reported day may be at most this many days after the last known one."
    )
    max_future_days: int = Field(
        default=1, ge=0, le=7, description="A reported day may be at most this many days after the device's "
        "UTC date (time zones and clock skew); later days are refused (rule 'future'), so no report can move "
        "the lag window past today and block predictions for the days ahead."
    )


def _keys(store: np.ndarray, item: np.ndarray) -> np.ndarray:
    return np.asarray(store, np.int64) * (1 << 32) + np.asarray(item, np.int64)


def _split(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return keys >> 32, keys & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class SalesRecord:
    """What the device was told: log1p sales and a reported mask, [pairs, 56] ending on ``end_date``."""

    keys: np.ndarray  # int64 [P], sorted store<<32 | item
    window: np.ndarray  # float32 [P, W]
    reported: np.ndarray  # bool [P, W]
    end_date: np.datetime64

    @classmethod
    def empty(cls, end_date: np.datetime64) -> SalesRecord:
        return cls(np.zeros(0, np.int64), np.zeros((0, W), np.float32), np.zeros((0, W), bool), end_date)

    def shifted(self, end: np.datetime64) -> SalesRecord:
        """The same record on a window ending ``end`` (≥ its end): older days drop, new days unreported."""
        k = int((end - self.end_date) / _DAY)
        if k <= 0:
            return self
        window = np.zeros_like(self.window)
        reported = np.zeros_like(self.reported)
        if k < W:
            window[:, : W - k] = self.window[:, k:]
            reported[:, : W - k] = self.reported[:, k:]
        return SalesRecord(self.keys, window, reported, end)

    def with_pairs(self, keys: np.ndarray) -> tuple[SalesRecord, np.ndarray]:
        """The record with ``keys`` added (if new), and each key's row."""
        union = np.union1d(self.keys, keys)
        if len(union) != len(self.keys):
            rows = np.searchsorted(union, self.keys)
            window = np.zeros((len(union), W), np.float32)
            reported = np.zeros((len(union), W), bool)
            window[rows], reported[rows] = self.window, self.reported
            rec = SalesRecord(union, window, reported, self.end_date)
        else:
            rec = SalesRecord(self.keys, self.window.copy(), self.reported.copy(), self.end_date)
        return rec, np.searchsorted(rec.keys, keys)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf, keys=self.keys, window=self.window, reported=self.reported, end_date=np.array(str(self.end_date))
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SalesRecord:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            rec = cls(
                keys=z["keys"].astype(np.int64),
                window=z["window"].astype(np.float32),
                reported=z["reported"].astype(bool),
                end_date=np.datetime64(str(z["end_date"]), "D"),
            )
        p = len(rec.keys)
        if rec.window.shape != (p, W) or rec.reported.shape != (p, W) or np.any(np.diff(rec.keys) <= 0):
            raise ValueError("sales record arrays are inconsistent")
        return rec


def merge_state(bundle: SalesState, record: SalesRecord | None, tables: Tables | None = None) -> SalesState:
    """A model's view: per pair and day, the reported value, else the bundle's (up to its end), else 0.

    Pairs are the bundle's plus reported ones whose store and item ``tables`` know.

    >>> from tests.bundle_kit import sample_state
    >>> b = sample_state()
    >>> merge_state(b, None) is b
    True
    """
    if record is None or not len(record.keys):
        return bundle
    eb = np.datetime64(bundle.end_date, "D")
    end = max(eb, record.end_date)
    rec_keys = record.keys
    known = np.ones(len(rec_keys), bool)
    if tables is not None:
        s, i = _split(rec_keys)
        known = (tables.store_index(s) >= 0) & (tables.item_index(i) >= 0)
    b_keys = _keys(bundle.store_nbr, bundle.item_nbr)
    union = np.union1d(b_keys, rec_keys[known])
    window = np.zeros((len(union), W), np.float32)
    kb = int((end - eb) / _DAY)
    if kb < W:
        window[np.searchsorted(union, b_keys), : W - kb] = bundle.window[:, kb:]
    kr = int((end - record.end_date) / _DAY)
    if kr < W and known.any():
        rows = np.searchsorted(union, rec_keys[known])
        vals, rep = record.window[known, kr:], record.reported[known, kr:]
        window[rows, : W - kr] = np.where(rep, vals, window[rows, : W - kr])
    store, item = _split(union)
    return SalesState(store_nbr=store, item_nbr=item, window=window, end_date=end)


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.reports = Counter(
            "edgeship_sales_reports", "Sales reports by transport and outcome.", ["transport", "outcome"], registry=registry
        )
        self.rows = Counter("edgeship_sales_rows", "Reported sales rows applied to the lag state.", registry=registry)
        self.end = Gauge(
            "edgeship_lag_state_end_timestamp_seconds",
            "Last day of known sales in the live model's lag windows (unix time of its midnight UTC).",
            registry=registry,
        )
        self.saves = Counter("edgeship_lag_state_saves", "Lag state writes to disk by outcome.", ["outcome"], registry=registry)


class OnlineState:
    """The sales record, its persistence, and the views served to attached predictors. Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: OnlineStateConfig | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config or OnlineStateConfig()
        self.path = Path(path)
        self.metrics = _Metrics(registry)
        self._lock = threading.RLock()
        self._record: SalesRecord | None = None
        self._attached: weakref.WeakSet[Any] = weakref.WeakSet()
        self._dirty = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: The device's date (UTC); replaceable in tests that simulate a device clock.
        self.today: Any = lambda: np.datetime64(np.datetime64("now", "s"), "D")

    # -- lifecycle --------------------------------------------------------------------------
    def load(self) -> None:
        """Restore the record saved by an earlier run (a damaged file is logged and ignored)."""
        try:
            self._record = SalesRecord.from_bytes(self.path.read_bytes())
            logger.info(
                "restored reported sales", extra={"pairs": len(self._record.keys), "end_date": str(self._record.end_date)}
            )
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError) as exc:
            logger.error("saved sales state %s is unreadable, starting without it: %s", self.path, exc)

    def start(self) -> None:
        self.load()
        if self.config.flush_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._flusher, name="edgeship-lag-state", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.flush()

    @property
    def record(self) -> SalesRecord | None:
        return self._record

    # -- views ------------------------------------------------------------------------------
    def adopt(self, predictor: Any) -> None:
        """Serve ``predictor`` (an :class:`edge.serving.predictor.Predictor`) the merged view, now and after
        every report (re-basing a new bundle on what was reported before it)."""
        with self._lock:
            self._attached.add(predictor)
            self._view(predictor)

    def _view(self, predictor: Any) -> None:
        if getattr(predictor, "closed", False):
            return
        view = merge_state(predictor.bundle_state, self._record, predictor.tables)
        if view is not predictor.sales_state:
            predictor.set_state(view)

    # -- reports ----------------------------------------------------------------------------
    def apply(self, body: SalesReport | Mapping[str, Any], live: Any, *, transport: str = "http") -> SalesAck:
        """Validate a report against the live model and apply it; :class:`RequestError` if any row breaks
        a rule (nothing applied then). Every attached predictor gets its new view."""
        try:
            report = self._validate(body, live)
            with self._lock:
                state = live.sales_state
                rows = self._check(report, live.tables, np.datetime64(state.end_date, "D"))
                self._apply_rows(*rows)
                for p in list(self._attached):
                    self._view(p)
                view = live.sales_state
                self._dirty = True
            self.metrics.reports.labels(transport, "ok").inc()
            self.metrics.rows.inc(len(report.sales))
            self.metrics.end.set(_timestamp(view.end_date))
        except RequestError:
            self.metrics.reports.labels(transport, "invalid").inc()
            raise
        if self.config.flush_interval_s == 0:
            self.flush()
        else:
            self._wake.set()
        return SalesAck(
            correlation_id=report.correlation_id,
            accepted=len(report.sales),
            end_date=str(view.end_date),
            pairs=len(view.store_nbr),
        )

    @staticmethod
    def _validate(body: SalesReport | Mapping[str, Any], live: Any) -> SalesReport:
        if isinstance(body, SalesReport):
            report = body
        else:
            if not isinstance(body, Mapping):
                raise RequestError([detail("body", "object_type", 'must be a JSON object {"sales": [...]}')])
            rows = body.get("sales")
            if isinstance(rows, list) and len(rows) > MAX_SALES_ROWS:
                raise RequestError(
                    [detail("sales", "max_rows", f"has {len(rows)} rows, at most {MAX_SALES_ROWS} are allowed")],
                    status=413,
                )
            try:
                report = SalesReport.model_validate(body)
            except ValidationError as exc:
                raise from_validation_error(exc) from None
        if len(report.sales) > MAX_SALES_ROWS:
            raise RequestError(
                [detail("sales", "max_rows", f"has {len(report.sales)} rows, at most {MAX_SALES_ROWS} are allowed")],
                status=413,
            )
        return report

    def _check(
        self, report: SalesReport, tables: Tables, end: np.datetime64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = report.sales
        dates = np.array([r.date for r in rows], "M8[D]")
        store = np.array([r.store_nbr for r in rows], np.int64)
        item = np.array([r.item_nbr for r in rows], np.int64)
        sales = np.array([r.unit_sales for r in rows], np.float64)
        first = end - (W - 1) * _DAY
        last = end + self.config.max_advance_days * _DAY
        latest = self.today() + self.config.max_future_days * _DAY  # never past the device's clock
        s_ok = tables.store_index(store) >= 0
        i_ok = tables.item_index(item) >= 0
        d_ok = (dates >= first) & (dates <= last)
        keys = _keys(store, item)
        seen: dict[tuple[int, int], int] = {}
        problems: list[ErrorDetail] = []
        for r in range(len(rows)):
            f = f"sales[{r}]"
            if not s_ok[r]:
                problems.append(detail(f"{f}.store_nbr", "known_store", f"unknown store {store[r]}"))
            if not i_ok[r]:
                problems.append(detail(f"{f}.item_nbr", "known_item", f"unknown item {item[r]}"))
            if dates[r] < first:
                problems.append(
                    detail(f"{f}.date", "window", f"{dates[r]} is before the lag window, which starts {first}")
                )
            elif dates[r] > latest:
                problems.append(
                    detail(f"{f}.date", "future", f"{dates[r]} is after the device's date {latest - self.config.max_future_days * _DAY}"
                           f" (+{self.config.max_future_days} day(s) allowed)")
                )
            elif not d_ok[r]:
                problems.append(
                    detail(
                        f"{f}.date",
                        "date_advance",
                        f"{dates[r]} is more than {self.config.max_advance_days} days after the last known day {end}",
                    )
                )
            key = (int(keys[r]), int(dates[r].astype(np.int64)))
            if key in seen:
                problems.append(
                    detail(f, "duplicate", f"store {store[r]} item {item[r]} on {dates[r]} is also sales[{seen[key]}]")
                )
            else:
                seen[key] = r
        if problems:
            raise RequestError(problems)
        return keys, dates, target_transform(sales)

    def _apply_rows(self, keys: np.ndarray, dates: np.ndarray, values: np.ndarray) -> None:
        newest = dates.max()
        rec = self._record
        if rec is None:
            rec = SalesRecord.empty(newest)
        rec = rec.shifted(max(rec.end_date, newest))
        rec, rows = rec.with_pairs(keys)
        cols = (W - 1) - ((rec.end_date - dates) / _DAY).astype(np.int64)
        inside = cols >= 0
        rec.window[rows[inside], cols[inside]] = values[inside]
        rec.reported[rows[inside], cols[inside]] = True
        self._record = rec

    # -- persistence ------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the record if it changed (atomically)."""
        with self._lock:
            if not self._dirty or self._record is None:
                return
            data = self._record.to_bytes()
            self._dirty = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, data)
            self.metrics.saves.labels("ok").inc()
        except OSError as exc:
            with self._lock:
                self._dirty = True
            self.metrics.saves.labels("error").inc()
            logger.error("saving the sales state failed: %s", exc)

    def _flusher(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.wait(self.config.flush_interval_s):
                break
            self._wake.clear()
            self.flush()

    def snapshot(self) -> dict[str, Any]:
        """For telemetry: what the record covers."""
        rec = self._record
        return {"reported_pairs": 0 if rec is None else len(rec.keys), "reported_end": None if rec is None else str(rec.end_date)}


def _timestamp(day: Any) -> float:
    return float(np.datetime64(day, "s").astype(np.int64))


def pairs(keys: Iterable[int]) -> list[tuple[int, int]]:
    """``[(store, item), ...]`` of record keys (for debugging and tests)."""
    return [(int(k) >> 32, int(k) & 0xFFFFFFFF) for k in keys]

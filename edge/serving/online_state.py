"""Online feature state: lag windows kept current from the actual sales a shop reports.

A bundle ships the last 56 days of log1p sales per store×item (``state.npz``, ending on its
``state_end_date``). Between model pushes the shop tells the agent what it actually sold — ``POST
/v1/sales``, MQTT ``request/sales``, or :meth:`OnlineState.apply` from the serial bridge — each row
a store×item's total for one day (re-sending a day replaces it, so MQTT's at-least-once delivery
is harmless)::

    {"sales": [{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "unit_sales": 7}]}

The agent keeps a *record* of what it was told (values and a "reported" mask over a 56-day window
per pair) and serves each model a *view* merging it with that model's bundle state, day by day: a
reported value wins; else the bundle's value for days up to its end; else 0. Windows advance **per
store**: a store's windows end on the later of the bundle's end and the newest day that store
reported (a store reporting a day reports all it sold, so its unreported items sold nothing that
day, as in train.csv), while a store that reported nothing keeps the bundle's window — a partial
report never pulls other stores toward zero. Prediction dates are accepted up to ``horizon_days``
after the row's own store's window end (:meth:`models.features.SalesState.row_end`). A new bundle
is re-based the same way (:meth:`OnlineState.adopt`): its state wins for its days unless the shop
reported a value for that day, and newer reported days carry over.

The record is written atomically (temp file, fsync, rename) to ``<state>/online/sales_state.npz``
at most every ``flush_interval_s`` and on stop, and restored on start.

Rules a report must keep (all or nothing, 4xx naming ``sales[i].<field>``): schema (``required``,
``date_format``, ``finite``…), ``known_store``, ``known_item``, ``window`` (not older than the store's lag
window), ``date_advance`` (at most ``max_advance_days`` after the store's last known day), ``future`` (at
most ``max_future_days`` after the device's own date: no report can block the days ahead), ``duplicate``
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
from prometheus_client import CollectorRegistry

from edge.monitoring.metrics import SalesMetrics
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
    """What the device was told: log1p sales and a reported mask per pair, [pairs, 56].

    Each pair's window ends on its *store's* newest reported day (``ends``): a store that reports a
    day reports everything it sold that day, so its other items sold nothing then; a store that did
    not report keeps its window where it was (partial reports never pull other stores toward zero).
    ``end_date`` is the newest of ``ends``.
    """

    keys: np.ndarray  # int64 [P], sorted store<<32 | item
    window: np.ndarray  # float32 [P, W]
    reported: np.ndarray  # bool [P, W]
    ends: np.ndarray  # M8[D] [P], last day of each pair's window (equal within a store)

    @property
    def end_date(self) -> np.datetime64:
        return self.ends.max() if len(self.ends) else np.datetime64("NaT", "D")

    @classmethod
    def empty(cls, end_date: np.datetime64 | None = None) -> SalesRecord:
        return cls(np.zeros(0, np.int64), np.zeros((0, W), np.float32), np.zeros((0, W), bool), np.zeros(0, "M8[D]"))

    def store_ends(self, stores: np.ndarray) -> np.ndarray:
        """Each store's newest reported day (NaT where the store never reported)."""
        out = np.full(len(stores), np.datetime64("NaT"), "M8[D]")
        if not len(self.keys):
            return out
        s, _ = _split(self.keys)
        uniq, first = np.unique(s, return_index=True)
        pos = np.minimum(np.searchsorted(uniq, stores), len(uniq) - 1)
        hit = uniq[pos] == stores
        out[hit] = self.ends[first[pos[hit]]]
        return out

    def advanced(self, store_end: dict[int, np.datetime64], keys: np.ndarray) -> tuple[SalesRecord, np.ndarray]:
        """The record with ``keys`` added and the pairs of each store in ``store_end`` shifted to end on
        that day (never earlier than they did: older days drop, new days unreported); each key's row."""
        union = np.union1d(self.keys, keys)
        rows = np.searchsorted(union, self.keys)
        window = np.zeros((len(union), W), np.float32)
        reported = np.zeros((len(union), W), bool)
        old_end = np.full(len(union), np.datetime64("NaT"), "M8[D]")
        window[rows], reported[rows], old_end[rows] = self.window, self.reported, self.ends
        stores, _ = _split(union)
        new_end = old_end.copy()
        for s, e in store_end.items():
            at = stores == s
            new_end[at] = np.where(np.isnat(old_end[at]) | (old_end[at] < e), e, old_end[at])
        k = np.where(np.isnat(old_end), 0, (new_end - old_end) / _DAY).astype(np.int64)
        window, reported = _shift_rows(window, k), _shift_rows(reported, k)
        return SalesRecord(union, window, reported, new_end), np.searchsorted(union, keys)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf, keys=self.keys, window=self.window, reported=self.reported, ends=self.ends.astype("M8[D]").astype(np.int64)
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SalesRecord:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            keys = z["keys"].astype(np.int64)
            if "ends" in z.files:
                ends = z["ends"].astype(np.int64).astype("M8[D]")
            else:  # written before per-store ends: one end for all pairs
                ends = np.full(len(keys), np.datetime64(str(z["end_date"]), "D"))
            rec = cls(keys=keys, window=z["window"].astype(np.float32), reported=z["reported"].astype(bool), ends=ends)
        p = len(rec.keys)
        if (
            rec.window.shape != (p, W)
            or rec.reported.shape != (p, W)
            or rec.ends.shape != (p,)
            or np.any(np.diff(rec.keys) <= 0)
        ):
            raise ValueError("sales record arrays are inconsistent")
        return rec


def _shift_rows(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Row ``p`` moved ``k[p]`` ≥ 0 columns to the left (newest column last); vacated columns are 0/False."""
    if not len(a) or not np.any(k):
        return a
    cols = np.arange(W)[None, :] + k[:, None]
    inside = cols < W
    out = np.take_along_axis(a, np.minimum(cols, W - 1), axis=1)
    return np.where(inside, out, np.zeros((), a.dtype))


def merge_state(bundle: SalesState, record: SalesRecord | None, tables: Tables | None = None) -> SalesState:
    """A model's view: per pair and day, the reported value, else the bundle's (up to its end), else 0.

    Pairs are the bundle's plus reported ones whose store and item ``tables`` know. Each pair's window
    ends on the later of the bundle's end and its store's newest reported day, so a store that did not
    report keeps the bundle's window (and its horizon) however far the others moved.

    >>> from tests.bundle_kit import sample_state
    >>> b = sample_state()
    >>> merge_state(b, None) is b
    True
    """
    if record is None or not len(record.keys):
        return bundle
    eb = np.datetime64(bundle.end_date, "D")
    rec_keys = record.keys
    known = np.ones(len(rec_keys), bool)
    if tables is not None:
        s, i = _split(rec_keys)
        known = (tables.store_index(s) >= 0) & (tables.item_index(i) >= 0)
    b_keys = _keys(bundle.store_nbr, bundle.item_nbr)
    union = np.union1d(b_keys, rec_keys[known])
    store, item = _split(union)
    rec_store_end = record.store_ends(store)
    end = np.where(np.isnat(rec_store_end) | (rec_store_end < eb), eb, rec_store_end)
    window = np.zeros((len(union), W), np.float32)
    b_end = np.full(len(union), eb) if bundle.pair_end is None else None
    if b_end is None:  # a view being re-merged: bundles themselves never carry per-pair ends
        b_end = np.full(len(union), eb)
        b_end[np.searchsorted(union, b_keys)] = np.asarray(bundle.pair_end, "M8[D]")
        end = np.maximum(end, b_end)
    window[np.searchsorted(union, b_keys)] = bundle.window
    window = _shift_rows(window, ((end - b_end) / _DAY).astype(np.int64))
    if known.any():
        rows = np.searchsorted(union, rec_keys[known])
        k = ((end[rows] - record.ends[known]) / _DAY).astype(np.int64)
        vals, rep = _shift_rows(record.window[known], k), _shift_rows(record.reported[known], k)
        window[rows] = np.where(rep, vals, window[rows])
    newest = end.max()
    pair_end = None if np.all(end == newest) else end
    return SalesState(store_nbr=store, item_nbr=item, window=window, end_date=newest, pair_end=pair_end)


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
        self.metrics = SalesMetrics(registry)
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
                base = getattr(live, "bundle_state", None) or live.sales_state
                eb = np.datetime64(base.end_date, "D")
                rows = self._check(report, live.tables, eb)
                self._apply_rows(*rows, eb)
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
        self, report: SalesReport, tables: Tables, bundle_end: np.datetime64
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = report.sales
        dates = np.array([r.date for r in rows], "M8[D]")
        store = np.array([r.store_nbr for r in rows], np.int64)
        item = np.array([r.item_nbr for r in rows], np.int64)
        sales = np.array([r.unit_sales for r in rows], np.float64)
        # each row against its own store's window: the later of the bundle's end and the store's reports
        known = self._record.store_ends(store) if self._record is not None else np.full(len(rows), np.datetime64("NaT"), "M8[D]")
        end = np.where(np.isnat(known) | (known < bundle_end), bundle_end, known)
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
            if dates[r] < first[r]:
                problems.append(
                    detail(f"{f}.date", "window", f"{dates[r]} is before the lag window, which starts {first[r]}")
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
                        f"{dates[r]} is more than {self.config.max_advance_days} days after the last known day {end[r]}",
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

    def _apply_rows(self, keys: np.ndarray, dates: np.ndarray, values: np.ndarray, bundle_end: np.datetime64) -> None:
        rec = self._record if self._record is not None else SalesRecord.empty()
        stores, _ = _split(keys)
        store_end: dict[int, np.datetime64] = {}
        for s in np.unique(stores).tolist():
            store_end[s] = max(dates[stores == s].max(), bundle_end)  # the store's window never ends before the bundle's
        rec, rows = rec.advanced(store_end, keys)
        cols = (W - 1) - ((rec.ends[rows] - dates) / _DAY).astype(np.int64)
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

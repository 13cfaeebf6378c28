"""Device input over HTTP: sale events with idempotency keys, and sensor readings.

The serial bridge (:mod:`firmware_bridge.bridge`) turns a shop microcontroller's frames into
these calls. A sale *event* is a quantity sold at a moment; the lag state wants a store×item's
*day total* (``POST /v1/sales``). This module keeps, per store×item×day, the running total of the
events it accepted, and reports that total through the same validation and lag-state update as
``POST /v1/sales`` (:meth:`edge.serving.pipeline.Serving.report_sales`, counted with
``transport="serial"``)::

    POST /v1/sales/events
      {"device_id": "shelf-7", "boot_id": 3221225473,
       "events": [{"seq": 5, "date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "quantity": 2.0}]}
      → 200 {"results": [{"seq": 5, "outcome": "accepted" | "duplicate" | "invalid", "details": [...]}]}
      → 503 while no model is active (nothing recorded: the bridge retries)

    POST /v1/sensors
      {"device_id": "shelf-7", "readings": [{"sensor_id": 1, "kind": "weight", "unit": "g", "value": 4200.0,
                                             "time": "2017-08-16T10:00:00+00:00"}]}
      → 200 {"accepted": 1}   (counted in edgeship_sensor_readings_total{transport="serial"}, and a
                               "sensor_reading" telemetry event per reading when MQTT telemetry runs)

Exactly once: an event's idempotency key is ``device_id/boot_id/seq`` (a device numbers its frames
from 1 after every boot, and says which boot in its hello). Keys and totals live in one SQLite
ledger (``<state>/ingest/sales_events.sqlite3``, synchronous=FULL); a key is committed together
with the new total, after the lag state took it. A retry of an accepted key answers "duplicate"
and changes nothing, across bridge and agent restarts. If the agent dies between the lag-state
update and the commit, the retry reports the same total again (a day's value is replaced, never
added), so it is still counted once. The ledger's totals are re-applied to the lag state on the
first call after a start, so a total the lag state had not yet saved is not lost either. A later
``POST /v1/sales`` for the same store×item×day replaces the running total (the till's end-of-day
figure wins) until the next event for that day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.serving.errors import RequestError, detail, from_validation_error
from models.contract import IsoDate
from models.messages import Identifier

__all__ = ["SaleEvent", "SaleEvents", "SensorReadings", "SalesLedger", "Ingest", "ingest_routes"]

logger = logging.getLogger(__name__)

MAX_EVENTS = 256
_Id = Annotated[int, Field(gt=0, lt=2**31)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SaleEvent(_Strict):
    """One sale (negative quantity: a return) of an item in a store on a day."""

    seq: int = Field(ge=0, lt=2**32, description="The device's frame sequence number (its idempotency key).")
    date: IsoDate = Field(description="Shop-local day of the sale, YYYY-MM-DD.")
    store_nbr: _Id
    item_nbr: _Id
    quantity: float = Field(ge=-1e6, le=1e6, allow_inf_nan=False, description="Units sold (fractional for weighed goods).")


class SaleEvents(_Strict):
    device_id: Identifier
    boot_id: int = Field(ge=0, lt=2**32, description="Which boot of the device numbered these events.")
    events: list[SaleEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class SensorReading(_Strict):
    sensor_id: int = Field(ge=0, le=255)
    kind: Literal["weight", "temperature", "humidity", "door_count", "battery"]
    unit: Literal["g", "degC", "percent", "count", "V"]
    value: float = Field(allow_inf_nan=False)
    time: dt.datetime | None = Field(default=None, description="When it was read (device clock after time sync).")


class SensorReadings(_Strict):
    device_id: Identifier
    readings: list[SensorReading] = Field(min_length=1, max_length=MAX_EVENTS)


class SalesLedger:
    """Accepted event keys and the day totals they add up to (SQLite, one writer at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, total_after REAL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS totals (store INTEGER, item INTEGER, day TEXT, units REAL, "
            "PRIMARY KEY (store, item, day))"
        )
        self.lock = threading.Lock()

    def seen(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM seen WHERE key = ?", (key,)).fetchone() is not None

    def total(self, store: int, item: int, day: str) -> float:
        row = self._db.execute("SELECT units FROM totals WHERE store=? AND item=? AND day=?", (store, item, day)).fetchone()
        return 0.0 if row is None else float(row[0])

    def commit(self, key: str, store: int, item: int, day: str, units: float) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT INTO seen (key, total_after) VALUES (?, ?)", (key, units))
            self._db.execute(
                "INSERT INTO totals (store, item, day, units) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (store, item, day) DO UPDATE SET units = excluded.units",
                (store, item, day, units),
            )

    def totals(self, since: str) -> list[tuple[int, int, str, float]]:
        return [
            (int(s), int(i), str(d), float(u))
            for s, i, d, u in self._db.execute("SELECT store, item, day, units FROM totals WHERE day >= ? ORDER BY day", (since,))
        ]

    def close(self) -> None:
        self._db.close()


class Ingest:
    """The handlers behind :func:`ingest_routes`, bound to an :class:`edge.agent.Agent`."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.ledger = SalesLedger(Path(agent.config.state_dir) / "ingest" / "sales_events.sqlite3")
        self._replayed = False

    @property
    def metrics(self) -> Any:
        return self.agent.metrics

    def _replay(self) -> None:
        """Re-apply the ledger's day totals (the lag state saves every few seconds; the ledger at once)."""
        if self._replayed:
            return
        online = self.agent.serving.online
        live = self.agent.slot.current
        if online is None or live is None:
            return
        import numpy as np

        from models.contract import LAG_WINDOW_DAYS

        end = np.datetime64(live.sales_state.end_date, "D")
        since = str(end - np.timedelta64(LAG_WINDOW_DAYS - 1, "D"))
        rows = [{"date": d, "store_nbr": s, "item_nbr": i, "unit_sales": u} for s, i, d, u in self.ledger.totals(since)]
        for start in range(0, len(rows), 1000):
            try:
                self.agent.serving.report_sales({"sales": rows[start : start + 1000]}, transport="serial")
            except RequestError as exc:  # a newer model may not know an item any more: skip those rows
                logger.warning("replaying serial sale totals: %s", exc)
        self._replayed = True

    def sale_events(self, body: Any) -> dict[str, Any]:
        """Apply each event once; raises :class:`edge.serving.pipeline.Unavailable` (503) with no model."""
        try:
            batch = SaleEvents.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        results = []
        with self.ledger.lock:
            self._replay()
            for i, ev in enumerate(batch.events):
                key = f"{batch.device_id}/{batch.boot_id}/{ev.seq}"
                if self.ledger.seen(key):
                    self.metrics.sale_events.labels("serial", "duplicate").inc()
                    results.append({"seq": ev.seq, "outcome": "duplicate"})
                    continue
                day = ev.date.isoformat()
                total = self.ledger.total(ev.store_nbr, ev.item_nbr, day) + ev.quantity
                row = {"date": day, "store_nbr": ev.store_nbr, "item_nbr": ev.item_nbr, "unit_sales": total}
                try:
                    self.agent.serving.report_sales({"sales": [row]}, transport="serial")
                except RequestError as exc:
                    self.metrics.sale_events.labels("serial", "invalid").inc()
                    details = [{**d, "field": str(d["field"]).replace("sales[0]", f"events[{i}]")} for d in exc.details]
                    results.append({"seq": ev.seq, "outcome": "invalid", "details": details})
                    continue
                self.ledger.commit(key, ev.store_nbr, ev.item_nbr, day, total)
                self.metrics.sale_events.labels("serial", "accepted").inc()
                results.append({"seq": ev.seq, "outcome": "accepted", "total": total})
        return {"results": results}

    def sensors(self, body: Any) -> dict[str, Any]:
        try:
            batch = SensorReadings.model_validate(body)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        telemetry = getattr(self.agent, "telemetry", None)
        for r in batch.readings:
            self.metrics.sensor_readings.labels("serial", r.kind).inc()
            self.metrics.sensor_value.labels(batch.device_id, str(r.sensor_id), r.kind, r.unit).set(r.value)
            if telemetry is not None:
                telemetry.event("sensor_reading", {"device": batch.device_id, **r.model_dump(mode="json")})
        return {"accepted": len(batch.readings)}

    # -- HTTP -------------------------------------------------------------------------------
    async def _json(self, request: Request) -> Any:
        from edge.serving.http import read_body

        raw = await read_body(request, self.agent.config.max_body_bytes)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RequestError([detail("body", "json", f"is not valid JSON: {exc}")], status=400) from None

    async def _handle(self, request: Request, fn: Any) -> Response:
        from edge.serving.errors import Unavailable

        try:
            body = await self._json(request)
            return JSONResponse(await asyncio.to_thread(fn, body))  # SQLite fsync: off the event loop
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        except Unavailable as exc:
            return JSONResponse({"error": {"code": "no_model", "message": str(exc)}}, status_code=503,
                                headers={"Retry-After": "5"})  # fmt: skip
        except Exception:
            logger.exception("device input failed")
            return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)

    async def http_sale_events(self, request: Request) -> Response:
        return await self._handle(request, self.sale_events)

    async def http_sensors(self, request: Request) -> Response:
        return await self._handle(request, self.sensors)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/sales/events", self.http_sale_events, methods=["POST"]),
            Route("/v1/sensors", self.http_sensors, methods=["POST"]),
        ]

    def close(self) -> None:
        self.ledger.close()


def ingest_routes(agent: Any) -> list[BaseRoute]:
    """``POST /v1/sales/events`` and ``POST /v1/sensors`` for ``agent`` (kept as ``agent.ingest``)."""
    ingest = getattr(agent, "ingest", None)
    if ingest is None:
        ingest = agent.ingest = Ingest(agent)
    return ingest.routes()

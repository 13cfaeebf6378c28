"""Payloads of the agent's serving surfaces beyond predict: sales reports, MQTT responses,
telemetry and commands. Declared once, versioned, shared by the agent and whoever talks to it.

Prediction requests are :class:`models.contract.PredictRequest`; over MQTT (3.1.1) the correlation
id and an optional expiry travel in the payload::

    edgeship/<fleet>/<device>/request/predict   {"correlation_id": "r1", "instances": [...],
                                                 "expires_at": "2017-08-16T10:00:00Z"}
    edgeship/<fleet>/<device>/response/predict  PredictResponse | ErrorResponse (same correlation_id)
    edgeship/<fleet>/<device>/request/sales     SalesReport  →  response/sales: SalesAck | ErrorResponse

>>> SalesReport.model_validate({"sales": [{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520,
...                                        "unit_sales": 3}]}).sales[0].unit_sales
3.0
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, Strict

from models.contract import IsoDate
from models.envelope import Signed
from models.messages import ActiveModel, Identifier, utcnow

__all__ = [
    "SalesRow",
    "SalesReport",
    "PredictResponse",
    "ErrorBody",
    "ErrorResponse",
    "SalesAck",
    "TelemetryRecord",
    "CandidateCommand",
    "SalesActuals",
    "MAX_SALES_ROWS",
    "FallbackLevel",
    "ACTUALS_EVENT",
    "ACTUALS_CHUNK_ROWS",
]

#: Most rows one sales report may carry (413 beyond).
MAX_SALES_ROWS = 10_000
#: Event kind (on ``<device>/events``) carrying the sales rows a device accepted to the cloud.
ACTUALS_EVENT = "sales"
#: Most rows one actuals event carries (a report is split into several events).
ACTUALS_CHUNK_ROWS = 500

_Id = Annotated[int, Strict(), Field(gt=0, lt=2**31)]
_Sales = Annotated[float, Strict(), Field(ge=-1e9, le=1e9, allow_inf_nan=False)]
_CorrelationId = Annotated[str, Field(max_length=128)]
#: Cold-start levels (models.coldstart.LEVELS), most specific first.
FallbackLevel = Literal["item", "family_store", "family_store_type", "global"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SalesRow(_Message):
    """A store×item's total unit sales on one day (negative = returns, counted as zero sales).

    Re-sending a day replaces its value (idempotent: MQTT QoS 1 may deliver twice)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: IsoDate = Field(description="Day of the sales, YYYY-MM-DD.")
    store_nbr: _Id = Field(description="Store number, as in stores.csv.")
    item_nbr: _Id = Field(description="Item number, as in items.csv.")
    unit_sales: _Sales = Field(description="The day's total unit sales of the item in the store.")


class SalesReport(_Message):
    """Body of ``POST /v1/sales`` and of an MQTT ``request/sales`` message."""

    sales: list[SalesRow] = Field(min_length=1, description="Rows of actual sales, at least one.")
    correlation_id: _CorrelationId | None = Field(default=None, description="Echoed in the response.")


class PredictResponse(_Message):
    """``response/predict`` for a request that was answered."""

    schema_version: Literal[1] = 1
    correlation_id: _CorrelationId | None = None
    predictions: list[float] = Field(description="Unit sales per request row, in order.")
    fallback: list[FallbackLevel | None] | None = Field(
        default=None,
        description="Present when a row's store×item has no sales history: per row, the cold-start level its "
        "forecast came from (item, family_store, family_store_type, global; null = the pair's own history).",
    )
    model: ActiveModel = Field(description="The model that answered.")


class ErrorBody(_Message):
    code: str = Field(description="invalid_request, no_model, expired, inference_failed, internal.")
    message: str
    details: list[dict[str, str]] = Field(default_factory=list, description="{field, rule, message} per problem.")


class ErrorResponse(_Message):
    """The HTTP error body (``{"error": {...}}``) plus the status HTTP would have answered."""

    schema_version: Literal[1] = 1
    correlation_id: _CorrelationId | None = None
    status: int = Field(ge=400, le=599)
    error: ErrorBody


class SalesAck(_Message):
    """``response/sales`` (and the HTTP 200 body): what the lag state now covers."""

    schema_version: Literal[1] = 1
    correlation_id: _CorrelationId | None = None
    accepted: int = Field(ge=0, description="Rows applied.")
    end_date: str = Field(description="Last day of sales the agent now knows (its lag windows' end).")
    pairs: int = Field(ge=0, description="Store×item pairs with a lag window.")


class TelemetryRecord(_Message):
    """One periodic telemetry message on ``<device>/telemetry``; ``seq`` is shared with events."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    seq: int = Field(ge=1, description="Per-device sequence number (telemetry and events together).")
    at: AwareDatetime = Field(default_factory=utcnow)
    data: dict[str, Any] = Field(default_factory=dict, description="Counters and gauges at `at`.")


class CandidateCommand(_Message):
    """``{"command": "candidate", ...}`` on ``<device>/set``: run an installed version beside the live one."""

    command: Literal["candidate"]
    version: int | None = Field(default=None, ge=1, description="Installed version to load; None = unload.")
    mode: Literal["shadow", "ab"] = Field(default="shadow", description="shadow: answers not returned; ab: a share.")
    share: float = Field(default=1.0, ge=0.0, le=1.0, description="ab: share of traffic; shadow: share mirrored.")
    correlation_id: _CorrelationId | None = None
    signed: Signed | None = Field(
        default=None, description="The signed order (models.targets.CandidateOrder); the device acts on it alone "
        "and refuses a command without one."
    )


class SalesActuals(_Message):
    """``detail`` of a ``DeviceEvent`` of kind :data:`ACTUALS_EVENT`: sales rows the device accepted.

    Sent through the device's sequenced, spooled telemetry (:meth:`edge.monitoring.telemetry.Telemetry.actuals`)
    so none is lost offline; the fleet ingest appends them to its actuals store
    (:mod:`cloud.fleet.actuals`), from which ``edgeship retrain --from-fleet`` builds the next dataset.

    >>> SalesActuals.model_validate({"sales": [{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 7,
    ...                                         "unit_sales": 2.0}]}).sales[0].item_nbr
    7
    """

    sales: list[SalesRow] = Field(min_length=1, max_length=ACTUALS_CHUNK_ROWS, description="Accepted rows.")
    transport: str | None = Field(default=None, max_length=16, description="How the shop reported them (http, mqtt, serial).")

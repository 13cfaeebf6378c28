"""Staff feedback on a forecast: what the shop floor says, as the agent takes it and the cloud reads it.

A validator looks at a forecast in the validation app (:mod:`edge.validate_app`), marks it right or
wrong, and may enter the actual units and a comment. The app posts a :class:`FeedbackIn` to the
agent (``POST /v1/feedback``); the agent stores a :class:`FeedbackRecord` (SQLite, WAL) and sends it
on ``<prefix>/<fleet>/<device>/feedback`` with a per-device ``seq`` (store-and-forward, as telemetry)::

    >>> FeedbackIn.model_validate({"validator": "ana", "verdict": "wrong", "actual_units": 7,
    ...     "request": {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520},
    ...     "forecast": 4.2, "model": {"name": "m", "version": 1, "digest": "ab" * 32,
    ...     "variant": "tflite-fp32", "runtime": "litert"}}).actual_units
    7.0
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from models.contract import RequestRow
from models.messages import ActiveModel, Identifier, utcnow

__all__ = ["FeedbackIn", "FeedbackRecord", "FeedbackAck"]

_Text = Annotated[str, StringConstraints(max_length=2000)]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]


class FeedbackIn(BaseModel):
    """Body of ``POST /v1/feedback``: one validator's verdict on one forecast row."""

    model_config = ConfigDict(extra="forbid")

    validator: _Name = Field(description="Who validated (staff name or id).")
    verdict: Literal["right", "wrong"] = Field(description="Whether the forecast looked right.")
    actual_units: float | None = Field(
        default=None, ge=0, le=1e7, allow_inf_nan=False, description="Actual unit sales of that day, if known."
    )
    comment: _Text = Field(default="", description="Free text.")
    request: RequestRow = Field(description="The forecast's request row (date, store_nbr, item_nbr, onpromotion).")
    forecast: float = Field(ge=0, allow_inf_nan=False, description="The forecast shown, in units.")
    model: ActiveModel = Field(description="The model that answered (name, version, digest, variant, runtime).")


class FeedbackRecord(FeedbackIn):
    """What the device stores and sends: the feedback plus site, id, time and sequence number."""

    schema_version: Literal[1] = 1
    id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(description="Random id (dedup key).")
    device_id: Identifier = Field(description="The site: the device that served the forecast.")
    seq: int | None = Field(default=None, ge=1, description="Per-device feedback sequence number once spooled.")
    at: dt.datetime = Field(default_factory=utcnow, description="When the feedback was given (UTC).")


class FeedbackAck(BaseModel):
    """The answer to ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    stored: bool = True
    lag_state: str = Field(description="'updated', 'not_applicable' (no actuals) or the sales path's refusal.")

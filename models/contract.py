"""The feature contract: what a prediction request carries and what the model is fed.

A shop's software knows the date, the store, the item and whether the item is on promotion;
everything else the model needs (item family, store cluster, holidays, recent sales) comes from
tables shipped inside the bundle. The contract is versioned: a bundle names the contract version it
was trained against and an agent refuses a bundle whose contract it does not speak.

>>> from models.contract import RequestRow
>>> RequestRow.model_validate({"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520})
RequestRow(date=datetime.date(2017, 8, 16), store_nbr=1, item_nbr=103520, onpromotion=False)
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

__all__ = [
    "CONTRACT_VERSION",
    "CAT_FEATURES",
    "NUM_FEATURES",
    "LAG_WINDOW_DAYS",
    "RequestRow",
    "PredictRequest",
]

#: Bumped whenever the meaning, order or number of features changes.
CONTRACT_VERSION = 2

#: Days of per store×item sales history the lag features look at (the state window).
LAG_WINDOW_DAYS = 56

#: Integer (embedding) inputs, in column order of the ``cat`` tensor. 0 means "unknown".
CAT_FEATURES: tuple[str, ...] = (
    "store",  # index of store_nbr in the store table
    "item",  # index of item_nbr in the item table
    "family",  # item family
    "item_class",  # item class
    "store_type",  # store type A-E
    "cluster",  # store cluster
    "city",  # store city
    "dow",  # day of week, Monday = 0 (stored +1 so 0 stays "unknown")
)

#: Float inputs, in column order of the ``num`` tensor. Lags are in log1p(unit_sales) space.
NUM_FEATURES: tuple[str, ...] = (
    "onpromotion",
    "perishable",
    "payday",  # the 15th or the last day of the month
    "day_of_month",  # day / 31
    "holiday_national",
    "holiday_regional",
    "holiday_local",
    "workday",  # a weekend day made a work day
    "lag_mean_7",
    "lag_mean_28",
    "lag_zero_frac_28",
    "lag_dow_mean_8",  # mean of the same weekday over the last 8 weeks
    # contract v2: more window statistics (the per-pair trends, stock-outs and level shifts of real shops)
    "lag_mean_3",
    "lag_mean_14",
    "lag_mean_56",
    "lag_std_28",
    "lag_dow_mean_4",  # mean of the same weekday over the last 4 weeks
    "lag_last",  # the window's last day
    "lag_days_since_sale",  # days since the last day with sales / 56 (1 when none in the window)
    "lag_slope_56",  # least-squares slope of the window, per 28 days
    "lag_mean_nonzero_28",  # mean over the days with sales in the last 28 (the level, stock-outs aside)
    "horizon",  # days between the window's end and the target day / 16
)

_Id = Annotated[StrictInt, Field(gt=0, lt=2**31)]
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_date(value: object) -> object:
    """Accept only ``YYYY-MM-DD`` strings (or dates): no timestamps, no datetimes, no numbers."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("must be a date string in YYYY-MM-DD format")
    return value


IsoDate = Annotated[dt.date, BeforeValidator(_iso_date)]


class RequestRow(BaseModel):
    """One row of a prediction request, as a shop's software knows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    date: IsoDate = Field(description="Day the prediction is for, ISO format YYYY-MM-DD.")
    store_nbr: _Id = Field(description="Store number, as in stores.csv.")
    item_nbr: _Id = Field(description="Item number, as in items.csv.")
    onpromotion: StrictBool = Field(default=False, description="Whether the item is on promotion that day.")


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict`` and of an MQTT ``request/predict`` message."""

    model_config = ConfigDict(extra="forbid")

    instances: list[RequestRow] = Field(min_length=1, description="Rows to predict, at least one.")
    correlation_id: str | None = Field(
        default=None, max_length=128, description="Echoed in the response (MQTT request/response)."
    )

"""Actual units from feedback as labelled training rows (``edgeship train --feedback DIR``).

Rules (also in the README):

- only records with ``actual_units`` count; each becomes one ``train.csv``-shaped row
  ``(date, store_nbr, item_nbr, unit_sales=actual_units, onpromotion)``;
- several records for the same store×item×day: the latest (by ``at``) wins (the others count as
  ``superseded``);
- a record for a store the training data does not have (not in ``train.csv``, or left out with
  ``--stores``) or an item not in ``items.csv`` is dropped (``dropped_unknown``);
- a day ``train.csv`` already has for that store×item: ``train.csv`` wins (it is the shop's
  till record; feedback only fills days the data does not have yet);
- an added row weighs exactly like a ``train.csv`` row (weight 1, 1.25 if the item is perishable,
  as the NWRMSLE loss weights every row): the rows are merged before cleaning, so nothing downstream
  can tell them apart (``weighting: "as a train.csv row"`` in the lineage);
- the lineage in the manifest names the feedback set's content hash
  (:meth:`cloud.feedback.store.FeedbackSet.content_hash`) and the counts, under
  ``lineage.dataset_source.feedback``.

>>> # train, info = merge_feedback(loaded.train, "feedback/")
>>> # info == {"sha256": "…", "records": 12, "with_actuals": 9, "superseded": 1, "dropped_unknown": 0,
>>> #         "rows_added": 6, "dropped_duplicates": 2, "weighting": "as a train.csv row"}
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from cloud.feedback.store import FeedbackSet

__all__ = ["merge_feedback", "feedback_rows"]

_KEY = ["date", "store_nbr", "item_nbr"]


def feedback_rows(folder: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The feedback set's actuals as rows (latest per store×item×day) and its lineage entry."""
    store = FeedbackSet(folder)
    records = store.records()
    with_actuals = [r for r in records if r.actual_units is not None]
    rows = pd.DataFrame(
        {
            "date": pd.to_datetime([r.request.date.isoformat() for r in with_actuals]),
            "store_nbr": [r.request.store_nbr for r in with_actuals],
            "item_nbr": [r.request.item_nbr for r in with_actuals],
            "unit_sales": [float(r.actual_units) for r in with_actuals],  # type: ignore[arg-type]
            "onpromotion": [r.request.onpromotion for r in with_actuals],
            "_at": [r.at for r in with_actuals],
        }
    )
    # stable sort: records with the same time keep their arrival order, and the last one wins
    rows = rows.sort_values("_at", kind="stable").drop_duplicates(_KEY, keep="last").drop(columns="_at").reset_index(drop=True)
    info = {"sha256": store.content_hash(), "records": len(records), "with_actuals": len(with_actuals),
            "superseded": len(with_actuals) - len(rows)}  # fmt: skip
    return rows, info


def merge_feedback(
    train: pd.DataFrame, folder: str | os.PathLike[str], *, items: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``train`` plus the feedback rows for days it does not have; dtypes of ``train`` kept.

    ``items``: the items table (``items.csv``); feedback on other items is dropped. Feedback on a
    store ``train`` has no rows for is dropped too."""
    rows, info = feedback_rows(folder)
    known = rows["store_nbr"].isin(train["store_nbr"].unique())
    known &= rows["item_nbr"].isin((items if items is not None else train)["item_nbr"].unique())
    info["dropped_unknown"] = int((~known).sum())
    rows = rows[known].reset_index(drop=True)
    if len(rows):
        have = pd.MultiIndex.from_frame(train[_KEY].astype({"date": "datetime64[ns]"}))
        mine = pd.MultiIndex.from_frame(rows[_KEY].astype({"date": "datetime64[ns]"}))
        keep = ~mine.isin(have)
        dropped = int((~keep).sum())
        rows = rows[keep]
    else:
        dropped = 0
    info.update(rows_added=len(rows), dropped_duplicates=dropped, weighting="as a train.csv row")
    if not len(rows):
        return train, info
    cols = [c for c in train.columns if c in rows.columns]
    extra = rows[cols].copy()
    for c in cols:
        try:
            extra[c] = extra[c].astype(train[c].dtype)
        except (TypeError, ValueError):
            pass
    merged = pd.concat([train, extra], ignore_index=True).sort_values(_KEY, kind="stable").reset_index(drop=True)
    return merged, info

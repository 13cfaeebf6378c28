"""Cloud side of feedback: dedup by id, content hash, the training rows' rules, the report."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from cloud.feedback.report import report
from cloud.feedback.store import FeedbackSet
from cloud.feedback.training import merge_feedback
from models.feedback import FeedbackRecord

MODEL = {"name": "m", "version": 1, "digest": "ab" * 32, "variant": "tflite-fp32", "runtime": "litert"}


def rec(n: int, day: str, item: int, actual: float | None, verdict: str = "wrong", minute: int = 0) -> FeedbackRecord:
    return FeedbackRecord(
        id=f"{n:032x}", device_id="store-1", seq=n, validator="ana", verdict=verdict, actual_units=actual,
        request={"date": day, "store_nbr": 1, "item_nbr": item}, forecast=4.0, model=MODEL,
        at=dt.datetime(2017, 8, 20, 12, minute, tzinfo=dt.timezone.utc),
    )  # fmt: skip


def test_store_dedups_and_hashes(tmp_path):
    s = FeedbackSet(tmp_path)
    assert s.add(rec(1, "2017-08-16", 103520, 7)) and not s.add(rec(1, "2017-08-16", 103520, 7))
    h = s.content_hash()
    with open(s.path, "ab") as fh:  # a torn line from a crash is cut off before the next append
        fh.write(b'{"id": "tor')
    assert s.add(rec(2, "2017-08-17", 103520, None))
    again = FeedbackSet(tmp_path)
    assert [r.id for r in again.records()] == [f"{1:032x}", f"{2:032x}"] and len(again) == 2
    assert again.content_hash() != h


def test_training_rows_latest_wins_and_train_csv_wins(tmp_path):
    s = FeedbackSet(tmp_path)
    s.add(rec(1, "2017-08-16", 103520, 7, minute=1))
    s.add(rec(2, "2017-08-16", 103520, 9, minute=2))  # later: wins over record 1
    s.add(rec(3, "2017-08-15", 103520, 1))  # train.csv has this day: dropped
    s.add(rec(4, "2017-08-16", 105574, None))  # no actuals: not a row
    train = pd.DataFrame({"date": pd.to_datetime(["2017-08-15"]), "store_nbr": [1], "item_nbr": [103520],
                          "unit_sales": [3.0], "onpromotion": [False]})  # fmt: skip
    merged, info = merge_feedback(train, tmp_path)
    assert info["rows_added"] == 1 and info["dropped_duplicates"] == 1 and info["with_actuals"] == 3
    assert info["superseded"] == 1 and info["dropped_unknown"] == 0
    assert info["sha256"] == s.content_hash()
    assert merged["unit_sales"].tolist() == [3.0, 9.0] and merged.dtypes.equals(train.dtypes)


def test_report_per_site_and_version():
    rows = report([rec(1, "2017-08-16", 103520, 7), rec(2, "2017-08-17", 105574, 4.0, "right"), rec(3, "2017-08-17", 1, None)])
    (g,) = rows
    assert (g["count"], g["agreement"], g["with_actuals"]) == (3, round(1 / 3, 4), 2)
    assert g["worst_items"][0]["item_nbr"] == 103520 and g["nwrmsle"] > 0


def test_training_rows_drop_unknown_stores_and_items(tmp_path):
    s = FeedbackSet(tmp_path)
    s.add(rec(1, "2017-08-16", 103520, 7))
    s.add(rec(2, "2017-08-16", 999, 5))  # not in items.csv
    other = rec(3, "2017-08-16", 103520, 2).model_copy(update={"request": rec(3, "2017-08-16", 103520, 2).request.model_copy(update={"store_nbr": 54})})
    s.add(other)  # a store the training data has no rows for (--stores left it out)
    train = pd.DataFrame({"date": pd.to_datetime(["2017-08-15"]), "store_nbr": [1], "item_nbr": [103520],
                          "unit_sales": [3.0], "onpromotion": [False]})  # fmt: skip
    items = pd.DataFrame({"item_nbr": [103520, 105574]})
    merged, info = merge_feedback(train, tmp_path, items=items)
    assert info["dropped_unknown"] == 2 and info["rows_added"] == 1
    assert merged[["store_nbr", "item_nbr"]].values.tolist() == [[1, 103520], [1, 103520]]

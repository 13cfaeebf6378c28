"""Baselines the model must beat, evaluated on the same time-based split.

* ``baseline-rf`` — the CD4ML workshop's pipeline: a random forest (``n_estimators=10``) over the raw
  columns (date parts, store, item, promotion, item family, class, perishable), learning raw
  ``unit_sales``.
* ``baseline-ma-dow`` — the classic Favorita moving average: the mean of log1p sales over the last
  ``ma_days`` days before the validation split, adjusted by that weekday's deviation over 8 weeks.
  It forecasts the whole validation window from history before it, as a shop would.
* ``baseline-mean14`` — the mean of log1p sales over the 14 days before the validation split.
* ``baseline-lightgbm`` — gradient-boosted trees (the Favorita winners' model) on the model's own
  features, learning log1p sales; the number of rounds is chosen by early stopping on the last
  days of the *training* period, then refit on all of it (the validation split never chooses).
  When it forecasts better than the Keras model, the trainer ships it as ``onnx-lightgbm``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cloud.training.caps import Caps
from cloud.training.prepare import Prepared, Split
from models.contract import LAG_WINDOW_DAYS
from models.features import Encoded

__all__ = ["rf_features", "random_forest", "moving_average_dow", "mean14", "lightgbm", "lgb_x"]

logger = logging.getLogger(__name__)


def rf_features(prep: Prepared, split: Split) -> np.ndarray:
    """The workshop's raw columns for the rows of ``split``."""
    m, t = prep.matrix, prep.tables
    dates = m.dates[split.day]
    years = dates.astype("M8[Y]").astype(np.int64) + 1970
    months = dates.astype("M8[M]").astype(np.int64) % 12 + 1
    days = (dates - dates.astype("M8[M]").astype("M8[D]")).astype(np.int64) + 1
    dow = (dates.astype(np.int64) + 3) % 7
    item_row = np.maximum(t.item_index(m.item_nbr[split.pair]), 0)
    return np.column_stack(
        [
            m.store_nbr[split.pair],
            m.item_nbr[split.pair],
            m.promo[split.pair, split.day],
            years,
            months,
            days,
            dow,
            t.family[item_row],
            np.array(t.vocab["item_class"], dtype=np.int64)[np.maximum(t.item_class[item_row] - 1, 0)],
            t.perishable[item_row],
        ]
    ).astype(np.float32)


def random_forest(
    prep: Prepared, *, n_estimators: int, seed: int, max_rows: int = 2_000_000, caps: Caps | None = None, threads: int = 2
) -> np.ndarray:
    """Fit the workshop's random forest on the training split (at most ``max_rows`` rows, a random
    sample); predict units on the validation split."""
    from sklearn.ensemble import RandomForestRegressor

    x_train, y_train = rf_features(prep, prep.train), prep.train.sales
    pick = (caps or Caps()).sample("baseline-rf", len(y_train), limit=max_rows, seed=seed)
    if pick is not None:
        x_train, y_train = x_train[pick], y_train[pick]
    model = RandomForestRegressor(n_estimators=n_estimators, n_jobs=threads, random_state=seed)
    model.fit(x_train, y_train)
    return np.maximum(model.predict(rf_features(prep, prep.valid)), 0.0)


def moving_average_dow(prep: Prepared, *, ma_days: int) -> np.ndarray:
    """Forecast the validation split in log1p space from the days before it."""
    m, valid = prep.matrix, prep.valid
    cut = int(valid.day.min())  # first validation day; history is [.., cut)
    hist = m.log_sales[:, cut - LAG_WINDOW_DAYS : cut].astype(np.float64)
    ma = hist[:, -ma_days:].mean(axis=1)
    overall = hist.mean(axis=1)
    hist_dow = (m.dates[cut - LAG_WINDOW_DAYS : cut].astype(np.int64) + 3) % 7
    dow_mean = np.stack([hist[:, hist_dow == d].mean(axis=1) for d in range(7)], axis=1)
    target_dow = (m.dates[valid.day].astype(np.int64) + 3) % 7
    pred = ma[valid.pair] + dow_mean[valid.pair, target_dow] - overall[valid.pair]
    return np.maximum(pred, 0.0).astype(np.float32)


def mean14(prep: Prepared, days: int = 14) -> np.ndarray:
    """The mean of log1p sales over the ``days`` days before the validation split, for every validation row."""
    m, valid = prep.matrix, prep.valid
    cut = int(valid.day.min())
    return m.log_sales[:, cut - days : cut].astype(np.float64).mean(axis=1)[valid.pair].astype(np.float32)


def lgb_x(x: Encoded) -> np.ndarray:
    """LightGBM's input: the id columns as floats (categorical features), then the numeric ones."""
    return np.concatenate([x.cat.astype(np.float32), x.num], axis=1)


def lightgbm(
    prep: Prepared, *, seed: int, max_rounds: int = 600, threads: int = 2, max_rows: int = 1_000_000, caps: Caps | None = None
) -> tuple[np.ndarray, dict[str, float], Any]:
    """Fit LightGBM on the training split, or a random sample of ``max_rows`` of its rows (rounds by
    early stopping on its last 14 days); predict validation (log1p, clipped at 0). Returns the
    predictions, ``{"rounds": n}`` and the booster."""
    import lightgbm as lgb

    train = prep.train
    pick = (caps or Caps()).sample("baseline-lightgbm", len(train), limit=max_rows, seed=seed)
    rows = slice(None) if pick is None else pick
    x, y, day, perishable = (
        lgb_x(Encoded(train.x.cat[rows], train.x.num[rows])),
        train.y[rows],
        train.day[rows],
        train.perishable[rows],
    )
    last = day.max()
    inner = day <= last - 14
    params = {
        "objective": "regression",
        "learning_rate": 0.05,
        "num_leaves": 63,
        "min_data_in_leaf": 50,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": seed,
        "num_threads": threads,
        "verbose": -1,
    }
    cats = list(range(train.x.cat.shape[1]))
    w = np.where(perishable, 1.25, 1.0)
    dtr = lgb.Dataset(x[inner], y[inner], weight=w[inner], categorical_feature=cats, free_raw_data=False)
    dva = lgb.Dataset(x[~inner], y[~inner], weight=w[~inner], categorical_feature=cats, reference=dtr)
    probe = lgb.train(params, dtr, max_rounds, valid_sets=[dva], callbacks=[lgb.early_stopping(30, verbose=False)])
    rounds = max(1, int(probe.best_iteration or max_rounds))
    model = lgb.train(params, lgb.Dataset(x, y, weight=w, categorical_feature=cats), rounds)
    pred = np.maximum(model.predict(lgb_x(prep.valid.x)), 0.0).astype(np.float32)
    return pred, {"rounds": rounds}, model

"""From cleaned Favorita rows to the model's training and validation arrays.

The daily grid (every store×item pair × every day, missing days = zero sales) becomes a matrix of
log1p sales. Each row is encoded with :func:`models.features.encode`, the same function the agent
calls, from a lag window that ends ``offset`` days before the row's date:

* validation rows use windows ending the day before the validation split starts (offsets 1…N), which
  is exactly what an agent does when it predicts the days after the last sales it knows;
* training rows cycle through the same offsets, so the model learns to forecast 1…N days ahead;
* cold start: a pair that sold nothing before the validation split is one a trainer at the split would
  not know. Its training rows are dropped, and its validation rows are encoded, as the agent serves
  such a pair, from the cold-start fallback window (:mod:`models.coldstart`) of the pairs that did sell,
  scaled per level as :func:`calibrate_fallback` learnt from the training period alone.

The split is by time, like the lecture's splitter: the last ``validation_days`` days validate.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd

from models.contract import LAG_WINDOW_DAYS
from models.coldstart import LEVELS, Fallback
from models.features import Encoded, SalesState, Tables, encode, target_transform

__all__ = [
    "SalesMatrix",
    "Split",
    "Prepared",
    "sales_matrix",
    "build_tables",
    "prepare",
    "encode_at",
    "impute_promo",
    "calibrate_fallback",
]


def impute_promo(promo: np.ndarray, sold: np.ndarray, item_nbr: np.ndarray, unknown_days: np.ndarray | None = None) -> np.ndarray:
    """Promotion flags for the days a pair sold nothing, as far as the data allows.

    ``train.csv`` has rows (and flags) only for days with sales, so the daily grid says "not on
    promotion" exactly where nothing sold: on promotion would nearly imply sold — a leak a shop's
    request (which carries the true flag for every row) does not have. Promotions are campaigns of
    the item across stores, so a pair without a row takes the flag most stores that sold the item
    that day had (False when none sold it). Days in ``unknown_days`` (flags empty in the file) are
    0.5, a third state, for every pair.

    >>> import numpy as np
    >>> promo = np.array([[1, 0], [1, 0], [0, 0]], np.float32)   # 3 pairs of one item, 2 days
    >>> sold = np.array([[1, 1], [1, 0], [0, 0]], bool)
    >>> impute_promo(promo, sold, np.array([7, 7, 7])).tolist()
    [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    """
    codes = np.unique(item_nbr, return_inverse=True)[1]
    n_items = int(codes.max()) + 1 if len(codes) else 0
    on = np.zeros((n_items, promo.shape[1]))
    seen = np.zeros((n_items, promo.shape[1]))
    np.add.at(on, codes, (promo > 0.5) & sold)
    np.add.at(seen, codes, sold)
    share = np.divide(on, seen, out=np.zeros_like(on), where=seen > 0)
    out = np.where(sold, promo, (share[codes] >= 0.5).astype(np.float32)).astype(np.float32)
    if unknown_days is not None and len(unknown_days):
        out[:, unknown_days] = 0.5
    return out

logger = logging.getLogger(__name__)
_CHUNK = 65_536


@dataclasses.dataclass(frozen=True)
class SalesMatrix:
    """Daily sales of every pair: ``log_sales[p, d]`` = log1p(max(sales, 0)) of pair p on ``dates[d]``."""

    store_nbr: np.ndarray  # int64 [P], sorted by (store, item)
    item_nbr: np.ndarray  # int64 [P]
    dates: np.ndarray  # M8[D] [D], consecutive days
    log_sales: np.ndarray  # float32 [P, D]
    sales: np.ndarray  # float64 [P, D], cleaned units (returns counted as 0)
    promo: np.ndarray  # float32 [P, D]: 1 on promotion, 0 not, 0.5 unknown (see impute_promo)

    def state(self, end: int | None = None) -> SalesState:
        """The lag windows of every pair as of day index ``end`` (default: the last day)."""
        end = len(self.dates) - 1 if end is None else end
        if end + 1 < LAG_WINDOW_DAYS:
            raise ValueError(f"need {LAG_WINDOW_DAYS} days of history, have {end + 1}")
        window = np.ascontiguousarray(self.log_sales[:, end + 1 - LAG_WINDOW_DAYS : end + 1])
        return SalesState(self.store_nbr.copy(), self.item_nbr.copy(), window, self.dates[end])


def sales_matrix(grid: pd.DataFrame) -> SalesMatrix:
    """Reshape a dense daily grid sorted by (store_nbr, item_nbr, date) into a :class:`SalesMatrix`."""
    dates = np.unique(grid["date"].to_numpy().astype("M8[D]"))
    n_days = len(dates)
    if n_days == 0 or len(grid) % n_days:
        raise ValueError("the daily grid must hold every pair on every day")
    if np.any(np.diff(dates).astype(np.int64) != 1):
        raise ValueError("the daily grid must cover consecutive days")
    n_pairs = len(grid) // n_days
    stores = grid["store_nbr"].to_numpy(np.int64).reshape(n_pairs, n_days)
    items = grid["item_nbr"].to_numpy(np.int64).reshape(n_pairs, n_days)
    sales = np.maximum(grid["unit_sales"].to_numpy(np.float64), 0.0).reshape(n_pairs, n_days)
    promo = grid["onpromotion"].fillna(False).to_numpy(bool).reshape(n_pairs, n_days).astype(np.float32)
    return SalesMatrix(
        store_nbr=stores[:, 0].copy(),
        item_nbr=items[:, 0].copy(),
        dates=dates,
        log_sales=target_transform(sales).reshape(n_pairs, n_days),
        sales=sales,
        promo=promo,
    )


def build_tables(stores: pd.DataFrame, items: pd.DataFrame, holidays: pd.DataFrame) -> Tables:
    """Lookup tables for the bundle: every store and every item of the catalogue (items without sales
    are served from the cold-start fallback), every holiday."""
    hol = holidays.copy()
    hol["date"] = pd.to_datetime(hol["date"]).dt.strftime("%Y-%m-%d")
    return Tables.from_records(
        stores=stores.to_dict("records"), items=items.to_dict("records"), holidays=hol.to_dict("records")
    )


def encode_at(
    tables: Tables,
    m: SalesMatrix,
    pair: np.ndarray,
    day: np.ndarray,
    window_end: np.ndarray,
    cold_windows: np.ndarray | None = None,
) -> Encoded:
    """Encode rows (pair index, day index) with lag windows ending on day index ``window_end``.

    ``cold_windows`` [P, 56] (NaN rows = none) replaces the windows of cold-start pairs."""
    cats, nums = [], []
    offsets = np.arange(LAG_WINDOW_DAYS) - (LAG_WINDOW_DAYS - 1)
    for lo in range(0, len(pair), _CHUNK):
        p, d, e = pair[lo : lo + _CHUNK], day[lo : lo + _CHUNK], window_end[lo : lo + _CHUNK]
        windows = m.log_sales[p[:, None], e[:, None] + offsets[None, :]]
        if cold_windows is not None:
            swap = ~np.isnan(cold_windows[p, 0])
            windows[swap] = cold_windows[p[swap]]
        enc = encode(
            tables,
            dates=m.dates[d],
            store_nbr=m.store_nbr[p],
            item_nbr=m.item_nbr[p],
            onpromotion=m.promo[p, d],
            windows=windows,
            window_end=m.dates[e],
        )
        cats.append(enc.cat)
        nums.append(enc.num)
    return Encoded(cat=np.concatenate(cats), num=np.concatenate(nums))


@dataclasses.dataclass(frozen=True)
class Split:
    """Encoded rows of one split with their targets and what the baselines need."""

    x: Encoded
    y: np.ndarray  # float32 log1p target
    sales: np.ndarray  # float64 units (cleaned)
    perishable: np.ndarray  # bool
    pair: np.ndarray  # pair index into the matrix
    day: np.ndarray  # day index into the matrix
    fallback: np.ndarray | None = None  # per row: cold-start level of its window, "" = own history

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class Prepared:
    matrix: SalesMatrix
    tables: Tables
    train: Split
    valid: Split
    train_window: tuple[str, str]
    valid_window: tuple[str, str]
    #: per cold-start level (models.coldstart.LEVELS): the factor its fallback window is served with
    fallback_scale: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(len(LEVELS), np.float32))
    #: how the factors were learnt (cuts, rows per level), for report.json
    fallback_calibration: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": int(len(self.matrix.store_nbr)),
            "train_rows": len(self.train),
            "valid_rows": len(self.valid),
            "train_window": self.train_window,
            "valid_window": self.valid_window,
        }


def calibrate_fallback(
    tables: Tables, m: SalesMatrix, *, first_cut: int, last_cut: int, horizon: int, every: int = 7, min_rows: int = 20
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per cold-start level, the factor that turns a group's mean window into what a pair without
    history goes on to sell, learnt from the matrix's own past.

    At every ``every``-th day index ``c`` in [``first_cut``, ``last_cut``] (each needs a full lag window
    before it and ``horizon`` days after it), the pairs that had not sold since the matrix's first
    day are cold; each gets its fallback window from the pairs that had, as the agent would serve it.
    A level's factor is the mean log1p sales of its cold pairs over the ``horizon`` days after the cut,
    over the mean of the last 14 days of their fallback windows. A group's window describes its
    established pairs; a pair with no sales in months is mostly a rarely sold one or an item not yet
    launched, so the factor is usually well below 1 (the cold-start slice of report.json measures how
    well it works on the validation days). A level with fewer
    than ``min_rows`` cold pairs in all cuts takes the factor of all levels pooled (1.0 when there is
    no evidence at all). Factors are clipped to [0, 2].
    """
    num = np.zeros(len(LEVELS))
    den = np.zeros(len(LEVELS))
    rows = np.zeros(len(LEVELS), np.int64)
    cuts = [c for c in range(last_cut, first_cut - 1, -every) if c >= LAG_WINDOW_DAYS and c + horizon <= m.log_sales.shape[1]]
    for c in cuts:
        warm = (m.sales[:, :c] > 0).any(axis=1)
        if warm.all() or not warm.any():
            continue
        cold = np.flatnonzero(~warm)
        w = m.log_sales[warm, c - LAG_WINDOW_DAYS : c]
        fb = Fallback.build(tables, m.store_nbr[warm], m.item_nbr[warm], w, m.dates[c - 1])  # unscaled
        levels, win = fb.windows_for(tables, m.store_nbr[cold], m.item_nbr[cold])
        ref = win[:, -14:].astype(np.float64).mean(axis=1)
        actual = m.log_sales[cold, c : c + horizon].astype(np.float64).mean(axis=1)
        for k, level in enumerate(LEVELS):
            at = levels == level
            num[k] += actual[at].sum()
            den[k] += ref[at].sum()
            rows[k] += int(at.sum())
    pooled = num.sum() / den.sum() if den.sum() > 0 and rows.sum() >= min_rows else 1.0
    scale = np.array([num[k] / den[k] if rows[k] >= min_rows and den[k] > 0 else pooled for k in range(len(LEVELS))])
    scale = np.clip(scale, 0.0, 2.0).astype(np.float32)
    info = {
        "cuts": len(cuts),
        "every_days": every,
        "levels": {level: {"scale": round(float(scale[k]), 4), "cold_pairs_seen": int(rows[k])} for k, level in enumerate(LEVELS)},
    }
    return scale, info


def prepare(
    grid: pd.DataFrame,
    stores: pd.DataFrame,
    items: pd.DataFrame,
    holidays: pd.DataFrame,
    *,
    validation_days: int,
    train_days: int,
    horizon: int | None = None,
    unknown_promo_days: np.ndarray | None = None,
    valid_promo: np.ndarray | None = None,
) -> Prepared:
    """Encode a dense daily grid into train and validation splits (validation = the last days).

    Training rows cycle the forecast offsets 1…``horizon`` (the days the agent serves; default
    ``validation_days``). Flags of days without sales are imputed (:func:`impute_promo`); days in
    ``unknown_promo_days`` (indices) are 0.5. ``valid_promo`` [P, validation_days] replaces the
    validation days' flags with the true ones when known (the synthetic oracle; a shop's request).
    """
    m = sales_matrix(grid)
    n_days = len(m.dates)
    horizon = horizon or validation_days
    if validation_days > horizon:
        raise ValueError(f"validation_days ({validation_days}) must not exceed the served horizon ({horizon})")
    promo = impute_promo(m.promo, m.sales > 0, m.item_nbr, unknown_promo_days)
    if valid_promo is not None:
        promo[:, n_days - validation_days :] = valid_promo
    m = dataclasses.replace(m, promo=promo)
    first_target = LAG_WINDOW_DAYS - 1 + horizon  # earliest day with a full window at every offset
    valid_start = n_days - validation_days
    train_start = max(first_target, valid_start - train_days)
    if valid_start - train_start < 7:
        need = LAG_WINDOW_DAYS + horizon + validation_days + 7
        raise ValueError(f"not enough days of data: have {n_days}, need at least {need}")
    tables = build_tables(stores, items, holidays)
    perishable_by_pair = tables.perishable[np.maximum(tables.item_index(m.item_nbr), 0)].astype(bool)
    n_pairs = len(m.store_nbr)
    # cold start: pairs without a sale before the split are unknown to a trainer at the split
    warm = (m.sales[:, :valid_start] > 0).any(axis=1)
    levels = np.full(n_pairs, "", dtype=object)
    cold_windows = None
    # the factors come from cuts in the second half of the training period (targets before the split)
    scale, calibration = calibrate_fallback(
        tables, m, first_cut=train_start + (valid_start - train_start) // 2, last_cut=valid_start - horizon, horizon=horizon
    )
    if not warm.all() and warm.any():
        w = m.log_sales[warm, valid_start - LAG_WINDOW_DAYS : valid_start]
        fb = Fallback.build(tables, m.store_nbr[warm], m.item_nbr[warm], w, m.dates[valid_start - 1], level_scale=scale)
        lv, win = fb.windows_for(tables, m.store_nbr[~warm], m.item_nbr[~warm])
        levels[~warm] = lv
        cold_windows = np.full((n_pairs, LAG_WINDOW_DAYS), np.nan, np.float32)
        cold_windows[~warm] = win

    def split(day_lo: int, day_hi: int, window_end: np.ndarray | None) -> Split:
        days = np.arange(day_lo, day_hi)
        pairs = np.arange(n_pairs) if window_end is not None else np.flatnonzero(warm)
        pair = np.repeat(pairs, len(days))
        day = np.tile(days, len(pairs))
        if window_end is None:  # training: cycle offsets 1..horizon
            end = day - 1 - ((day + pair) % horizon)
            x = encode_at(tables, m, pair, day, end)
        else:
            end = np.full_like(day, window_end)
            x = encode_at(tables, m, pair, day, end, cold_windows)
        return Split(
            x, m.log_sales[pair, day], m.sales[pair, day], perishable_by_pair[pair], pair, day, levels[pair].astype(str)
        )

    train = split(train_start, valid_start, None)
    valid = split(valid_start, n_days, np.int64(valid_start - 1))
    if cold_windows is not None:
        logger.info("%d pairs without sales before the split: validated from the cold-start fallback", int((~warm).sum()))
    fmt = lambda i: str(m.dates[i])  # noqa: E731
    logger.info("prepared %d train and %d validation rows over %d pairs", len(train), len(valid), n_pairs)
    return Prepared(
        matrix=m,
        tables=tables,
        train=train,
        valid=valid,
        train_window=(fmt(train_start), fmt(valid_start - 1)),
        valid_window=(fmt(valid_start), fmt(n_days - 1)),
        fallback_scale=scale,
        fallback_calibration=calibration,
    )

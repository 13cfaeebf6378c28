"""Pure feature encoding, called by the trainer and by the agent alike.

No I/O, no pandas, no TensorFlow: numpy arrays in, numpy arrays out. The trainer calls
:func:`encode` on millions of rows at once; the agent calls it on the rows of one request, with
the lag windows taken from the :class:`SalesState` shipped in the bundle. Both sides therefore feed
the model identical numbers for identical rows (``tests/unit/test_features.py`` holds the golden
vectors that prove it).

>>> import numpy as np
>>> tables = Tables.from_records(
...     stores=[{"store_nbr": 1, "city": "Quito", "state": "Pichincha", "type": "D", "cluster": 13}],
...     items=[{"item_nbr": 103520, "family": "GROCERY I", "class": 1028, "perishable": 0}],
...     holidays=[],
... )
>>> enc = encode(tables, dates=np.array(["2017-08-16"], "M8[D]"), store_nbr=np.array([1]),
...              item_nbr=np.array([103520]), onpromotion=np.array([False]),
...              windows=np.zeros((1, LAG_WINDOW_DAYS), np.float32),
...              window_end=np.datetime64("2017-08-15"))
>>> enc.cat.shape, enc.num.shape
((1, 8), (1, 22))
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from models.contract import CAT_FEATURES, LAG_WINDOW_DAYS, NUM_FEATURES

__all__ = [
    "Encoded",
    "Tables",
    "SalesState",
    "encode",
    "lag_features",
    "N_LAG_FEATURES",
    "target_transform",
    "target_inverse",
    "HOLIDAY_TYPES",
]

#: Holiday types that close or change trading (``Work Day`` is handled apart).
HOLIDAY_TYPES = frozenset({"Holiday", "Transfer", "Additional", "Bridge", "Event"})
_KEY_SHIFT = 4096  # date-key packing: day * 4096 + place index (cities/states < 4096)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """The model's two inputs: ``cat`` int32 [N, 8] and ``num`` float32 [N, len(NUM_FEATURES)]."""

    cat: np.ndarray
    num: np.ndarray

    def as_feed(self) -> dict[str, np.ndarray]:
        return {"cat": self.cat, "num": self.num}

    def __len__(self) -> int:
        return int(self.cat.shape[0])


def _vocab(values: Iterable[Any]) -> list[str]:
    return sorted({str(v) for v in values})


def _index(vocab: list[str], values: Iterable[Any]) -> np.ndarray:
    lookup = {v: i + 1 for i, v in enumerate(vocab)}  # 0 = unknown
    return np.array([lookup.get(str(v), 0) for v in values], dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Tables:
    """Lookup tables shipped in the bundle: stores, items, holidays and their vocabularies.

    Built once by the trainer from stores.csv, items.csv and holidays_events.csv records
    (:meth:`from_records`), serialised to JSON in the bundle (:meth:`to_json`), read back by the agent.
    """

    store_nbr: np.ndarray  # int64, sorted
    store_type: np.ndarray  # int32 index per store (into vocab["store_type"], 1-based)
    cluster: np.ndarray
    city: np.ndarray
    state: np.ndarray
    item_nbr: np.ndarray  # int64, sorted
    family: np.ndarray
    item_class: np.ndarray
    perishable: np.ndarray  # int8 0/1
    vocab: dict[str, list[str]]
    national_days: np.ndarray  # int64 days since epoch of national holidays
    workdays: np.ndarray
    regional_keys: np.ndarray  # day * 4096 + state index
    local_keys: np.ndarray  # day * 4096 + city index
    calendar_start: str  # first and last day the holiday calendar covers (ISO)
    calendar_end: str

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_records(
        cls,
        *,
        stores: Iterable[Mapping[str, Any]],
        items: Iterable[Mapping[str, Any]],
        holidays: Iterable[Mapping[str, Any]],
    ) -> Tables:
        stores = sorted(stores, key=lambda r: int(r["store_nbr"]))
        items = sorted(items, key=lambda r: int(r["item_nbr"]))
        holidays = list(holidays)
        vocab = {
            "store_type": _vocab(r["type"] for r in stores),
            "cluster": _vocab(int(r["cluster"]) for r in stores),
            "city": _vocab(r["city"] for r in stores),
            "state": _vocab(r["state"] for r in stores),
            "family": _vocab(r["family"] for r in items),
            "item_class": _vocab(int(r["class"]) for r in items),
        }
        city_idx = {v: i + 1 for i, v in enumerate(vocab["city"])}
        state_idx = {v: i + 1 for i, v in enumerate(vocab["state"])}
        national, workdays, regional, local, days = [], [], [], [], []
        for h in holidays:
            day = int(np.datetime64(str(h["date"])[:10], "D").astype(np.int64))
            days.append(day)
            transferred = h.get("transferred") in (True, "True", "true", 1)
            kind, locale, name = str(h["type"]), str(h["locale"]), str(h["locale_name"])
            if kind == "Work Day":
                workdays.append(day)
            elif kind in HOLIDAY_TYPES and not transferred:
                if locale == "National":
                    national.append(day)
                elif locale == "Regional" and name in state_idx:
                    regional.append(day * _KEY_SHIFT + state_idx[name])
                elif locale == "Local" and name in city_idx:
                    local.append(day * _KEY_SHIFT + city_idx[name])
        epoch = np.datetime64("1970-01-01", "D")
        return cls(
            store_nbr=np.array([int(r["store_nbr"]) for r in stores], dtype=np.int64),
            store_type=_index(vocab["store_type"], (r["type"] for r in stores)),
            cluster=_index(vocab["cluster"], (int(r["cluster"]) for r in stores)),
            city=_index(vocab["city"], (r["city"] for r in stores)),
            state=_index(vocab["state"], (r["state"] for r in stores)),
            item_nbr=np.array([int(r["item_nbr"]) for r in items], dtype=np.int64),
            family=_index(vocab["family"], (r["family"] for r in items)),
            item_class=_index(vocab["item_class"], (int(r["class"]) for r in items)),
            perishable=np.array([int(r["perishable"]) for r in items], dtype=np.int8),
            vocab=vocab,
            national_days=np.unique(np.array(national, dtype=np.int64)),
            workdays=np.unique(np.array(workdays, dtype=np.int64)),
            regional_keys=np.unique(np.array(regional, dtype=np.int64)),
            local_keys=np.unique(np.array(local, dtype=np.int64)),
            calendar_start=str(epoch + min(days)) if days else "",
            calendar_end=str(epoch + max(days)) if days else "",
        )

    # -- lookups ----------------------------------------------------------------------------
    def store_index(self, store_nbr: np.ndarray) -> np.ndarray:
        """0-based row in the store table for each store number; -1 where unknown."""
        return _find(self.store_nbr, np.asarray(store_nbr, dtype=np.int64))

    def item_index(self, item_nbr: np.ndarray) -> np.ndarray:
        """0-based row in the item table for each item number; -1 where unknown."""
        return _find(self.item_nbr, np.asarray(item_nbr, dtype=np.int64))

    def cardinalities(self) -> dict[str, int]:
        """Embedding input sizes (vocabulary + 1 for "unknown") per categorical feature."""
        return {
            "store": len(self.store_nbr) + 1,
            "item": len(self.item_nbr) + 1,
            "family": len(self.vocab["family"]) + 1,
            "item_class": len(self.vocab["item_class"]) + 1,
            "store_type": len(self.vocab["store_type"]) + 1,
            "cluster": len(self.vocab["cluster"]) + 1,
            "city": len(self.vocab["city"]) + 1,
            "dow": 8,
        }

    # -- serialisation ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tables:
        kwargs: dict[str, Any] = {}
        dtypes = {"store_nbr": np.int64, "item_nbr": np.int64, "perishable": np.int8}
        for f in dataclasses.fields(cls):
            v = data[f.name]
            if f.name in ("vocab", "calendar_start", "calendar_end"):
                kwargs[f.name] = v
            elif f.name.endswith(("_days", "_keys")) or f.name == "workdays":
                kwargs[f.name] = np.array(v, dtype=np.int64)
            else:
                kwargs[f.name] = np.array(v, dtype=dtypes.get(f.name, np.int32))
        return cls(**kwargs)


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Position of each key in the unique, sorted ``sorted_keys``; -1 where absent."""
    keys = np.asarray(keys, dtype=np.int64)
    if not len(sorted_keys):
        return np.full(keys.shape, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == keys, pos, -1)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Membership test against unique, sorted keys (``np.isin`` costs ~10x more on a few rows)."""
    return _find(sorted_keys, keys) >= 0


@dataclasses.dataclass
class SalesState:
    """Recent daily sales per store×item: the lag windows the agent encodes requests with.

    ``window[p]`` holds log1p(unit_sales) of pair ``p`` for the :data:`LAG_WINDOW_DAYS` days ending
    on ``end_date`` (inclusive, oldest first) — or, when ``pair_end`` is given (the agent's online
    state after stores reported sales up to different days), on ``pair_end[p]``; ``end_date`` is then
    the newest of them. Bundles always ship one common end.
    """

    store_nbr: np.ndarray  # int64 [P], pairs sorted by (store_nbr, item_nbr)
    item_nbr: np.ndarray  # int64 [P]
    window: np.ndarray  # float32 [P, LAG_WINDOW_DAYS]
    end_date: np.datetime64  # day of the last column (the newest, when pairs end apart)
    pair_end: np.ndarray | None = None  # M8[D] [P]: each pair's own last day, None = all end on end_date

    def __post_init__(self) -> None:
        self._keys = _pair_key(self.store_nbr, self.item_nbr)
        if len(self._keys) > 1 and not np.all(np.diff(self._keys) > 0):
            raise ValueError("SalesState pairs must be unique and sorted by (store_nbr, item_nbr)")
        if self.window.shape != (len(self._keys), LAG_WINDOW_DAYS):
            raise ValueError(f"window must have shape (pairs, {LAG_WINDOW_DAYS}), got {self.window.shape}")
        if self.pair_end is not None and np.shape(self.pair_end) != (len(self._keys),):
            raise ValueError("pair_end must hold one date per pair")

    def row_end(self, rows: np.ndarray) -> np.ndarray | np.datetime64:
        """Last day of each row's lag window (``rows`` from :meth:`pair_index`); one date when all pairs share it."""
        if self.pair_end is None:
            return np.datetime64(self.end_date, "D")
        return np.asarray(self.pair_end, "M8[D]")[np.asarray(rows, np.int64)]

    def pair_index(self, store_nbr: np.ndarray, item_nbr: np.ndarray) -> np.ndarray:
        """Row of each (store, item) pair; -1 where the model has no history for it."""
        return _find(self._keys, _pair_key(store_nbr, item_nbr))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            store_nbr=self.store_nbr,
            item_nbr=self.item_nbr,
            window=self.window.astype(np.float32),
            end_date=np.array(str(self.end_date)),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SalesState:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                store_nbr=z["store_nbr"].astype(np.int64),
                item_nbr=z["item_nbr"].astype(np.int64),
                window=z["window"].astype(np.float32),
                end_date=np.datetime64(str(z["end_date"]), "D"),
            )


def _pair_key(store_nbr: np.ndarray, item_nbr: np.ndarray) -> np.ndarray:
    return np.asarray(store_nbr, dtype=np.int64) * (1 << 32) + np.asarray(item_nbr, dtype=np.int64)


def target_transform(unit_sales: np.ndarray) -> np.ndarray:
    """What the model learns: log1p of sales, returns (negative sales) counted as zero."""
    return np.log1p(np.maximum(np.asarray(unit_sales, dtype=np.float64), 0.0)).astype(np.float32)


def target_inverse(y: np.ndarray) -> np.ndarray:
    """Model output back to units; never negative."""
    return np.maximum(np.expm1(np.asarray(y, dtype=np.float64)), 0.0)


#: Number of lag (window) features :func:`lag_features` computes: the ``num`` columns from ``lag_mean_7`` on.
N_LAG_FEATURES = len(NUM_FEATURES) - NUM_FEATURES.index("lag_mean_7")
_HORIZON_SCALE = 16.0  # the served horizon (Kaggle's 16 days): ``horizon`` = offset / 16
_T = np.arange(LAG_WINDOW_DAYS, dtype=np.float64)
_SLOPE = (_T - _T.mean()) / ((_T - _T.mean()) ** 2).sum() * 28.0  # least-squares slope weights, per 28 days


def lag_features(windows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Lag features [N, :data:`N_LAG_FEATURES`] from sales windows [N, 56] ending ``offsets`` days before the target.

    ``offsets`` is ≥ 1: 1 means the window ends the day before the target day; the trainer cycles
    1…horizon, as the agent predicts up to the horizon past its last known sales. Columns, in
    :data:`models.contract.NUM_FEATURES` order: means over 7 and 28 days, the share of zero days in
    28, the same weekday's mean over 8 weeks, means over 3, 14 and 56 days, the standard deviation
    over 28 days, the same weekday's mean over 4 weeks, the last day, days since the last sale / 56,
    the slope per 28 days, the mean over the days with sales in 28, and offset / 16.
    """
    w = np.asarray(windows, dtype=np.float64)
    n = w.shape[0]
    offsets = np.broadcast_to(np.asarray(offsets, dtype=np.int64), (n,))
    out = np.empty((n, N_LAG_FEATURES), dtype=np.float64)
    add = np.add.reduce  # mean() without its per-call overhead: the agent encodes one row at a time
    w28 = w[:, -28:]
    sold28 = w28 > 0.0
    out[:, 0] = add(w[:, -7:], axis=1) / 7
    out[:, 1] = add(w28, axis=1) / 28
    out[:, 2] = (28 - np.count_nonzero(sold28, axis=1)) / 28
    # Same weekday as the target: j days before the window end, with (j + offset) % 7 == 0.
    first = (-offsets) % 7
    cols = LAG_WINDOW_DAYS - 1 - (first[:, None] + 7 * np.arange(LAG_WINDOW_DAYS // 7)[None, :])
    same_dow = np.take_along_axis(w, cols, axis=1)  # newest first
    out[:, 3] = add(same_dow, axis=1) / (LAG_WINDOW_DAYS // 7)
    out[:, 4] = add(w[:, -3:], axis=1) / 3
    out[:, 5] = add(w[:, -14:], axis=1) / 14
    out[:, 6] = add(w, axis=1) / LAG_WINDOW_DAYS
    out[:, 7] = np.sqrt(np.maximum(add(w28 * w28, axis=1) / 28 - out[:, 1] ** 2, 0.0))
    out[:, 8] = add(same_dow[:, :4], axis=1) / 4
    out[:, 9] = w[:, -1]
    sold = w > 0.0
    last_sale = np.where(sold.any(axis=1), LAG_WINDOW_DAYS - 1 - np.argmax(sold[:, ::-1], axis=1), -1)
    out[:, 10] = np.where(last_sale >= 0, LAG_WINDOW_DAYS - 1 - last_sale, LAG_WINDOW_DAYS) / LAG_WINDOW_DAYS
    out[:, 11] = w @ _SLOPE
    n_sold = np.count_nonzero(sold28, axis=1)
    out[:, 12] = add(w28, axis=1) / np.maximum(n_sold, 1)
    out[:, 13] = offsets / _HORIZON_SCALE
    return out.astype(np.float32)


def encode(
    tables: Tables,
    *,
    dates: np.ndarray,
    store_nbr: np.ndarray,
    item_nbr: np.ndarray,
    onpromotion: np.ndarray,
    windows: np.ndarray,
    window_end: np.ndarray | np.datetime64,
) -> Encoded:
    """Encode rows into the model's inputs. Unknown stores or items encode as index 0.

    ``windows`` [N, 56] are the rows' lag windows (log1p sales), ending on ``window_end`` (one date
    for all rows, or one per row), which must be before each row's date.
    """
    days = np.asarray(dates, dtype="M8[D]")
    n = days.shape[0]
    day_num = days.astype(np.int64)
    offsets = day_num - np.broadcast_to(np.asarray(window_end, dtype="M8[D]"), (n,)).astype(np.int64)
    if n and offsets.min() < 1:
        raise ValueError("every row's date must be after its lag window's end")

    s = tables.store_index(store_nbr)
    i = tables.item_index(item_nbr)
    s_ok, i_ok = s >= 0, i >= 0

    def by_store(col: np.ndarray) -> np.ndarray:
        return np.where(s_ok, col[np.maximum(s, 0)] if len(col) else 0, 0).astype(np.int32)

    def by_item(col: np.ndarray) -> np.ndarray:
        return np.where(i_ok, col[np.maximum(i, 0)] if len(col) else 0, 0).astype(np.int32)

    dow = ((day_num + 3) % 7).astype(np.int32)  # 1970-01-01 was a Thursday; Monday = 0
    city, state = by_store(tables.city), by_store(tables.state)
    cat = np.stack(
        [
            np.where(s_ok, s + 1, 0).astype(np.int32),
            np.where(i_ok, i + 1, 0).astype(np.int32),
            by_item(tables.family),
            by_item(tables.item_class),
            by_store(tables.store_type),
            by_store(tables.cluster),
            city,
            dow + 1,
        ],
        axis=1,
    ).astype(np.int32)

    month_start = days.astype("M8[M]").astype("M8[D]")
    day_of_month = (days - month_start).astype(np.int64) + 1
    month_end = (days + 1).astype("M8[M]") != days.astype("M8[M]")
    payday = (day_of_month == 15) | month_end
    num = np.empty((n, len(NUM_FEATURES)), dtype=np.float32)
    # 1 on promotion, 0 not, 0.5 unknown (the real file's early years leave the flag empty)
    num[:, 0] = np.clip(np.asarray(onpromotion, dtype=np.float32), 0.0, 1.0)
    num[:, 1] = np.where(i_ok, tables.perishable[np.maximum(i, 0)] if len(tables.perishable) else 0, 0)
    num[:, 2] = payday
    num[:, 3] = day_of_month / 31.0
    num[:, 4] = _contains(tables.national_days, day_num)
    num[:, 5] = _contains(tables.regional_keys, day_num * _KEY_SHIFT + state) & (state > 0)
    num[:, 6] = _contains(tables.local_keys, day_num * _KEY_SHIFT + city) & (city > 0)
    num[:, 7] = _contains(tables.workdays, day_num)
    num[:, len(NUM_FEATURES) - N_LAG_FEATURES :] = lag_features(windows, offsets)
    assert cat.shape[1] == len(CAT_FEATURES)
    return Encoded(cat=cat, num=num)

"""Cold start: lag windows for the store×item pairs of the catalogue that have no sales history.

A pair the model has no window for (an item that never sold at a store, a new item in
``items.csv``) still gets a forecast: the trainer ships, beside the per-pair windows of
``state.npz``, the mean windows of three groups, and the agent takes the first group the pair
belongs to, in this order (the ``fallback`` the response names):

``item``               the item's mean window across the stores that have it;
``family_store``       the mean window of the item's family in this store;
``family_store_type``  the mean window of the family in stores of this store type;
``global``             the mean window of every pair (the last resort, so every pair of the
                       catalogue gets a number).

A group's window says what its established pairs sell, not what a pair without history will: most
such pairs are rarely sold ones or items not yet launched. So each level carries a scale
(``level_scale``, 1.0 = the group's window as it is) that the trainer calibrates on its own history
— what pairs that were cold at earlier cuts went on to sell, against their fallback windows then
(:func:`cloud.training.prepare.calibrate_fallback`); :meth:`Fallback.lookup` returns the window times
its level's scale.

The window then goes through the very same :func:`models.features.encode` /
:func:`models.features.lag_features` path as a pair with history, with the pair's own store and
item (their embeddings; an item the model never trained on carries the mean item embedding, see
:func:`cloud.training.train.fill_unseen_embeddings`). Stores and items missing from the bundle's
tables stay unknown (4xx).

>>> import numpy as np
>>> from models.features import Tables
>>> t = Tables.from_records(
...     stores=[{"store_nbr": 1, "city": "Quito", "state": "P", "type": "D", "cluster": 1},
...             {"store_nbr": 2, "city": "Quito", "state": "P", "type": "D", "cluster": 1}],
...     items=[{"item_nbr": 10, "family": "DAIRY", "class": 1, "perishable": 1},
...            {"item_nbr": 11, "family": "DAIRY", "class": 1, "perishable": 1}], holidays=[])
>>> w = np.ones((1, 56), np.float32)
>>> fb = Fallback.build(t, np.array([1]), np.array([10]), w, np.datetime64("2017-08-15"))
>>> fb.lookup(t, 2, 10)[0], fb.lookup(t, 1, 11)[0], fb.lookup(t, 2, 11)[0]
('item', 'family_store', 'family_store_type')
"""

from __future__ import annotations

import dataclasses
import io
from typing import get_args

import numpy as np

from models.contract import LAG_WINDOW_DAYS
from models.features import Tables
from models.serving import FallbackLevel

__all__ = ["LEVELS", "Fallback"]

#: Fallback levels, most specific first (the values of a response's ``fallback``).
LEVELS: tuple[str, ...] = get_args(FallbackLevel)


def _group_mean(keys: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``keys`` and the mean window of each."""
    uniq, inverse = np.unique(keys, return_inverse=True)
    sums = np.zeros((len(uniq), windows.shape[1]), np.float64)
    np.add.at(sums, inverse, windows.astype(np.float64))
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    return uniq.astype(np.int64), (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Fallback:
    """Group mean lag windows (log1p sales, oldest first) ending on ``end_date``: ``fallback.npz`` in a bundle."""

    end_date: np.datetime64
    item_nbr: np.ndarray  # int64 [I], sorted
    item_window: np.ndarray  # float32 [I, 56]
    family_store_key: np.ndarray  # int64 [K], sorted: store_nbr * 4096 + family index
    family_store_window: np.ndarray
    family_type_key: np.ndarray  # int64 [L], sorted: store_type index * 4096 + family index
    family_type_window: np.ndarray
    global_window: np.ndarray  # float32 [56]
    #: per level of :data:`LEVELS`: the factor its window is served with (ones: the group means as they are)
    level_scale: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(len(LEVELS), np.float32))

    def __post_init__(self) -> None:
        for name in ("item", "family_store", "family_type"):
            keys = getattr(self, "item_nbr" if name == "item" else f"{name}_key")
            win = getattr(self, f"{name}_window")
            if win.shape != (len(keys), LAG_WINDOW_DAYS):
                raise ValueError(f"fallback {name}_window must have shape ({len(keys)}, {LAG_WINDOW_DAYS}), got {win.shape}")
            if len(keys) > 1 and not np.all(np.diff(keys) > 0):
                raise ValueError(f"fallback {name} keys must be unique and sorted")
        if self.global_window.shape != (LAG_WINDOW_DAYS,):
            raise ValueError(f"fallback global_window must have shape ({LAG_WINDOW_DAYS},)")
        scale = np.asarray(self.level_scale)
        if scale.shape != (len(LEVELS),) or not np.all(np.isfinite(scale)) or np.any(scale < 0):
            raise ValueError(f"fallback level_scale must be {len(LEVELS)} finite factors >= 0 (one per level), got {scale!r}")

    @classmethod
    def build(
        cls,
        tables: Tables,
        store_nbr: np.ndarray,
        item_nbr: np.ndarray,
        windows: np.ndarray,
        end_date: np.datetime64,
        level_scale: np.ndarray | None = None,
    ) -> Fallback:
        """Group means of the windows of the pairs with history (``store_nbr``/``item_nbr``/``windows`` [P, 56]).

        Pairs whose store or item is not in ``tables`` count for the item and global means only.
        ``level_scale``: one factor per level (default: ones)."""
        store_nbr = np.asarray(store_nbr, np.int64)
        item_nbr = np.asarray(item_nbr, np.int64)
        windows = np.asarray(windows, np.float32)
        if not len(store_nbr):
            raise ValueError("a fallback needs at least one pair with history")
        s, i = tables.store_index(store_nbr), tables.item_index(item_nbr)
        ok = (s >= 0) & (i >= 0)
        family = tables.family[np.maximum(i, 0)].astype(np.int64)
        stype = tables.store_type[np.maximum(s, 0)].astype(np.int64)
        items, item_w = _group_mean(item_nbr, windows)
        fs_key, fs_w = _group_mean(store_nbr[ok] * 4096 + family[ok], windows[ok])
        ft_key, ft_w = _group_mean(stype[ok] * 4096 + family[ok], windows[ok])
        return cls(
            end_date=np.datetime64(end_date, "D"),
            item_nbr=items,
            item_window=item_w,
            family_store_key=fs_key,
            family_store_window=fs_w,
            family_type_key=ft_key,
            family_type_window=ft_w,
            global_window=windows.astype(np.float64).mean(axis=0).astype(np.float32),
            level_scale=(np.ones(len(LEVELS)) if level_scale is None else np.asarray(level_scale)).astype(np.float32),
        )

    def with_scale(self, level_scale: np.ndarray) -> Fallback:
        """The same windows served with other per-level factors."""
        return dataclasses.replace(self, level_scale=np.asarray(level_scale, np.float32))

    def lookup(self, tables: Tables, store_nbr: int, item_nbr: int) -> tuple[str, np.ndarray]:
        """``(level, window [56])`` for a pair of known store and item (see :data:`LEVELS`): the
        group's mean window times the level's scale."""
        level, window = self._group(tables, store_nbr, item_nbr)
        return level, window * self.level_scale[LEVELS.index(level)]

    def _group(self, tables: Tables, store_nbr: int, item_nbr: int) -> tuple[str, np.ndarray]:
        pos = np.searchsorted(self.item_nbr, item_nbr)
        if pos < len(self.item_nbr) and self.item_nbr[pos] == item_nbr:
            return "item", self.item_window[pos]
        s = int(tables.store_index(np.array([store_nbr]))[0])
        i = int(tables.item_index(np.array([item_nbr]))[0])
        if s >= 0 and i >= 0:
            family = int(tables.family[i])
            for level, keys, win in (
                ("family_store", self.family_store_key, self.family_store_window),
                ("family_store_type", self.family_type_key, self.family_type_window),
            ):
                key = (store_nbr if level == "family_store" else int(tables.store_type[s])) * 4096 + family
                pos = np.searchsorted(keys, key)
                if pos < len(keys) and keys[pos] == key:
                    return level, win[pos]
        return "global", self.global_window

    def windows_for(self, tables: Tables, store_nbr: np.ndarray, item_nbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`lookup` for many pairs: levels [N] (str) and windows [N, 56]."""
        found = [self.lookup(tables, int(s), int(i)) for s, i in zip(store_nbr.tolist(), item_nbr.tolist(), strict=True)]
        levels = np.array([f[0] for f in found], dtype=object)
        win = np.stack([f[1] for f in found]) if found else np.zeros((0, LAG_WINDOW_DAYS), np.float32)
        return levels, win.astype(np.float32)

    # -- serialisation ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "end_date"}
        np.savez_compressed(buf, end_date=np.array(str(self.end_date)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Fallback:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            kwargs = {
                f.name: (z[f.name].astype(np.int64) if f.name.endswith(("_key", "_nbr")) else z[f.name].astype(np.float32))
                for f in dataclasses.fields(cls)
                if f.name != "end_date" and (f.name in z.files or f.name != "level_scale")
            }  # a bundle from before level_scale: the group means as they are
            return cls(end_date=np.datetime64(str(z["end_date"]), "D"), **kwargs)

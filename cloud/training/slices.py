"""NWRMSLE by slice: where a model is good and where it is not.

:func:`slices` scores every model's validation predictions per perishable flag, store type, item
family, promotion status, horizon day (1 = the day after the last known sales) and cold-start
status (``warm``, or the cold-start fallback level of a pair that sold nothing before the split). :func:`store_type_gate`
fails when a store type's NWRMSLE is worse than ``ratio`` × the overall one.

>>> import numpy as np
>>> from cloud.training.slices import group_nwrmsle
>>> group_nwrmsle(np.zeros(4), np.array([0, 0, 1, 1.0]), np.zeros(4, bool), np.array(["a", "a", "b", "b"]))
{'a': 0.0, 'b': 1.0}
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cloud.training.gates import Verdict
from cloud.training.metrics import nwrmsle_log
from cloud.training.prepare import Prepared

__all__ = ["group_nwrmsle", "slice_labels", "slices", "store_type_gate"]

logger = logging.getLogger(__name__)


def group_nwrmsle(y: np.ndarray, pred: np.ndarray, perishable: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """NWRMSLE of each label's rows (log1p space)."""
    out: dict[str, float] = {}
    for value in np.unique(label):
        at = label == value
        out[str(value)] = float(nwrmsle_log(y[at], np.maximum(pred[at], 0.0), perishable[at]))
    return out


def slice_labels(prep: Prepared) -> dict[str, np.ndarray]:
    """Each validation row's label in every slice."""
    m, t, v = prep.matrix, prep.tables, prep.valid
    cut = int(v.day.min())
    s_row = np.maximum(t.store_index(m.store_nbr[v.pair]), 0)
    i_row = np.maximum(t.item_index(m.item_nbr[v.pair]), 0)
    store_type = np.array(t.vocab["store_type"])[np.maximum(t.store_type[s_row] - 1, 0)]
    family = np.array(t.vocab["family"])[np.maximum(t.family[i_row] - 1, 0)]
    promo = m.promo[v.pair, v.day]
    # cold start: the fallback level a pair without sales before the split was encoded from, else "warm"
    cold = np.full(len(v), "warm", dtype=object) if v.fallback is None else np.where(v.fallback == "", "warm", v.fallback)
    return {
        "perishable": np.where(v.perishable, "perishable", "non-perishable"),
        "store_type": store_type,
        "family": family,
        "promotion": np.where(promo >= 0.75, "on", np.where(promo <= 0.25, "off", "unknown")),
        "horizon_day": np.array([f"{d:02d}" for d in (v.day - cut + 1)]),
        "cold_start": cold.astype(str),
    }


def slices(prep: Prepared, preds: dict[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
    """``{slice: {model: {label: nwrmsle}}}`` for every model's log1p predictions on the validation split."""
    labels = slice_labels(prep)
    v = prep.valid
    return {
        name: {model: group_nwrmsle(v.y, pred, v.perishable, lab) for model, pred in preds.items()}
        for name, lab in labels.items()
    }


def store_type_gate(overall: float, by_type: dict[str, float], ratio: float = 1.5) -> Verdict:
    """Fail when a store type's NWRMSLE exceeds ``ratio`` × the overall NWRMSLE."""
    worst = max(by_type.items(), key=lambda kv: kv[1]) if by_type else ("-", 0.0)
    figures: dict[str, Any] = {"overall_nwrmsle": overall, "ratio_limit": ratio}
    figures |= {f"store_type_{k}_nwrmsle": v for k, v in by_type.items()}
    bad = {k: v for k, v in by_type.items() if v > ratio * overall}
    if bad:
        text = ", ".join(f"type {k} {v:.4f}" for k, v in sorted(bad.items()))
        return Verdict(False, f"{text} worse than {ratio}x the overall NWRMSLE {overall:.4f}", figures)
    return Verdict(True, f"worst store type {worst[0]} {worst[1]:.4f} within {ratio}x overall {overall:.4f}", figures)

"""NWRMSLE, the one formula the trainer's gates and the agent's on-device gate share.

Kaggle's Favorita metric, in log1p space, with per-row weights (1.25 for perishable items, 1.00
otherwise)::

    NWRMSLE = sqrt( sum_i w_i (log_pred_i - log_true_i)² / sum_i w_i )

Pure numpy; :mod:`cloud.training.metrics` builds on it and the agent (:mod:`edge.store.gate`) calls it directly.

>>> round(weighted_rmse_log([0.0, 0.6931], [0.0, 0.6931], [1.0, 1.25]), 6)
0.0
>>> weights([True, False]).tolist()
[1.25, 1.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["PERISHABLE_WEIGHT", "weights", "weighted_rmse_log"]

PERISHABLE_WEIGHT = 1.25


def weights(perishable: np.ndarray | list[bool]) -> np.ndarray:
    """Kaggle's weights: 1.25 for perishable items, 1.00 otherwise."""
    return np.where(np.asarray(perishable, dtype=bool), PERISHABLE_WEIGHT, 1.0)


def weighted_rmse_log(log_true: np.ndarray | list[float], log_pred: np.ndarray | list[float], weight: np.ndarray | list[float]) -> float:
    """NWRMSLE from values already in log1p space and the rows' weights (see :func:`weights`)."""
    t = np.asarray(log_true, dtype=np.float64)
    p = np.asarray(log_pred, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    if t.shape != p.shape or w.shape != t.shape:
        raise ValueError(f"shapes differ: true {t.shape}, pred {p.shape}, weight {w.shape}")
    if not len(t) or np.sum(w) <= 0:
        raise ValueError("NWRMSLE needs at least one row with a positive weight")
    d = p - t
    return float(np.sqrt(np.sum(w * d * d) / np.sum(w)))

"""Evaluation metrics: NWRMSLE exactly as the Kaggle Favorita competition defines it, and R².

    NWRMSLE = sqrt( sum_i w_i (ln(ŷ_i + 1) - ln(y_i + 1))² / sum_i w_i )

with w_i = 1.25 for perishable items and 1.00 otherwise.

>>> round(nwrmsle([0.0, 1.0], [0.0, 1.0], [False, True]), 6)
0.0
"""

from __future__ import annotations

import numpy as np

from models.metrics import PERISHABLE_WEIGHT, weighted_rmse_log, weights

__all__ = ["PERISHABLE_WEIGHT", "weights", "nwrmsle", "nwrmsle_log", "r2"]


def nwrmsle(y_true: np.ndarray, y_pred: np.ndarray, perishable: np.ndarray) -> float:
    """NWRMSLE of predictions in units. Both must be >= 0 (clean returns first; clip predictions)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred {y_pred.shape}")
    if (y_true < 0).any() or (y_pred < 0).any():
        raise ValueError("NWRMSLE is defined for non-negative sales and predictions only")
    return nwrmsle_log(np.log1p(y_true), np.log1p(y_pred), perishable)


def nwrmsle_log(log_true: np.ndarray, log_pred: np.ndarray, perishable: np.ndarray) -> float:
    """NWRMSLE from values already in log1p space."""
    w = weights(perishable)
    if w.shape != np.shape(log_true):
        raise ValueError("perishable flags must have one entry per row")
    return weighted_rmse_log(log_true, log_pred, w)  # the formula the agent's gate uses too


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination (1 - SS_res / SS_tot), as scikit-learn's r2_score."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    ss_res = float(np.sum((y_true - y_pred) ** 2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0

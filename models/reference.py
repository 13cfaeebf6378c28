"""Reference statistics of the model inputs: written by the trainer, read by the agent's drift monitor.

``reference_stats.json`` in a bundle::

    {"rows": N,
     "num": {feature: {"mean", "std", "edges": [decile edges], "fractions": [share per bin]}},
     "cat": {feature: {"values": [...], "fractions": [...]}}}

The agent (:mod:`edge.monitoring.drift`) compares recent requests' inputs with it (PSI per feature).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.contract import CAT_FEATURES, NUM_FEATURES
from models.features import Encoded

__all__ = ["reference_stats"]


def reference_stats(x: Encoded, bins: int = 10) -> dict[str, Any]:
    """Input statistics of the training rows, for drift detection (PSI) on the device."""
    out: dict[str, Any] = {"rows": len(x), "num": {}, "cat": {}}
    for j, name in enumerate(NUM_FEATURES):
        col = x.num[:, j].astype(np.float64)
        edges = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)))
        counts = np.histogram(col, bins=edges)[0] if len(edges) > 1 else np.array([len(col)])
        out["num"][name] = {
            "mean": float(col.mean()),
            "std": float(col.std()),
            "edges": edges.tolist(),
            "fractions": (counts / max(len(col), 1)).tolist(),
        }
    for j, name in enumerate(CAT_FEATURES):
        values, counts = np.unique(x.cat[:, j], return_counts=True)
        out["cat"][name] = {"values": values.tolist(), "fractions": (counts / len(x)).tolist()}
    return out

"""Scale caps: bounded random samples of rows, each recorded (what the recipe allows, what was used).

Every cap is a recipe field with a documented default (:mod:`models.recipes`): ``baselines.rf_max_rows``,
``baselines.lightgbm_max_rows``, ``training.max_rows_per_epoch`` and ``parity_max_rows``. A cap that
binds samples rows (pairs x days) uniformly without replacement, seeded; one that does not bind takes
every row, so small data trains exactly as without caps. The pipeline writes every record to
``report.json`` under ``caps``.

>>> import numpy as np
>>> caps = Caps()
>>> idx = caps.sample("rf", 10, limit=4, seed=1)
>>> len(idx), bool(np.all(np.diff(idx) > 0)), caps.as_dict()["rf"]
(4, True, {'limit': 4, 'rows': 10, 'used': 4, 'applied': True})
>>> caps.sample("lightgbm", 3, limit=4, seed=1) is None
True
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["Caps"]

logger = logging.getLogger(__name__)


class Caps:
    """The caps one training run applied (or not), for ``report.json``."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}

    def sample(self, name: str, rows: int, *, limit: int | None, seed: int, keep: np.ndarray | None = None) -> np.ndarray | None:
        """Sorted row indices of a seeded random sample of at most ``limit`` of ``rows`` rows (``keep``
        indices always among them), or None when the cap does not bind (use every row)."""
        applied = limit is not None and rows > limit
        self.record(name, limit=limit, rows=rows, used=min(rows, limit) if applied else rows)
        if not applied:
            return None
        rng = np.random.default_rng(seed)
        if keep is None or not len(keep):
            return np.sort(rng.choice(rows, limit, replace=False))
        keep = np.unique(keep)
        rest = np.setdiff1d(np.arange(rows), keep, assume_unique=True)
        extra = rng.choice(rest, max(0, limit - len(keep)), replace=False)
        return np.sort(np.concatenate([keep, extra]))

    def record(self, name: str, *, limit: int | None, rows: int, used: int, **extra: Any) -> None:
        """Note one cap: ``limit`` allowed, ``rows`` available, ``used`` taken."""
        self._records[name] = {"limit": limit, "rows": int(rows), "used": int(used), "applied": used < rows, **extra}
        if used < rows:
            logger.info("scale cap %s: %d of %d rows (limit %s)", name, used, rows, limit)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._records.items()}

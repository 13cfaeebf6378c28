"""Per-feature drift: PSI of the model inputs served recently against the bundle's reference statistics.

The bundle's ``reference_stats.json`` (written by ``cloud.training.pipeline.reference_stats`` from the
training rows, encoded exactly as the agent encodes requests) holds, per feature::

    {"num": {"lag_mean_7": {"edges": [...], "fractions": [...], "mean": .., "std": ..}, ...},
     "cat": {"store": {"values": [...], "fractions": [...]}, ...}}

The monitor keeps the bin of every feature of the last ``window_rows`` encoded rows in a ring
buffer with running counts (O(rows × features) per batch, nothing per scrape but a sum), and the
Population Stability Index per feature is computed when Prometheus scrapes::

    PSI = Σ_bins (live − ref) · ln(live / ref)      (fractions floored at ``epsilon``)

exported as ``edgeship_feature_drift_psi{feature="lag_mean_7"}`` once ``min_rows`` rows were seen
(common reading: < 0.1 stable, 0.1–0.25 moderate, > 0.25 significant). Numeric bins are the
reference quantile edges, values outside them counted in the first or last bin. Two cases the
quantile edges cannot express get exact bins instead: 0/1 features (``onpromotion``, holidays…,
whose quantiles collapse to one ``[0, 1]`` bin) are compared as P(1) against the reference mean,
and a feature constant in training as "equal to it or not". Categorical values never seen in
training fall into an "other" bin whose reference share is 0.

::

    monitor = DriftMonitor.from_bundle(bundle, DriftConfig())   # None if the bundle has no usable stats
    monitor.observe(encoded)                                    # model inputs of served rows
    monitor.psi()                                               # {"lag_mean_7": 0.02, ...}
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.monitoring.metrics import DriftCollector  # defined with the other metrics; re-exported here
from models.contract import CAT_FEATURES, NUM_FEATURES
from models.features import Encoded

__all__ = ["DriftConfig", "DriftMonitor", "DriftCollector", "psi"]

logger = logging.getLogger(__name__)

_FLUSH_ROWS = 256  # rows buffered before they are binned in bulk


class DriftConfig(BaseModel):
    """Input drift against the bundle's reference statistics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Track per-feature PSI of served inputs.")
    window_rows: int = Field(default=5000, ge=50, le=1_000_000, description="Recent rows PSI is computed over.")
    min_rows: int = Field(default=200, ge=1, description="Rows needed in the window before PSI is exported.")
    epsilon: float = Field(default=1e-4, gt=0, lt=0.1, description="Floor for empty bins' fractions.")


def psi(live: np.ndarray, ref: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population Stability Index of two distributions over the same bins.

    >>> round(psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])), 6)
    0.0
    """
    a = np.maximum(np.asarray(live, np.float64), epsilon)
    e = np.maximum(np.asarray(ref, np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


class _Feature:
    """How one feature's values map to bins, and the reference fraction of each bin."""

    def __init__(self, name: str, kind: str, ref: np.ndarray, binner: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name, self.kind, self.ref, self.bin = name, kind, ref, binner

    @classmethod
    def numeric(cls, name: str, spec: Mapping[str, Any]) -> _Feature:
        edges = np.asarray(spec["edges"], np.float64)
        fractions = np.asarray(spec["fractions"], np.float64)
        mean = float(spec.get("mean", math.nan))
        if len(edges) >= 2 and set(edges.tolist()) <= {0.0, 1.0} and 0.0 <= mean <= 1.0:
            # a 0/1 feature: its quantile edges collapse to one [0, 1] bin; compare P(1) instead
            return cls(name, "binary", np.array([1.0 - mean, mean]), lambda v: (v > 0.5).astype(np.int64))
        if len(edges) == 1:  # constant in training
            value = edges[0]
            return cls(name, "constant", np.array([1.0, 0.0]), lambda v: (v != value).astype(np.int64))
        if len(fractions) != len(edges) - 1:
            raise ValueError(f"{name}: {len(edges)} edges but {len(fractions)} fractions")
        inner = edges[1:-1]
        return cls(name, "numeric", fractions, lambda v: np.searchsorted(inner, v, side="right").astype(np.int64))

    @classmethod
    def categorical(cls, name: str, spec: Mapping[str, Any]) -> _Feature:
        values = np.asarray(spec["values"], np.int64)
        fractions = np.asarray(spec["fractions"], np.float64)
        if len(values) != len(fractions) or not len(values):
            raise ValueError(f"{name}: values and fractions must be non-empty and of equal length")
        order = np.argsort(values)
        values, fractions = values[order], fractions[order]
        other = len(values)

        def binner(v: np.ndarray) -> np.ndarray:
            v = np.asarray(v, np.int64)
            pos = np.minimum(np.searchsorted(values, v), other - 1)
            return np.where(values[pos] == v, pos, other).astype(np.int64)

        return cls(name, "categorical", np.append(fractions, 0.0), binner)


class DriftMonitor:
    """PSI per model input feature over a sliding window of recently served rows. Thread-safe."""

    def __init__(self, reference: Mapping[str, Any], config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self.features: list[_Feature] = []
        self._columns: list[tuple[str, int]] = []  # ("num" | "cat", column) per feature
        for j, name in enumerate(NUM_FEATURES):
            spec = (reference.get("num") or {}).get(name)
            if spec is not None:
                self.features.append(_Feature.numeric(name, spec))
                self._columns.append(("num", j))
        for j, name in enumerate(CAT_FEATURES):
            spec = (reference.get("cat") or {}).get(name)
            if spec is not None:
                self.features.append(_Feature.categorical(name, spec))
                self._columns.append(("cat", j))
        if not self.features:
            raise ValueError("reference statistics describe none of the contract's features")
        sizes = np.array([len(f.ref) for f in self.features], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self._total = int(sizes.sum())
        self._counts = np.zeros(self._total, np.int64)
        w = self.config.window_rows
        # bin ids (offsets into _counts, < _total) of the last w rows; int32 halves the window's memory
        self._ring = np.zeros((w, len(self.features)), np.int32 if self._total < 2**31 else np.int64)
        self._filled = 0
        self._pos = 0
        self._buffer: list[Encoded] = []
        self._buffered = 0
        self._lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle: Any, config: DriftConfig | None = None) -> DriftMonitor | None:
        """The monitor for a verified bundle's ``reference_stats.json``; None (logged) if unusable."""
        try:
            reference = json.loads(bundle.path(bundle.manifest.reference_stats).read_text())
            return cls(reference, config)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("no drift monitoring for this model: reference statistics unusable (%s)", exc)
            return None

    def observe(self, enc: Encoded) -> None:
        """Add the encoded rows of served requests (the oldest leave the window).

        Rows are buffered and binned in bulk (every ``_FLUSH_ROWS`` rows, and before PSI is read):
        one request costs a list append, not twenty numpy calls."""
        n = len(enc)
        if not n:
            return
        with self._lock:
            self._buffer.append(enc)
            self._buffered += n
            if self._buffered >= min(_FLUSH_ROWS, self.config.window_rows):
                self._flush()

    def _flush(self) -> None:
        """Bin the buffered rows into the ring and the running counts (under the lock)."""
        if not self._buffer:
            return
        if len(self._buffer) == 1:
            cat, num = self._buffer[0].cat, self._buffer[0].num
        else:
            cat = np.concatenate([e.cat for e in self._buffer])
            num = np.concatenate([e.num for e in self._buffer])
        self._buffer.clear()
        self._buffered = 0
        w = self.config.window_rows
        if len(cat) > w:  # only the newest w rows matter
            cat, num = cat[-w:], num[-w:]
        n = len(cat)
        ids = np.empty((n, len(self.features)), np.int64)
        for k, (feature, (kind, j)) in enumerate(zip(self.features, self._columns, strict=True)):
            ids[:, k] = feature.bin(num[:, j] if kind == "num" else cat[:, j])  # every binner stays in range
        ids += self._offsets
        slots = (self._pos + np.arange(n)) % w
        old = self._ring[slots[slots < self._filled]]  # until full, slots below _filled hold rows
        self._ring[slots] = ids
        self._counts += np.bincount(ids.ravel(), minlength=self._total)
        if len(old):
            self._counts -= np.bincount(old.ravel(), minlength=self._total)
        self._pos = int((self._pos + n) % w)
        self._filled = min(w, self._filled + n)

    @property
    def rows(self) -> int:
        """Rows in the window now (buffered ones included)."""
        with self._lock:
            self._flush()
            return self._filled

    def psi(self) -> dict[str, float]:
        """PSI per feature over the window; empty until ``min_rows`` rows were observed."""
        with self._lock:
            self._flush()
            filled, counts = self._filled, self._counts.copy()
        if filled < self.config.min_rows:
            return {}
        out: dict[str, float] = {}
        for k, feature in enumerate(self.features):
            live = counts[self._offsets[k] : self._offsets[k] + len(feature.ref)] / filled
            out[feature.name] = psi(live, feature.ref, self.config.epsilon)
        return out

    def reset(self) -> None:
        with self._lock:
            self._buffer.clear()
            self._buffered = 0
            self._counts[:] = 0
            self._filled = self._pos = 0

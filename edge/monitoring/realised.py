"""Realised accuracy on the device: actual sales joined to the forecasts made for that store, item and day.

The prediction log (:mod:`edge.monitoring.predlog`) holds sampled forecasts, one row per
``(date, store_nbr, item_nbr)`` with the model name and version that made them. When the shop reports
what really sold (``POST /v1/sales``, MQTT ``request/sales``, the serial bridge, staff feedback), each
reported row is joined to the newest live forecast for the same key and its squared log error is
added to the running sums of its ``(store_nbr, model, version)``. NWRMSLE (:mod:`models.metrics`,
Kaggle's formula, weight 1.25 for perishable items) per store and model version then goes out in
telemetry (``data["realised"]``) and as ``edgeship_realised_nwrmsle`` on the agent's ``/metrics``;
the fleet exporter (:mod:`cloud.fleet.exporter`) turns it into a fleet metric.

Re-sending a day replaces its error (sales reports are idempotent); sums survive restarts
(``<state>/realised.json``, written atomically); the join index is bounded (``max_keys``).

::

    realised = RealisedAccuracy(state_dir / "predlog", state_dir / "realised.json", registry)
    realised.observe([{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "unit_sales": 4.0}])
    realised.snapshot()
    # [{"store_nbr": 1, "model": "favorita-demand", "version": 3, "rows": 1, "nwrmsle": 0.105, "offline_nwrmsle": 0.5}]
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edge.monitoring.metrics import RealisedCollector, RealisedMetrics

from models.fsutil import atomic_write_bytes
from models.metrics import PERISHABLE_WEIGHT

__all__ = ["RealisedAccuracy", "Group"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^predictions-(\d{8})\.jsonl$")

Key = tuple[str, int, int]  # (date, store_nbr, item_nbr)
Group = tuple[int, str, int]  # (store_nbr, model, version)


class _Sums:
    __slots__ = ("w", "wd2", "rows")

    def __init__(self, w: float = 0.0, wd2: float = 0.0, rows: int = 0) -> None:
        self.w, self.wd2, self.rows = w, wd2, rows


class RealisedAccuracy:
    """Joins reported sales with logged forecasts; NWRMSLE per ``(store_nbr, model, version)``. Thread-safe."""

    def __init__(
        self,
        predlog_folder: str | os.PathLike[str],
        state_file: str | os.PathLike[str] | None = None,
        registry: CollectorRegistry | None = None,
        *,
        perishable: Callable[[int], bool] | None = None,
        offline: Callable[[str, int], float | None] | None = None,
        max_keys: int = 200_000,
    ) -> None:
        self.folder = Path(predlog_folder)
        self.state_file = Path(state_file) if state_file is not None else None
        self.perishable = perishable or (lambda _item: False)
        self.offline = offline or (lambda _model, _version: None)
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}
        self._forecasts: collections.OrderedDict[Key, tuple[float, str, int]] = collections.OrderedDict()
        self._joined: collections.OrderedDict[Key, tuple[Group, float, float]] = collections.OrderedDict()
        self._sums: dict[Group, _Sums] = {}
        self._load()
        m = RealisedMetrics(registry)  # defined in edge.monitoring.metrics
        self.joined_rows, self.unmatched_rows = m.joined_rows, m.unmatched_rows
        if registry is not None:
            registry.register(RealisedCollector(self.snapshot))

    # -- input ------------------------------------------------------------------------------
    def observe(self, sales: Iterable[Any]) -> int:
        """Join reported sales rows (:class:`models.serving.SalesRow` or dicts); returns how many matched."""
        matched = unmatched = 0
        with self._lock:
            self._index()
            for raw in sales:
                r = raw if isinstance(raw, Mapping) else raw.model_dump(mode="json")
                try:
                    key: Key = (str(r["date"]), int(r["store_nbr"]), int(r["item_nbr"]))
                    actual = max(float(r["unit_sales"]), 0.0)
                except (KeyError, TypeError, ValueError):
                    unmatched += 1
                    continue
                forecast = self._forecasts.get(key)
                if forecast is None:
                    unmatched += 1
                    continue
                prediction, model, version = forecast
                group: Group = (key[1], model, version)
                w = PERISHABLE_WEIGHT if self.perishable(key[2]) else 1.0
                d = math.log1p(max(prediction, 0.0)) - math.log1p(actual)
                old = self._joined.pop(key, None)
                if old is not None:  # the same day reported again: replace its error
                    s = self._sums[old[0]]
                    s.w, s.wd2, s.rows = s.w - old[1], s.wd2 - old[1] * old[2], s.rows - 1
                s = self._sums.setdefault(group, _Sums())
                s.w, s.wd2, s.rows = s.w + w, s.wd2 + w * d * d, s.rows + 1
                self._joined[key] = (group, w, d * d)
                while len(self._joined) > self.max_keys:
                    self._joined.popitem(last=False)
                matched += 1
            if matched:
                self._save()
        self.joined_rows.inc(matched)
        self.unmatched_rows.inc(unmatched)
        return matched

    def _index(self) -> None:
        """Read the prediction log's new lines into the join index (live arm only, newest wins)."""
        if not self.folder.is_dir():
            return
        files = sorted(p for p in self.folder.iterdir() if _NAME.match(p.name))
        names = {p.name for p in files}
        for gone in set(self._offsets) - names:
            del self._offsets[gone]
        for path in files:
            start = self._offsets.get(path.name, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            for line in data[:end].splitlines():
                try:
                    row = json.loads(line)
                    if row.get("arm", "live") != "live" or row.get("prediction") is None:
                        continue
                    key = (str(row["date"]), int(row["store_nbr"]), int(row["item_nbr"]))
                    value = (float(row["prediction"]), str(row.get("model")), int(row["version"]))
                except (ValueError, KeyError, TypeError):
                    continue
                self._forecasts.pop(key, None)
                self._forecasts[key] = value
            while len(self._forecasts) > self.max_keys:
                self._forecasts.popitem(last=False)
            self._offsets[path.name] = start + end

    # -- output -----------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """NWRMSLE per store and model version (with the manifest's offline figure where known)."""
        with self._lock:
            items = [(g, s.w, s.wd2, s.rows) for g, s in self._sums.items() if s.rows > 0 and s.w > 0]
        out = []
        for (store, model, version), w, wd2, rows in sorted(items):
            out.append(
                {
                    "store_nbr": store,
                    "model": model,
                    "version": version,
                    "rows": rows,
                    "nwrmsle": round(math.sqrt(max(wd2, 0.0) / w), 6),
                    "offline_nwrmsle": self.offline(model, version),
                }
            )
        return out

    # -- persistence ------------------------------------------------------------------------
    def _save(self) -> None:
        if self.state_file is None:
            return
        body = [[g[0], g[1], g[2], s.w, s.wd2, s.rows] for g, s in self._sums.items()]
        try:
            atomic_write_bytes(self.state_file, json.dumps({"sums": body}).encode(), durable=False)
        except OSError as exc:
            logger.warning("could not save realised accuracy: %s", exc)

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            for store, model, version, w, wd2, rows in json.loads(self.state_file.read_text())["sums"]:
                self._sums[(int(store), str(model), int(version))] = _Sums(float(w), float(wd2), int(rows))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable %s: %s", self.state_file, exc)

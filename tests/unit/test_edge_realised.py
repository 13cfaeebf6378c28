"""Realised accuracy on the device: reported sales joined to the prediction log per store and version."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edge.monitoring.predlog import PredictionLog, PredLogConfig
from edge.monitoring.realised import RealisedAccuracy


class Model:
    def __init__(self, version: int) -> None:
        self.name, self.version, self.digest = "favorita-demand", version, "a" * 64


def row(store: int, item: int, date: str = "2017-08-16") -> dict:
    return {"date": date, "store_nbr": store, "item_nbr": item, "onpromotion": False}


def sale(store: int, item: int, units: float, date: str = "2017-08-16") -> dict:
    return {"date": date, "store_nbr": store, "item_nbr": item, "unit_sales": units}


def test_join_per_store_and_version_replace_and_persist(tmp_path):
    log = PredictionLog(tmp_path / "predlog", PredLogConfig(sample_rate=1.0))
    log.write([row(1, 10), row(2, 20)], [4.0, 1.0], Model(3))
    log.write([row(1, 11)], [9.0], Model(3), arm="shadow")  # the candidate's forecast is not the shop's
    registry = CollectorRegistry()
    r = RealisedAccuracy(tmp_path / "predlog", tmp_path / "realised.json", registry,
                         perishable=lambda item: item == 20, offline=lambda m, v: 0.5 if v == 3 else None)
    assert r.observe([sale(1, 10, 4.0), sale(2, 20, 0.0), sale(1, 11, 9.0), sale(9, 9, 1.0)]) == 2
    snap = {s["store_nbr"]: s for s in r.snapshot()}
    assert snap[1]["nwrmsle"] == 0.0 and snap[1]["version"] == 3 and snap[1]["offline_nwrmsle"] == 0.5
    assert snap[2]["nwrmsle"] == pytest.approx(math.log1p(1.0), abs=1e-6)
    # the same day reported again replaces its error (sales reports are idempotent)
    log.write([row(1, 10, "2017-08-17")], [2.0], Model(4))
    r.observe([sale(1, 10, 1.0)])
    r.observe([sale(1, 10, 4.0), sale(1, 10, 1.0, "2017-08-17")])
    snap = {(s["store_nbr"], s["version"]): s for s in r.snapshot()}
    assert snap[(1, 3)]["rows"] == 1 and snap[(1, 3)]["nwrmsle"] == 0.0
    assert snap[(1, 4)]["nwrmsle"] == pytest.approx(abs(math.log1p(2.0) - math.log1p(1.0)), abs=1e-6)
    text = generate_latest(registry).decode()
    assert 'edgeship_realised_nwrmsle{model="favorita-demand",store_nbr="2",version="3"}' in text
    assert "edgeship_realised_unmatched_rows_total 2.0" in text
    again = RealisedAccuracy(tmp_path / "predlog", tmp_path / "realised.json")
    assert again.snapshot() == [dict(s, offline_nwrmsle=None) for s in r.snapshot()]

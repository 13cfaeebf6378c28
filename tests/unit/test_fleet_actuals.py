"""Actuals from the fleet: the device forwards accepted sales rows as sequenced events, the ingest
appends them (deduplicated, durably) to its actuals store, and ``retrain`` merges them into a new
dataset version by the documented rule with both hashes in its lineage."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cloud.fleet.actuals import ACTUALS_FILE, ActualsStore, fleet_table, table_hash
from cloud.fleet.ingest import FleetState
from cloud.training.retrain import base_hash, build_dataset, fleet_versions
from edge.monitoring.telemetry import Telemetry, TelemetryConfig
from models.serving import ACTUALS_CHUNK_ROWS, ACTUALS_EVENT, SalesActuals

E = "edgeship/default/{}/events"


def sales_event(device: str, seq: int, rows: list[dict]) -> bytes:
    return json.dumps({"device_id": device, "kind": ACTUALS_EVENT, "seq": seq, "detail": {"sales": rows}}).encode()


def row(date: str, store: int, item: int, units: float) -> dict:
    return {"date": date, "store_nbr": store, "item_nbr": item, "unit_sales": units}


def test_telemetry_forwards_accepted_rows_as_sequenced_chunked_events(tmp_path):
    tele = Telemetry(TelemetryConfig(interval_s=0, fsync=False), device_id="store-1", fleet="default", folder=tmp_path)
    rows = [row("2017-08-16", 1, 100 + i, float(i)) for i in range(ACTUALS_CHUNK_ROWS + 3)]
    seqs = tele.actuals(rows, "http")
    assert seqs == [1, 2]  # two events, one sequence shared with telemetry and other events
    spooled = tele.spool.peek(10)
    assert [t for _, t, _ in spooled] == ["edgeship/default/store-1/events"] * 2
    details = [SalesActuals.model_validate(json.loads(p)["detail"]) for _, _, p in spooled]
    assert [len(d.sales) for d in details] == [ACTUALS_CHUNK_ROWS, 3]
    assert details[1].sales[-1].item_nbr == 100 + ACTUALS_CHUNK_ROWS + 2 and details[0].transport == "http"
    tele.stop()


def test_ingest_appends_sales_events_deduplicated_and_durable(tmp_path):
    state = FleetState(state_dir=tmp_path)
    rows = [row("2017-08-16", 1, 7, 3.0), row("2017-08-16", 1, 8, 0.0)]
    assert state.handle(E.format("store-1"), sales_event("store-1", 1, rows)) == "ok"
    assert state.handle(E.format("store-1"), sales_event("store-1", 1, rows)) == "duplicate"  # same seq: dropped
    # a re-sent report under a new seq (the device re-reported the day): same values are not stored again
    assert state.handle(E.format("store-1"), sales_event("store-1", 2, rows)) == "ok"
    assert state.actuals is not None and state.actuals.rows == 2 and state.actuals.duplicates == 2
    # a correction of one key is appended and wins; another device's row for the same key is its own
    assert state.handle(E.format("store-1"), sales_event("store-1", 3, [row("2017-08-16", 1, 7, 5.0)])) == "ok"
    assert state.handle(E.format("store-2"), sales_event("store-2", 1, [row("2017-08-17", 2, 7, 1.5)])) == "ok"
    # a malformed sales event is dropped and counted, never fatal
    assert state.handle(E.format("store-2"), sales_event("store-2", 2, [{"date": "x"}])) == "schema"
    from tests.unit.test_fleet_ingest import value

    assert value(state, "edgeship_fleet_actuals_rows") == 4.0  # the exporter says how many rows are stored
    lines = (tmp_path / ACTUALS_FILE).read_bytes().splitlines()
    assert len(lines) == 4
    table = fleet_table(tmp_path)
    assert table == [("2017-08-16", 1, 7, 5.0), ("2017-08-16", 1, 8, 0.0), ("2017-08-17", 2, 7, 1.5)]
    # a torn last line (crash mid-append) is cut off on reopen; what was complete survives a restart
    with open(tmp_path / ACTUALS_FILE, "ab") as fh:
        fh.write(b'{"fleet":"default","device":"store-9","da')
    again = ActualsStore(tmp_path)
    assert again.rows == 4 and (tmp_path / ACTUALS_FILE).read_bytes().endswith(b"\n")
    assert again.add("default", "store-1", [row("2017-08-16", 1, 7, 5.0)]) == 0  # already stored
    assert table_hash(fleet_table(tmp_path)) == table_hash(list(reversed(table)))  # order-independent


def _base(tmp_path):
    from cloud.data.synth import generate

    summary = generate(tmp_path / "base", stores=2, items=4, days=30, seed=1)
    return summary


def test_merge_rule_replace_extend_remove_and_hashes(tmp_path):
    summary = _base(tmp_path)
    base = summary.out_dir
    train = pd.read_csv(base / "train.csv", dtype=str, keep_default_na=False)
    first = train.iloc[0]
    end = summary.end.isoformat()
    new_day = summary.test_start.isoformat()
    test = pd.read_csv(base / "test.csv", dtype=str, keep_default_na=False)
    t0 = test[test["date"] == new_day].iloc[0]
    removed = train.iloc[5]
    state = tmp_path / "fleet"
    store = ActualsStore(state)
    store.add("default", "store-1", [
        row(first["date"], int(first["store_nbr"]), int(first["item_nbr"]), 123.5),  # replaces
        row(new_day, int(t0["store_nbr"]), int(t0["item_nbr"]), 9.0),  # extends (after the base end)
        row(removed["date"], int(removed["store_nbr"]), int(removed["item_nbr"]), 0.0),  # removes
    ])  # fmt: skip
    merged = build_dataset(base, state, tmp_path / "out")
    assert merged.base_sha256 == base_hash(base) and merged.actuals_sha256 == table_hash(fleet_table(state))
    assert (merged.replaced, merged.added, merged.removed) == (1, 1, 1)
    # the other store reported nothing past the base's end: it would look closed, and that is said
    assert merged.uncovered_stores == tuple(s for s in (1, 2) if s != int(t0["store_nbr"]))
    out = pd.read_csv(merged.path / "train.csv", dtype=str, keep_default_na=False)
    assert len(out) == len(train)  # +1 added, -1 removed
    assert list(out["date"]) == sorted(out["date"])  # date order kept
    key = lambda r: (r["date"], r["store_nbr"], r["item_nbr"])  # noqa: E731
    by_key = {key(r): r for _, r in out.iterrows()}
    assert by_key[key(first)]["unit_sales"] == "123.5"
    assert key(removed) not in by_key
    added = by_key[(new_day, t0["store_nbr"], t0["item_nbr"])]
    assert added["unit_sales"] == "9" and added["onpromotion"] == t0["onpromotion"]  # promotion from test.csv
    assert int(added["id"]) == int(train["id"].astype(int).max()) + 1 and out["id"].is_unique
    assert max(out["date"]) == new_day > end
    # the merged folder is a loadable Favorita dataset whose other files are the base's
    from cloud.data import loader

    loaded = loader.load(merged.path, progress=False)
    assert loaded.train["date"].max() == pd.Timestamp(new_day)
    assert (merged.path / "items.csv").read_bytes() == (base / "items.csv").read_bytes()
    # same inputs, same version folder; different actuals, a different one
    assert build_dataset(base, state, tmp_path / "out").path == merged.path
    store.add("default", "store-2", [row(new_day, int(t0["store_nbr"]), int(t0["item_nbr"]), 4.0)])
    assert build_dataset(base, state, tmp_path / "out").path != merged.path


def test_no_actuals_is_a_clear_error_and_fleet_versions(tmp_path):
    summary = _base(tmp_path)
    with pytest.raises(FileNotFoundError, match="actuals.jsonl"):
        build_dataset(summary.out_dir, tmp_path / "nothing", tmp_path / "out")
    ActualsStore(tmp_path / "empty")
    with pytest.raises(ValueError, match="no sales"):
        build_dataset(summary.out_dir, tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "ingest.json").write_text(json.dumps({"devices": [{"version": "3"}, {"version": ""}]}))
    assert fleet_versions(tmp_path / "empty") == 3

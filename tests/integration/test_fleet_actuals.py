"""Actuals from the fleet, end to end: a real agent (LiteRT) accepts sales reports over HTTP and MQTT,
forwards the accepted rows through its sequenced, spooled telemetry, a real Mosquitto carries them, and
the fleet ingest appends them deduplicated to its actuals store; a refused report forwards nothing."""

from __future__ import annotations

import json

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from cloud.fleet.actuals import fleet_table
from cloud.fleet.ingest import FleetState, Ingest
from edge.agent import Agent
from edge.config import AgentConfig
from edge.store.model_store import ModelStore
from models import topics
from tests.bundle_kit import STATE_END, build_bundle, real_models
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

DAY = str(np.datetime64(STATE_END, "D") + np.timedelta64(1, "D"))


def test_sales_reports_reach_the_fleet_actuals_store(tmp_path, keys, mosquitto):
    bundle, _ = build_bundle(tmp_path / "m-v1.tar", keys[0], version=1, variants=("tflite-fp32",),
                             model_bytes=real_models(["tflite-fp32"]))
    state_dir = tmp_path / "store-1"
    store = ModelStore(state_dir, [keys[1]])
    store.install(bundle)
    store.activate(1)
    config = AgentConfig(device_id="store-1", state_dir=state_dir, trust=[keys[2]], http="127.0.0.1:0", broker=mosquitto.url,
                         attributes={"store_nbr": "1"}, telemetry={"interval_s": 0, "fsync": False})
    fleet = FleetState(state_dir=tmp_path / "fleet")
    ingest = Ingest(mosquitto.url, fleet, fleet="default", shared="auto").start()
    agent = Agent(config).start()
    try:
        assert agent.mqtt is not None and agent.mqtt.wait_connected(10)
        with httpx.Client(base_url=agent.http_url, timeout=10) as c:
            ok = c.post("/v1/sales", json={"sales": [{"date": DAY, "store_nbr": 1, "item_nbr": 103520, "unit_sales": 4},
                                                     {"date": DAY, "store_nbr": 1, "item_nbr": 105574, "unit_sales": 0.5}]})
            assert ok.status_code == 200, ok.text
            bad = c.post("/v1/sales", json={"sales": [{"date": DAY, "store_nbr": 1, "item_nbr": 999999, "unit_sales": 1}]})
            assert bad.status_code == 422, bad.text
            again = c.post("/v1/sales", json={"sales": [{"date": DAY, "store_nbr": 1, "item_nbr": 103520, "unit_sales": 4}]})
            assert again.status_code == 200
        # the MQTT sales route forwards too (the serial bridge and staff feedback reuse these routes)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="shop-pos")
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        body = {"correlation_id": "s1", "sales": [{"date": DAY, "store_nbr": 1, "item_nbr": 103520, "unit_sales": 6.0}]}
        client.publish(topics.request("default", "store-1", "sales"), json.dumps(body), qos=1).wait_for_publish(5)
        wait_for(lambda: fleet.actuals is not None and fleet.actuals.rows >= 3, "three actual rows at the ingest", 20)
        client.loop_stop()
        client.disconnect()
    finally:
        agent.stop()
        ingest.stop()
    rows = [json.loads(line) for line in (tmp_path / "fleet" / "actuals.jsonl").read_text().splitlines()]
    # the refused report sent nothing; the identical re-report was deduplicated; the MQTT correction was kept
    assert [(r["device"], r["item_nbr"], r["unit_sales"]) for r in rows] == [
        ("store-1", 103520, 4.0), ("store-1", 105574, 0.5), ("store-1", 103520, 6.0)]
    assert fleet_table(tmp_path / "fleet") == [(DAY, 1, 103520, 6.0), (DAY, 1, 105574, 0.5)]

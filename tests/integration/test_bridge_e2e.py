"""Simulator → bridge → real agent (LiteRT bundle): sales reach the lag state exactly once, a serial
prediction equals POST /v1/predict, and a kill -9 of the bridge loses and doubles nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from edge.agent import Agent
from edge.config import AgentConfig
from edge.runtimes import get_runtime
from firmware_bridge.bridge import Bridge, Clock
from firmware_bridge.protocol import NackReason, Sale
from firmware_bridge.sim import DeviceSim, PtyTransport
from models.signing import generate_keypair
from tests.bundle_kit import STATE_END, build_bundle, real_models
from tests.conftest import free_port, require, wait_for

DAY = dt.date.fromisoformat(STATE_END) + dt.timedelta(days=1)  # the shop's business day: the day after the bundle's state
ITEMS = [103520, 105574]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    require(get_runtime("litert").available()[0], "ai-edge-litert is not installed")
    d = tmp_path_factory.mktemp("bridge")
    private, public = generate_keypair()
    pem = d / "signing.pub"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    path, _ = build_bundle(d / "v1.tar", private, version=1, model_bytes=real_models(("tflite-fp32",)))
    return path, pem


@pytest.fixture()
def agent(bundle, tmp_path):
    path, pem = bundle
    a = Agent(AgentConfig(device_id="store-1", state_dir=tmp_path / "agent", trust=[pem], http="127.0.0.1:0")).start()
    assert a.install_and_activate(path)
    assert a.predictor is not None and a.predictor.info.runtime == "litert"
    yield a
    a.stop()


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def metric(agent: Agent, name: str, **labels: str) -> float:
    for family in agent.metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def lag_value(agent: Agent, store: int, item: int, day: dt.date) -> float:
    state = agent.predictor.sales_state
    assert np.datetime64(state.end_date, "D") == np.datetime64(day, "D")
    row = state.pair_index(np.array([store]), np.array([item]))[0]
    return float(state.window[row, -1])


def start_sim(tmp_path: Path, **kw) -> DeviceSim:
    kw.setdefault("rate", 0)
    return DeviceSim(PtyTransport(tmp_path / "shelf"), items=ITEMS, store=1, retry_s=0.3, **kw).start()


def test_sales_reach_the_lag_state_and_serial_prediction_equals_http(agent, tmp_path):
    sim = start_sim(tmp_path)
    bridge = Bridge([str(tmp_path / "shelf")], agent.http_url, tmp_path / "bridge", clock=Clock(DAY)).start()
    try:
        wait_for(lambda: sim.synced, "time sync from the bridge")
        assert sim.today == DAY
        row = {"date": str(DAY + dt.timedelta(days=1)), "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}
        before = post(f"{agent.http_url}/v1/predict", {"instances": [row]})["predictions"][0]
        seqs = [sim.sell(103520, q) for q in (3, 4, 5)]
        wait_for(lambda: sim.stats.acked == 3, "three sales acked")
        assert agent.ingest.ledger.total(1, 103520, str(DAY)) == 12
        assert lag_value(agent, 1, 103520, DAY) == pytest.approx(np.log1p(12), rel=1e-6)
        # a device re-sending an acked sale (its ack was lost) is acked again and counted once
        sim._send(Sale(1, 103520, 3000, sim.now_local()), seqs[0])
        wait_for(lambda: metric(agent, "edgeship_sale_events_total", transport="serial", outcome="duplicate") == 1, "dup")
        assert agent.ingest.ledger.total(1, 103520, str(DAY)) == 12
        # the prediction over serial is the agent's answer for that row, and the sales moved it
        seq = sim.request_prediction(103520, DAY + dt.timedelta(days=1))
        answer = sim.wait_prediction(seq)
        after = post(f"{agent.http_url}/v1/predict", {"instances": [row]})["predictions"][0]
        assert answer is not None and answer.status == 0 and answer.model_version == 1
        assert answer.value == struct.unpack("<f", struct.pack("<f", after))[0]
        assert after != before
        wait_for(lambda: any("fcst" in t for t in sim.stats.displays), "the shelf label shows the forecast")
        assert metric(agent, "edgeship_requests_total", transport="serial", outcome="ok") >= 1
        assert metric(agent, "edgeship_sales_reports_total", transport="serial", outcome="ok") == 3
        # refused by the agent's validation (unknown item): nacked as invalid, not retried, not counted
        sim.sell(424242, 1)
        wait_for(lambda: sim.stats.refused == 1, "unknown item refused")
        assert sim.stats.nacks[NackReason.INVALID] == 1 and sim.pending == 0
        # a sensor reading lands in the agent's metrics with transport="serial"
        sim.sensor(kind=2, unit=2, value=412, exponent=-2)
        wait_for(lambda: metric(agent, "edgeship_sensor_readings_total", transport="serial", kind="temperature") == 1, "sensor")
        assert metric(agent, "edgeship_sensor_value", kind="temperature") == pytest.approx(4.12)
    finally:
        bridge.stop()
        sim.stop()


def test_queue_persists_sales_while_the_agent_is_down(agent, tmp_path):
    """Sales taken while the agent is unreachable wait in the bridge's queue, across a bridge restart."""
    sim = start_sim(tmp_path)
    down = f"http://127.0.0.1:{free_port()}"
    bridge = Bridge([str(tmp_path / "shelf")], down, tmp_path / "bridge", clock=Clock(DAY)).start()
    try:
        wait_for(lambda: sim.synced, "time sync")
        for q in (1, 2, 3):
            sim.sell(105574, q)
        wait_for(lambda: len(bridge.queue) == 3 and sim.stats.nacks[NackReason.UNAVAILABLE] >= 3, "queued, nacked")
    finally:
        bridge.stop()
        sim.stop()  # the device is gone too: only the bridge's queue still has the sales
    bridge = Bridge(["loop://"], agent.http_url, tmp_path / "bridge", clock=Clock(DAY), retry_interval=0.1).start()
    try:
        wait_for(lambda: len(bridge.queue) == 0, "queue drained into the agent")
        assert agent.ingest.ledger.total(1, 105574, str(DAY)) == 6
        assert lag_value(agent, 1, 105574, DAY) == pytest.approx(np.log1p(6), rel=1e-6)
    finally:
        bridge.stop()


def _bridge_proc(tmp_path: Path, agent_url: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgeship", "bridge", "--serial", str(tmp_path / "shelf"), "--agent", agent_url,
           "--state-dir", str(tmp_path / "bridge"), "--date", str(DAY), "--log-level", "warning"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "bridge.log", "ab"), env=os.environ.copy())


def test_kill_9_of_the_bridge_loses_and_doubles_nothing(agent, tmp_path):
    sim = start_sim(tmp_path, rate=60, max_sales=240, seed=3)
    proc = _bridge_proc(tmp_path, agent.http_url)
    try:
        wait_for(lambda: sim.stats.acked >= 40, "sales flowing", timeout=60)
        proc.send_signal(signal.SIGKILL)  # mid-stream: some sales queued, some accepted but not acked
        proc.wait(10)
        wait_for(lambda: sim.stats.sent >= 120, "the device keeps selling while the bridge is down")
        proc = _bridge_proc(tmp_path, agent.http_url)
        wait_for(lambda: sim.stats.sent == 240 and sim.pending == 0, "every sale acked after the restart", timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        sim.stop()
    assert sim.stats.refused == 0 and sim.stats.acked == 240
    sent: dict[tuple[int, int, str], float] = dict(sim.stats.acked_units)
    for (store, item, day), units in sent.items():
        assert agent.ingest.ledger.total(store, item, day) == pytest.approx(units), (item, day)
        assert lag_value(agent, store, item, dt.date.fromisoformat(day)) == pytest.approx(np.log1p(units), rel=1e-6)
    accepted = metric(agent, "edgeship_sale_events_total", transport="serial", outcome="accepted")
    assert accepted == 240  # each sale counted once, however often it was re-sent

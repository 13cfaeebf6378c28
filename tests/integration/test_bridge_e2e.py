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
from tests.firmware_kit import SketchProcess, build_sketch

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


def _bridge_proc(tmp_path: Path, agent_url: str, crash_at: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgeship", "bridge", "--serial", str(tmp_path / "shelf"), "--agent", agent_url,
           "--state-dir", str(tmp_path / "bridge"), "--date", str(DAY), "--log-level", "warning"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_CRASH_AT"}
    if crash_at is not None:
        env["EDGESHIP_CRASH_AT"] = crash_at
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "bridge.log", "ab"), env=env)


def test_kill_9_of_the_bridge_loses_and_doubles_nothing(agent, tmp_path):
    """The bridge is SIGKILLed right after the agent accepted the 40th sale, before it dequeued or acked it:
    the device re-sends it with the same seq and the restarted bridge's queue retries it too, so only the
    agent's deduplication keeps it from being counted twice; sales made while the bridge is down wait."""
    sim = start_sim(tmp_path, rate=60, max_sales=240, seed=3)
    proc = _bridge_proc(tmp_path, agent.http_url, crash_at="bridge_after_accept_40")
    try:
        assert proc.wait(90) == -signal.SIGKILL  # it killed itself at the crash point
        accepted_before = metric(agent, "edgeship_sale_events_total", transport="serial", outcome="accepted")
        assert accepted_before >= 40
        wait_for(lambda: sim.stats.sent >= 120, "the device keeps selling while the bridge is down", timeout=60)
        assert sim.pending > 0  # at least the 40th (accepted by the agent, never acked)
        proc = _bridge_proc(tmp_path, agent.http_url)
        wait_for(lambda: sim.stats.sent == 240 and sim.pending == 0, "every sale acked after the restart", timeout=90)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        sim.stop()
    log = (tmp_path / "bridge.log").read_text()
    assert "crash point bridge_after_accept_40: SIGKILL" in log
    assert sim.stats.refused == 0 and sim.stats.acked == 240
    sent: dict[tuple[int, int, str], float] = dict(sim.stats.acked_units)
    for (store, item, day), units in sent.items():
        assert agent.ingest.ledger.total(store, item, day) == pytest.approx(units), (item, day)
        assert lag_value(agent, store, item, dt.date.fromisoformat(day)) == pytest.approx(np.log1p(units), rel=1e-6)
    accepted = metric(agent, "edgeship_sale_events_total", transport="serial", outcome="accepted")
    assert accepted == 240  # each sale counted once, however often it was re-sent
    # because the re-sent 40th (and any other re-send of an accepted sale) was answered "duplicate"
    assert metric(agent, "edgeship_sale_events_total", transport="serial", outcome="duplicate") >= 1


def test_cli_simulator_on_tcp_feeds_the_agent_through_a_socket_url(agent, tmp_path):
    """``edgeship firmware-sim --tcp 0`` → ``edgeship bridge --serial socket://127.0.0.1:PORT`` → the real agent."""
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_CRASH_AT"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "firmware-sim", "--tcp", "0", "--item-ids", ",".join(map(str, ITEMS)),
         "--store", "1", "--rate", "20", "--once", "25", "--seed", "5", "--device-id", "tcp-shelf"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "sim.log", "ab"), text=True, env=env,
    )  # fmt: skip
    bridge = None
    try:
        assert sim.stdout is not None
        first = sim.stdout.readline()
        assert first.startswith("firmware-sim: device tcp-shelf on socket://127.0.0.1:"), first
        url = first.split(" on ")[1].strip()
        metrics_port = free_port()
        bridge = subprocess.Popen(
            [sys.executable, "-m", "edgeship", "bridge", "--serial", url, "--agent", agent.http_url, "--state-dir",
             str(tmp_path / "bridge"), "--date", str(DAY), "--metrics-port", str(metrics_port), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "bridge.log", "ab"), env=env,
        )  # fmt: skip
        out, _ = sim.communicate(timeout=120)
        assert sim.returncode == 0, (tmp_path / "sim.log").read_text()
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["acked"] == 25 and summary["refused"] == 0
        units = {tuple(k.split("/")): v for k, v in summary["units"].items()}
        assert {day for _, _, day in units} == {str(DAY)}  # the bridge's --date reached the device by time sync
        for (store, item, day), n in units.items():
            assert agent.ingest.ledger.total(int(store), int(item), day) == pytest.approx(n)
        assert metric(agent, "edgeship_sale_events_total", transport="serial", outcome="accepted") == 25
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert 'edgeship_bridge_frames_in_total{type="Sale"}' in text
        assert "edgeship_bridge_sales_total" in text and 'outcome="accepted"' in text
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait(10)
        if bridge is not None:
            bridge.send_signal(signal.SIGTERM)
            assert bridge.wait(15) == 0, (tmp_path / "bridge.log").read_text()


def test_several_devices_on_one_bridge_and_a_replug(agent, tmp_path):
    """Two shelves (one link each) in one bridge process: both number their frames from 1, yet neither's
    sales are taken for the other's duplicates, and each gets only its own acks; one is unplugged with a
    sale pending, replugged, and the sale arrives once."""
    a = DeviceSim(PtyTransport(tmp_path / "shelf-a"), items=ITEMS, store=1, rate=0, retry_s=0.3, device_id="shelf-a").start()
    b = DeviceSim(PtyTransport(tmp_path / "shelf-b"), items=ITEMS, store=1, rate=0, retry_s=0.3, device_id="shelf-b").start()
    bridge = Bridge([str(tmp_path / "shelf-a"), str(tmp_path / "shelf-b")], agent.http_url, tmp_path / "bridge",
                    clock=Clock(DAY)).start()  # fmt: skip
    try:
        wait_for(lambda: a.synced and b.synced, "both devices synced")
        seqs_a = [a.sell(103520, q) for q in (1, 2)]
        seqs_b = [b.sell(103520, q) for q in (10, 20)]
        assert seqs_a == seqs_b  # the same sequence numbers: the key is device/boot/seq
        wait_for(lambda: a.stats.acked == 2 and b.stats.acked == 2, "each device's sales acked")
        assert agent.ingest.ledger.total(1, 103520, str(DAY)) == 33
        assert a.stats.acked_units[(1, 103520, str(DAY))] == 3 and b.stats.acked_units[(1, 103520, str(DAY))] == 30
        assert not a.stats.nacks and not b.stats.nacks
        assert [d.device_id for d in bridge.devices] == ["shelf-a", "shelf-b"]

        sample = bridge.metrics.registry.get_sample_value
        connects = sample("edgeship_bridge_link_connects_total")
        b.unplug()
        wait_for(lambda: not bridge.devices[1].link.connected.is_set(), "the bridge noticed the unplug")
        b.sell(105574, 5)  # written into the void: the pty is gone
        assert b.pending == 1
        a.sell(105574, 1)  # the other shelf is unaffected
        wait_for(lambda: a.stats.acked == 3, "shelf-a still served")
        b.replug()
        wait_for(lambda: b.pending == 0 and b.stats.acked == 3, "the pending sale re-sent and acked after the replug")
        assert sample("edgeship_bridge_link_connects_total") >= connects + 1
        assert sample("edgeship_bridge_link_disconnects_total") >= 1
        assert agent.ingest.ledger.total(1, 105574, str(DAY)) == 6
        assert metric(agent, "edgeship_sale_events_total", transport="serial", outcome="accepted") == 6
    finally:
        bridge.stop()
        a.stop()
        b.stop()


class _Noon(Clock):
    """DAY at 12:00 shop time, whatever the wall clock says (the sketch's simulated minutes stay on DAY)."""

    def local_seconds(self) -> int:
        return (DAY - dt.date(1970, 1, 1)).days * 86400 + 12 * 3600


def test_the_compiled_sketch_through_the_bridge_into_the_agent(agent, tmp_path):
    """The reference firmware itself (g++ on the host, Arduino stand-in) on a pty: its hello reaches the bridge,
    its forecast request is answered, a button press becomes one sale in the agent's lag state; after a
    bridge restart it introduces itself again when the new bridge says hello, and sells on."""
    exe = build_sketch(tmp_path)
    dev = PtyTransport(tmp_path / "fw-tty")
    assert dev.master is not None
    shelf = SketchProcess(exe, fd=dev.master)
    bridge = Bridge([str(tmp_path / "fw-tty")], agent.http_url, tmp_path / "bridge", clock=_Noon()).start()

    def sample(b: Bridge, name: str, **labels: str) -> float:
        return b.metrics.registry.get_sample_value(name, labels) or 0.0

    try:
        wait_for(lambda: bridge.devices[0].device_id == "shelf-7", "the sketch's hello")
        wait_for(lambda: sample(bridge, "edgeship_bridge_frames_out_total", type="PredictResponse") >= 1,
                 "its forecast request answered", timeout=60)  # fmt: skip
        assert metric(agent, "edgeship_requests_total", transport="serial", outcome="ok") >= 1
        shelf.press()
        wait_for(lambda: agent.ingest.ledger.total(1, 103520, str(DAY)) == 1, "the button press sold one unit", timeout=60)
        wait_for(lambda: sample(bridge, "edgeship_bridge_frames_out_total", type="Ack") >= 1, "acked")
        bridge.stop()
        bridge = Bridge([str(tmp_path / "fw-tty")], agent.http_url, tmp_path / "bridge", clock=_Noon()).start()
        wait_for(lambda: bridge.devices[0].device_id == "shelf-7", "the sketch re-introduced itself to the new bridge")
        shelf.press()
        wait_for(lambda: agent.ingest.ledger.total(1, 103520, str(DAY)) == 2, "a second sale after the restart", timeout=60)
        assert lag_value(agent, 1, 103520, DAY) == pytest.approx(np.log1p(2), rel=1e-6)
        assert metric(agent, "edgeship_sale_events_total", transport="serial", outcome="accepted") == 2
        assert sample(bridge, "edgeship_bridge_dropped_frames_total", reason="crc") == 0
    finally:
        bridge.stop()
        rc = shelf.close()
        dev.close()
    assert rc in (0, -signal.SIGTERM), shelf.stderr_text()

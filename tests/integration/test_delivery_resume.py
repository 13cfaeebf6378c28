"""Resumable, flow-controlled delivery against a REAL Mosquitto: bytes on the wire per device, a
late joiner, the broker restarted mid-transfer (retained chunks lost: the bundle server heals it),
and an agent process killed -9 mid-transfer (after a restart only the missing chunks are fetched)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud.fleet.publish import Publisher, publish, read_bundle
from tests.bundle_kit import build_bundle
from tests.conftest import Mosquitto
from tests.delivery_kit import Watcher, keypair, ship, start_agent, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "favorita-demand"
CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A signed bundle of about 1 MiB (a padding member of random bytes) and its key."""
    d = tmp_path_factory.mktemp("big")
    k = keypair(d / "keys")
    padding = random.Random(3).randbytes(1 << 20)
    path, _ = build_bundle(d / f"{MODEL}-v1.bundle.tar", k.private, version=1, extra_members={"padding.bin": padding})
    return path, k


def test_bytes_on_the_wire_late_joiner_and_flow_control(tmp_path, big, mosquitto):
    bundle, k = big
    size = bundle.stat().st_size
    # published before the device exists: it joins late and pulls everything from the retained copies
    publish(bundle, mosquitto.url, key=k.key_path, progress=False)
    agent = start_agent(tmp_path, mosquitto.url, trust=[k.pub_path], transfer_window=4)
    try:
        wait_for(lambda: agent.predictor is not None and agent.predictor.version == 1, "v1 active", timeout=30)
        stats = agent.mqtt.delivery.stats
        assert stats["chunk_bytes"] == size  # each chunk crossed the wire exactly once
        assert stats["chunk_bytes"] + stats["meta_bytes"] <= 1.05 * size, stats
        assert stats["fetch_requests"] == 0
    finally:
        agent.stop()


def test_broker_restarted_mid_transfer_completes_by_resuming(tmp_path, big, tmp_path_factory):
    bundle, k = big
    broker = Mosquitto(tmp_path_factory.mktemp("mq-restart")).start()  # persistence off: a restart loses retained data
    pub = Publisher(broker.url).connect()
    agent = None
    # the bundle server stays up: `edgeship serve-bundles` (the rollout controller embeds the same)
    # no --chunk-size: the device's chunk requests name the chunking of its signed announcement
    server = subprocess.Popen([sys.executable, "-m", "edgeship", "serve-bundles", str(bundle), "--broker", broker.url],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=open(tmp_path / "server.log", "wb"), text=True)  # fmt: skip
    try:
        assert server.stdout.readline().startswith("serving 1 bundle")
        b = read_bundle(bundle, CHUNK)
        agent = start_agent(tmp_path, broker.url, trust=[k.pub_path], transfer_max_bps=256 * 1024, chunk_timeout_s=1.0)
        ship(pub, bundle, k.private, chunk_size=CHUNK)
        total = len(b.chunk_sha256)
        info = wait_for(lambda: (i := agent.mqtt.delivery.info()) and i.get("have", 0) >= total // 3 and i, "a third")
        assert info["have"] < total
        broker.stop()
        time.sleep(1.0)
        broker.start()  # same port; retained chunks and announcement are gone
        wait_for(lambda: agent.predictor is not None and agent.predictor.version == 1, "v1 after the restart", timeout=60)
        stats = agent.mqtt.delivery.stats
        assert stats["fetch_requests"] >= 1  # the device asked; the server re-published what was lost
        assert "re-published" in (tmp_path / "server.log").read_text()
        assert stats["chunks"] == total  # every chunk stored once: the transfer resumed, not restarted
        assert stats["chunk_bytes"] <= b.size + 2 * 8 * CHUNK  # at most a window or two re-sent
    finally:
        if agent is not None:
            agent.stop()
        server.terminate()
        server.wait(10)
        pub.close()
        broker.stop()


def _agent_cmd(state: Path, broker: str, pub: Path, rate: int) -> list[str]:
    return [sys.executable, "-m", "edgeship", "agent", "--device-id", "store-9", "--state-dir", str(state), "--trust", str(pub),
            "--broker", broker, "--runtime", "fake", "--max-transfer-rate", str(rate)]  # fmt: skip


def _on_disk(state: Path, bundle_id: str) -> int:
    try:
        data = json.loads((state / "downloads" / f"{bundle_id}.chunks.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(1 for b in bytes.fromhex(data["received"]) if b)


def test_agent_killed_mid_transfer_resumes_with_only_the_missing_chunks(tmp_path, big, mosquitto):
    bundle, k = big
    state = tmp_path / "store-9"
    watch = Watcher(mosquitto.url)
    b = read_bundle(bundle, CHUNK)
    total = len(b.chunk_sha256)
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen(_agent_cmd(state, mosquitto.url, k.pub_path, 200_000), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent1.log", "wb"))  # fmt: skip
    try:
        publish(bundle, mosquitto.url, key=k.key_path, chunk_size=CHUNK, progress=False)
        wait_for(lambda: _on_disk(state, b.bundle_id) >= total // 3, "a third on disk", timeout=30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        held = _on_disk(state, b.bundle_id)
        assert 0 < held < total, held
        # restarted: the part file is re-verified and only the missing chunks are fetched
        proc = subprocess.Popen(_agent_cmd(state, mosquitto.url, k.pub_path, 10_000_000), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent2.log", "wb"))  # fmt: skip
        done = watch.wait("store-9", "downloaded", timeout=60, version=1)["detail"]
        assert done["resumed_chunks"] >= held and done["resumed_chunks"] + done["fetched_chunks"] == total
        assert done["fetched_bytes"] <= b.size - held * CHUNK + CHUNK
        watch.wait("store-9", "active", timeout=30, version=1)
    finally:
        proc.kill()
        proc.wait(10)
        watch.close()

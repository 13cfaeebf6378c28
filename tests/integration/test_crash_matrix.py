"""Issue 4 item 4: the kill -9 matrix. The real agent (``edgeship agent``, real LiteRT, real
Mosquitto on a loopback port) is killed with SIGKILL at named points of an update — while chunks
arrive, after the download, during and after unpacking, around the pointer write and the swap,
while pruning, during an offline rollback — by ``EDGESHIP_CRASH_AT`` (:mod:`edge.store.crash`). After a
restart it must serve AT ONCE a fully verified model (old or new, as the point dictates, never a
partial one): ``/healthz`` names a version whose store folder verifies against the signature and
whose digest ``active.json`` holds, every version folder on disk verifies, no temp leftovers, and
predictions come from that version's own model. Then the update completes (the retained
announcement is resumed, or the side-loaded bundle installed again).

Cases run side by side (one fleet id each on one broker) to stay fast.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from edge.runtimes import get_runtime
from edge.store.model_store import ModelStore
from tests.bundle_kit import LINEAR_WEIGHTS, build_bundle, real_models
from edge.store.versions import VersionHistory
from models.bundle import sha256_file, verify_unpacked
from models.signing import generate_keypair
from tests.conftest import require

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}

#: (crash point, how v2 arrives, the version served right after the restart)
CASES = [
    ("after_chunk_1", "mqtt", 1),
    ("after_chunk_9", "mqtt", 1),
    ("after_download", "mqtt", 1),
    ("during_unpack", "mqtt", 1),
    ("after_unpack", "mqtt", 1),
    ("before_pointer_write", "mqtt", 1),
    ("after_pointer_write_before_swap", "mqtt", 2),
    ("after_swap", "mqtt", 2),
    ("during_prune", "mqtt", 2),
    ("after_unpack", "sideload", 1),
    ("after_pointer_write_before_swap", "sideload", 2),
    ("during_prune", "sideload", 2),
]


def weights_for(version: int) -> np.ndarray:
    w = LINEAR_WEIGHTS.copy()
    w[8] = 1.0 + 0.25 * version
    return w


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    require(get_runtime("litert").available()[0], "ai-edge-litert is not installed")
    private, public = generate_keypair()
    d = tmp_path_factory.mktemp("crash")
    pem = d / "signing.pub"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    bundles = {}
    for v in (1, 2):
        w = weights_for(v)
        bundles[v] = build_bundle(
            d / f"favorita-demand-v{v}.bundle.tar", private, version=v,
            model_bytes=real_models(("tflite-fp32",), w), expected_weights=w,
        )[0]  # fmt: skip
    from edge.serving.predictor import Predictor

    predictions = {}
    for v, path in bundles.items():
        with Predictor.open(path, trust=[public]) as p:
            predictions[v] = p.predict([ROW])[0]
    assert predictions[1] != predictions[2]
    return {"dir": d, "private": private, "public": public, "pem": pem, "bundles": bundles, "predictions": predictions}


class AgentProcess:
    def __init__(self, args: list[str], log: Path, crash_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGESHIP_CRASH_AT"}
        if crash_at:
            env["EDGESHIP_CRASH_AT"] = crash_at
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeship", "agent", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True
            )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def url(self) -> str:
        line = self.proc.stdout.readline().strip()  # printed once it serves
        assert line.startswith("http://"), f"agent did not start ({self.proc.poll()}):\n{self.tail()}"
        return line

    def wait_killed(self, timeout: float = 45) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the crash point was never reached in {timeout} s:\n{self.tail()}") from None
        assert rc == -signal.SIGKILL, f"agent exited {rc}, not by SIGKILL:\n{self.tail()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check_serving(url: str, state: Path, digests: dict[int, str], expected_version: int) -> float:
    """What serves is the version the store's pointer names, with its digest; returns its prediction."""
    h = httpx.get(f"{url}/healthz", timeout=5).json()
    assert h["status"] == "ok", h
    version, digest = h["model"]["version"], h["model"]["digest"]
    assert version == expected_version, h
    assert digest == digests[version]
    pointer = json.loads((state / "active.json").read_text())
    assert (pointer["version"], pointer["digest"]) == (version, digest)
    r = httpx.post(f"{url}/v1/predict", json={"instances": [ROW]}, timeout=5)
    assert r.status_code == 200 and r.json()["model"]["version"] == version
    return r.json()["predictions"][0]


def check_disk(state: Path, public, digests: dict[int, str]) -> None:
    """Every version folder verifies against the signature (nothing partial); no temp leftovers."""
    store = ModelStore(state, [public])
    for v in store.versions():
        bundle = verify_unpacked(store.version_dir(v), [public])  # raises on anything partial
        assert bundle.digest == digests[v]
    assert not [p.name for p in store.models_dir.iterdir() if p.name.startswith(".")]


def run_case(i: int, point: str, how: str, after_restart: int, material: dict, broker) -> str:
    from cloud.fleet.publish import publish

    work = material["dir"] / f"case-{i}-{point}-{how}"
    state = work / "state"
    work.mkdir()
    bundles, public = material["bundles"], material["public"]
    digests = {v: sha256_file(p) for v, p in bundles.items()}
    predictions = material["predictions"]
    store, history = ModelStore(state, [public]), VersionHistory(state)
    b1 = store.install(bundles[1])  # v1 was running before
    store.activate(1)
    history.record_activation(1, b1.digest)
    fleet = f"crash-{i}"
    args = ["--device-id", "dev", "--fleet", fleet, "--state-dir", str(state), "--trust", str(material["pem"]),
            "--http", "127.0.0.1:0", "--keep-versions", "1", "--broker", broker.url]  # fmt: skip
    if how == "mqtt":
        publish(bundles[2], broker.url, key=material["private"], fleet=fleet, chunk_size=1024, progress=False)
    else:
        args += ["--install", str(bundles[2])]

    crashed = AgentProcess(args, work / "agent.log", crash_at=point)
    crashed.wait_killed()

    # 1. Restart as it is, offline (no broker, nothing side-loaded): it serves at once, and what it
    #    serves is verified; nothing partial was left on disk (start-up recovery tidied it).
    offline = [a for a in args[: args.index("--broker")]]
    agent = AgentProcess(offline, work / "agent.log")
    try:
        url = agent.url()
        pred = check_serving(url, state, digests, after_restart)
        check_disk(state, public, digests)
    finally:
        agent.stop()
    assert pred == predictions[after_restart]  # that version's own model answers

    # 2. Restart with the broker (or the side-loaded file): the update completes.
    agent = AgentProcess(args, work / "agent.log")
    try:
        url = agent.url()
        deadline = time.monotonic() + 45
        while (h := httpx.get(f"{url}/healthz", timeout=5).json())["model"]["version"] != 2:
            assert agent.proc.poll() is None, agent.tail()
            assert time.monotonic() < deadline, f"the update did not complete after the restart: {h}\n{agent.tail()}"
            time.sleep(0.1)
        assert check_serving(url, state, digests, 2) == predictions[2]
    finally:
        agent.stop()
    check_disk(state, public, digests)
    return f"{point}/{how}"


def test_kill9_matrix(material, mosquitto):
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(CASES)) as pool:
        futures = {
            pool.submit(run_case, i, point, how, after, material, mosquitto): (point, how)
            for i, (point, how, after) in enumerate(CASES)
        }
        failures = []
        for f in concurrent.futures.as_completed(futures):
            try:
                f.result()
            except Exception as exc:  # collect them all: one report for the whole matrix
                failures.append(f"{'/'.join(futures[f])}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_kill9_during_offline_rollback_completes_it(material):
    """``edgeship agent rollback`` killed between writing its intent and moving the pointer: the
    next start finishes the rollback instead of serving the version being rolled back."""
    work = material["dir"] / "rollback"
    state = work / "state"
    work.mkdir()
    bundles, public = material["bundles"], material["public"]
    store, history = ModelStore(state, [public]), VersionHistory(state)
    for v in (1, 2):
        b = store.install(bundles[v])
        store.activate(v)
        history.record_activation(v, b.digest)
    env = {**os.environ, "EDGESHIP_CRASH_AT": "during_rollback"}
    cmd = [sys.executable, "-m", "edgeship", "agent", "rollback", "--state-dir", str(state), "--trust", str(material["pem"])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((state / "active.json").read_text())["version"] == 2  # killed before the pointer moved
    agent = AgentProcess(["--device-id", "dev", "--state-dir", str(state), "--trust", str(material["pem"]),
                          "--http", "127.0.0.1:0"], work / "agent.log")  # fmt: skip
    try:
        url = agent.url()
        digests = {v: sha256_file(p) for v, p in bundles.items()}
        assert check_serving(url, state, digests, 1) == material["predictions"][1]
    finally:
        agent.stop()
    check_disk(state, public, digests)

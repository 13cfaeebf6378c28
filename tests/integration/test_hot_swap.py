"""Issue 4 item 3: zero-downtime hot swap. Steady HTTP load from a thread pool (keep-alive
connections, loopback, bounded in count and time) while the agent swaps through five new versions
(real LiteRT models, each loaded, warmed up and gated beside the serving one): no request fails,
every response names a version that was active while it ran, the prediction is that version's
own, each client sees versions only move forward, and every swapped-out model is closed."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from edge.agent import Agent
from edge.config import AgentConfig
from edge.runtimes import get_runtime
from tests.bundle_kit import LINEAR_WEIGHTS, build_bundle, real_models
from models.signing import generate_keypair
from tests.conftest import require

pytestmark = pytest.mark.integration

ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": True}
VERSIONS = range(1, 7)
CLIENTS = 6
MAX_REQUESTS = 5000  # per client
MAX_SECONDS = 20.0


def weights_for(version: int) -> np.ndarray:
    w = LINEAR_WEIGHTS.copy()
    w[8] = 1.0 + 0.05 * version  # every version predicts something different for the same row
    return w


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    require(get_runtime("litert").available()[0], "ai-edge-litert is not installed")
    private, public = generate_keypair()
    d = tmp_path_factory.mktemp("swap")
    pem = d / "signing.pub"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    bundles = {}
    for v in VERSIONS:
        w = weights_for(v)
        bundles[v] = build_bundle(
            d / f"v{v}.tar", private, version=v, model_bytes=real_models(("tflite-fp32",), w), expected_weights=w
        )[0]
    return d, pem, bundles


def test_swaps_under_steady_load_drop_nothing(setup):
    d, pem, bundles = setup
    cfg = AgentConfig(device_id="d1", state_dir=d / "state", trust=[pem], http="127.0.0.1:0", keep_versions=2)
    agent = Agent(cfg).start()
    results: list[list[tuple]] = [[] for _ in range(CLIENTS)]
    errors: list[str] = []
    stop = threading.Event()
    installs: dict[int, tuple[float, float]] = {}  # version -> (install called, install returned)
    swapped_out: list = []

    def client(i: int) -> None:
        with httpx.Client(base_url=agent.http_url, timeout=10) as c:
            for _ in range(MAX_REQUESTS):
                if stop.is_set():
                    return
                t0 = time.monotonic()
                try:
                    r = c.post("/v1/predict", json={"instances": [ROW]})
                except httpx.HTTPError as exc:
                    errors.append(f"client {i}: {exc!r}")
                    continue
                t1 = time.monotonic()
                body = r.json()
                if r.status_code != 200:
                    errors.append(f"client {i}: {r.status_code} {body}")
                    continue
                results[i].append((t0, t1, body["model"]["version"], body["model"]["digest"], body["predictions"][0]))

    try:
        t = time.monotonic()
        assert agent.install_and_activate(bundles[1])
        installs[1] = (t, time.monotonic())
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + MAX_SECONDS
        time.sleep(0.3)  # steady state first
        for v in VERSIONS[1:]:
            swapped_out.append(agent.predictor)
            t = time.monotonic()
            assert agent.install_and_activate(bundles[v]), agent.device_state().last_update
            installs[v] = (t, time.monotonic())
            time.sleep(0.25)
            assert time.monotonic() < deadline
        stop.set()
        for th in threads:
            th.join(timeout=MAX_SECONDS)
        digests = {v: agent.store.active().digest for v in [VERSIONS[-1]]}
        retiring = agent.slot.retiring
        metrics = agent.metrics.exposition()[0].decode()
    finally:
        stop.set()
        agent.stop()

    assert not errors, errors[:5]
    flat = [r for rs in results for r in rs]
    assert len(flat) >= 100, f"only {len(flat)} requests were made"
    # every response names a version that was active at some moment while the request ran
    for t0, t1, version, _digest, _pred in flat:
        active_from = installs[version][0]
        active_until = installs[version + 1][1] if version + 1 in installs else float("inf")
        assert active_from <= t1 and t0 <= active_until, (version, t0, t1, installs)
    # ... and the prediction is that version's own model's (one value per version, all different)
    per_version: dict[int, set[float]] = {}
    for *_, version, _digest, pred in flat:
        per_version.setdefault(version, set()).add(pred)
    assert set(per_version) == set(VERSIONS), f"not every version served: {sorted(per_version)}"
    assert all(len(p) == 1 for p in per_version.values()), per_version
    assert len({next(iter(p)) for p in per_version.values()}) == len(VERSIONS)
    assert {r[3] for r in flat if r[2] == VERSIONS[-1]} == {digests[VERSIONS[-1]]}
    # versions only move forward for each client (a request never sees an older model than before)
    for rs in results:
        seen = [r[2] for r in rs]
        assert seen == sorted(seen)
    # the old models were unloaded once their in-flight requests finished
    assert retiring == 0
    assert [p.version for p in swapped_out] == list(VERSIONS[:-1]) and all(p.closed for p in swapped_out)
    assert f"edgeship_model_swaps_total {len(VERSIONS) - 1}.0" in metrics

"""Staged rollouts against a REAL Mosquitto and three real agents (LiteRT, on-device gate): a canary
of 1 in 3 then the rest; a deliberately bad model fails the canary's gate, the rollout aborts, the
canary is rolled back and the other devices never get it; an abort from another process rolls an
active canary back; selection by attributes; ``fleet status`` and ``rollout status`` from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cloud.fleet.publish import publish
from cloud.fleet.rollout import Rollout, status
from edge.runtimes import get_runtime
from tests.bundle_kit import build_bundle, build_wrong_model_bundle, real_models
from tests.conftest import require
from tests.delivery_kit import Watcher, keypair, start_agent, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "favorita-demand"
DEVICES = {"store-1": "A", "store-2": "A", "store-3": "B"}


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, mosquitto_module):
    require(get_runtime("litert").available()[0], "LiteRT is needed for the on-device gate")
    d = tmp_path_factory.mktemp("rollout")
    k = keypair(d / "keys")
    good = {v: build_bundle(d / f"{MODEL}-v{v}.bundle.tar", k.private, version=v, model_bytes=real_models(("tflite-fp32",)))[0]
            for v in (1, 2, 4, 5)}  # fmt: skip
    bad, _ = build_wrong_model_bundle(d / f"{MODEL}-v3.bundle.tar", k.private, version=3)
    broker = mosquitto_module.url
    agents = {
        dev: start_agent(d, broker, dev, trust=[k.pub_path], runtime=None, attributes={"store_type": t})
        for dev, t in DEVICES.items()
    }
    watch = Watcher(broker)
    publish(good[1], broker, key=k.key_path, progress=False)
    for a in agents.values():
        wait_for(lambda a=a: a.predictor is not None and a.predictor.version == 1, "v1 everywhere", timeout=30)
    yield {"dir": d, "key": k, "good": good, "bad": bad, "broker": broker, "agents": agents, "watch": watch}
    watch.close()
    for a in agents.values():
        a.stop()


@pytest.fixture(scope="module")
def mosquitto_module(tmp_path_factory):
    from tests.conftest import Mosquitto

    broker = Mosquitto(tmp_path_factory.mktemp("mq-rollout")).start()
    yield broker
    broker.stop()


def _versions(f) -> dict[str, int | None]:
    return {d: (a.predictor.version if a.predictor else None) for d, a in f["agents"].items()}


def _rollout(f, bundle: Path, state: Path, **kw) -> Rollout:
    return Rollout(bundle, f["broker"], key=f["key"].key_path, state_dir=state, discover_s=1.0, gate_timeout=30, **kw)


def test_canary_then_waves_then_bad_model_aborts_and_only_the_canary_saw_it(fleet, tmp_path):
    f, state = fleet, tmp_path / "ctl"
    # 1. a good v2: canary of 1 in 3, then everyone else
    result = _rollout(f, f["good"][2], state, canary=1, waves=[1.0]).run()
    assert result["phase"] == "succeeded", result
    assert [w["devices"] for w in result["waves"]] == [["store-1"], ["store-2", "store-3"]]
    assert _versions(f) == {"store-1": 2, "store-2": 2, "store-3": 2}
    assert all(result["devices"][d]["gate"] == "gate_passed" for d in DEVICES)  # the on-device gate ran
    # status from another process
    out = _cli("rollout", "status", "--state-dir", str(state), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["phase"] == "succeeded", out.stderr

    # 2. a deliberately bad v3: the canary's on-device gate fails → abort → canary rolled back
    result = _rollout(f, f["bad"], state, canary=1, waves=[0.5, 1.0]).run()
    assert result["phase"] == "rolled_back", result
    assert result["reason"].startswith("gate_failed>0: store-1")
    assert result["devices"]["store-1"]["status"] == "rolled_back"
    assert result["devices"]["store-1"]["figures"]["nwrmsle"] > result["devices"]["store-1"]["figures"]["expected_nwrmsle"]
    assert {result["devices"][d]["status"] for d in ("store-2", "store-3")} == {"pending"}
    assert _versions(f) == {"store-1": 2, "store-2": 2, "store-3": 2}
    w = f["watch"]
    assert w.of("store-1", "gate_failed", version=3)
    for d in ("store-2", "store-3"):  # never got it: not a byte, not an event
        assert not w.of(d, "downloading", version=3) and f["agents"][d].mqtt.delivery.info() is None
    # the fleet view says so too
    out = _cli("fleet", "status", "--broker", f["broker"], "--json")
    rows = {r["device"]: r for r in json.loads(out.stdout)}
    assert rows["store-1"]["gate"]["result"] == "gate_failed" and rows["store-1"]["gate"]["version"] == 3
    assert rows["store-2"]["gate"]["result"] == "gate_passed" and rows["store-2"]["version"] == 2
    assert all(r["online"] for r in rows.values()) and rows["store-3"]["attributes"] == {"store_type": "B"}
    table = _cli("fleet", "status", "--broker", f["broker"]).stdout
    assert "store-1" in table and "failed (v3" in table and "last seen" in table


def test_abort_from_another_process_rolls_an_active_canary_back_and_select_by_attribute(fleet, tmp_path):
    f, state = fleet, tmp_path / "ctl"
    before = _versions(f)
    assert set(before.values()) == {2}
    r = _rollout(f, f["good"][4], state, canary=1, waves=[1.0], select={"store_type": "A"}, soak=60)
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("result", r.run()))
    t.start()
    try:
        wait_for(lambda: f["agents"]["store-1"].predictor.version == 4, "the canary on v4", timeout=30)
        out = _cli("rollout", "abort", "--state-dir", str(state), "--reason", "latency looks odd")
        assert out.returncode == 0, out.stderr
    finally:
        t.join(60)
    result = box["result"]
    assert result["phase"] == "rolled_back" and "latency looks odd" in result["reason"]
    assert result["skipped"] == {"store-3": "not selected"}
    assert [w["devices"] for w in result["waves"]] == [["store-1"], ["store-2"]]
    wait_for(lambda: f["agents"]["store-1"].predictor.version == 2, "the canary back on v2")
    f["watch"].wait("store-1", "rolled_back", version=2)
    assert _versions(f) == {"store-1": 2, "store-2": 2, "store-3": 2}
    assert not f["watch"].of("store-2", "downloading", version=4)
    assert status(state)["devices"]["store-1"]["status"] == "rolled_back"


def test_rollback_command_fleet_wide_and_abort_without_a_live_controller(fleet, tmp_path):
    f, state = fleet, tmp_path / "ctl"
    broker, key = f["broker"], str(f["key"].key_path)
    assert set(_versions(f).values()) == {2}
    # edgeship rollback --to 1: a signed rollback command to the whole fleet; v1 is still installed
    # on every device, so each activates it from its own store
    out = _cli("rollback", "--to", "1", "--bundle", str(f["good"][1]), "--broker", broker, "--key", key)
    assert out.returncode == 0 and "every device of fleet default" in out.stdout, out.stderr
    for d in DEVICES:
        wait_for(lambda d=d: f["agents"][d].predictor.version == 1, f"{d} back on v1")
        f["watch"].wait(d, "rolled_back", version=1)
    # a version rolled back from is not installed again (edge.store.versions): an assignment of it is
    # refused at once, so the controller aborts instead of waiting for the gate timeout
    result = _rollout(f, f["good"][2], state, canary=1, waves=[1.0]).run()
    assert result["phase"] == "rolled_back" and "store-1 (rolled_back)" in result["reason"], result["reason"]
    assert set(_versions(f).values()) == {1}
    # a rollout whose controller died: `rollout abort` with --broker/--key rolls its devices back itself
    result = _rollout(f, f["good"][5], state, canary=1, waves=[1.0]).run()
    assert result["phase"] == "succeeded" and set(_versions(f).values()) == {5}
    dead = json.loads((state / "rollout.json").read_text())
    dead.update(phase="running", heartbeat=0)  # as a killed controller leaves it
    (state / "rollout.json").write_text(json.dumps(dead))
    out = _cli("rollout", "abort", "--state-dir", str(state))
    assert out.returncode == 2 and "--broker and --key" in out.stderr
    out = _cli("rollout", "abort", "--state-dir", str(state), "--broker", broker, "--key", key, "--reason", "controller lost")
    assert out.returncode == 0, out.stderr
    for d in DEVICES:
        wait_for(lambda d=d: f["agents"][d].predictor.version == 1, f"{d} rolled back to v1 by the offline abort")
    assert status(state)["phase"] == "rolled_back"

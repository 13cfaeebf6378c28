"""Issue 4 item 2: the on-device gate. The bundle's holdout slice runs through the chosen runtime on
this device; NWRMSLE and output parity are compared with the signed manifest's numbers, and a model
that fails is never activated — reported with the numbers (event, state, metric). A deliberately
wrong model in a validly signed bundle is caught."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest

from cloud.training.bundle import write_bundle
from cloud.training.metrics import nwrmsle_log
from edge.agent import Agent
from edge.config import AgentConfig
from edge.store.gate import GateFailed, gate_predictor, load_holdout, run_gate
from edge.serving.predictor import Predictor
from edge.runtimes import get_runtime
from tests.bundle_kit import LINEAR_WEIGHTS, build_bundle, build_wrong_model_bundle, real_models
from models.bundle import read_manifest
from models.metrics import weighted_rmse_log, weights
from tests.conftest import require

ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}


def real_runtimes() -> None:
    require(get_runtime("litert").available()[0] and get_runtime("onnxruntime").available()[0], "LiteRT and ONNX Runtime needed")


def test_one_nwrmsle_formula_for_cloud_and_edge():
    rng = np.random.default_rng(1)
    y, p = rng.random(50), rng.random(50)
    perishable = rng.random(50) < 0.3
    assert nwrmsle_log(y, p, perishable) == weighted_rmse_log(y, p, weights(perishable))
    with pytest.raises(ValueError):
        weighted_rmse_log([1.0], [1.0, 2.0], [1.0])


@pytest.mark.parametrize("variant", ["tflite-fp32", "onnx-fp32"])
def test_a_good_model_passes_on_its_runtime(tmp_path, keys, variant):
    real_runtimes()
    path, manifest = build_bundle(tmp_path / "b.tar", keys[0], variants=(variant,), model_bytes=real_models((variant,)))
    with Predictor.open(path, trust=[keys[1]]) as p:
        result = gate_predictor(p)
        assert result.passed and result.result == "passed" and result.rows == 16
        assert result.runtime == ("litert" if variant.startswith("tflite") else "onnxruntime")
        assert result.nwrmsle == pytest.approx(manifest.variant(variant).metrics["holdout_nwrmsle"], abs=1e-6)
        assert result.p99_abs_diff < 1e-5 and result.reference == variant
        assert p.predict([ROW])  # still serves single rows after the 16-row gate batch


@pytest.mark.parametrize("variant", ["tflite-fp32", "onnx-fp32"])
def test_a_wrong_model_in_a_valid_bundle_fails_with_the_numbers(tmp_path, keys, variant):
    real_runtimes()
    path, manifest = build_wrong_model_bundle(tmp_path / "bad.tar", keys[0], variants=(variant,))
    read_manifest(path, [keys[1]])  # signed and intact: only the gate can tell
    with Predictor.open(path, trust=[keys[1]]) as p:
        result = gate_predictor(p)
    assert not result.passed and result.result == "failed"
    expected = manifest.variant(variant).metrics["holdout_nwrmsle"]
    assert result.expected_nwrmsle == expected and result.nwrmsle > expected * 1.02
    assert result.p99_abs_diff > 0.1 and result.max_p99_abs_diff == 0.001
    assert "NWRMSLE" in result.message and "p99" in result.message
    figures = result.figures()
    assert {"nwrmsle", "expected_nwrmsle", "max_nwrmsle", "p99_abs_diff", "max_p99_abs_diff", "rows"} <= set(figures)
    assert set(result.numbers()) <= set(figures) and all(isinstance(v, float) for v in result.numbers().values())
    err = GateFailed(result)
    assert err.reason == "gate_failed" and err.result is result


def test_margin_and_tolerance_are_what_decide(tmp_path, keys):
    path, manifest = build_bundle(tmp_path / "b.tar", keys[0])
    with Predictor.open(path, trust=[keys[1]], runtime="fake") as p:
        holdout = load_holdout(p.bundle)
        truth = (holdout.num @ LINEAR_WEIGHTS).astype(np.float32)

        def nudged(by):
            return lambda enc: truth + by

        # A small shift within the tolerance (0.001) and the margin (2 %) passes.
        assert run_gate(p.bundle, p.variant, "fake", nudged(0.0005)).passed
        # Past the recipe's p99 tolerance it fails on parity alone (with a generous margin).
        slight = run_gate(p.bundle, p.variant, "fake", nudged(0.002), margin=0.5)
        assert not slight.passed and "p99" in slight.message and "NWRMSLE" not in slight.message
        # Within the tolerance but with no NWRMSLE margin left, it fails on NWRMSLE alone.
        worse = run_gate(p.bundle, p.variant, "fake", nudged(0.0009), margin=0.0)
        assert not worse.passed and "NWRMSLE" in worse.message and "p99" not in worse.message
        assert run_gate(p.bundle, p.variant, "fake", nudged(0.0), margin=0.0).passed
        # NaN or a crashing runtime is a failed gate, not a crashed agent
        assert not run_gate(p.bundle, p.variant, "fake", lambda enc: truth * np.nan).passed
        assert not run_gate(p.bundle, p.variant, "fake", lambda enc: 1 / 0).passed


def _without_references(src, dst, private_key):
    """A validly signed copy of ``src`` with no holdout_nwrmsle, tolerances or pred_* arrays."""
    import tarfile

    with tarfile.open(src) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar if i.name not in ("manifest.json", "signature.json")}
        manifest = json.loads(tar.extractfile("manifest.json").read())
    with np.load(io.BytesIO(members["holdout.npz"])) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("pred_")}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    members["holdout.npz"] = buf.getvalue()
    fields = {k: v for k, v in manifest.items() if k != "files"}
    fields["parameters"] = {"recipe": "old"}
    for v in fields["variants"]:
        v["metrics"].pop("holdout_nwrmsle")
    return write_bundle(dst, fields, members, private_key)[0]


def test_a_bundle_without_reference_numbers(tmp_path, keys):
    src, _ = build_bundle(tmp_path / "b.tar", keys[0])
    old = _without_references(src, tmp_path / "old.tar", keys[0])
    with Predictor.open(old, trust=[keys[1]], runtime="fake") as p:
        strict = gate_predictor(p)
        assert strict.result == "failed" and "lacks the gate's reference numbers" in strict.message
        assert gate_predictor(p, require=False).result == "skipped"


# -- in the agent ---------------------------------------------------------------------------------
def test_agent_refuses_a_model_that_fails_the_gate_and_keeps_serving(tmp_path, keys):
    real_runtimes()
    private, _, pem = keys
    good, _ = build_bundle(tmp_path / "v1.tar", private, version=1, model_bytes=real_models(("tflite-fp32",)))
    bad, _ = build_wrong_model_bundle(tmp_path / "v2.tar", private, version=2)
    cfg = AgentConfig(device_id="d1", state_dir=tmp_path / "s", trust=[pem], http="127.0.0.1:0")
    with Agent(cfg) as agent:
        assert agent.install_and_activate(good)
        before = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]}).json()
        assert not agent.install_and_activate(bad)
        h = httpx.get(f"{agent.http_url}/healthz").json()
        assert h["model"]["version"] == 1
        assert httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]}).json() == before
        last = agent.device_state().last_update
        assert (last.version, last.outcome, last.reason) == (2, "gate_failed", "gate_failed")
        assert last.figures["nwrmsle"] > last.figures["max_nwrmsle"] and last.figures["p99_abs_diff"] > 0.1
        assert agent.store.versions() == [1] and agent.store.active().version == 1  # nothing half-installed
        assert [a["version"] for a in agent.history.activations()] == [1]
        text = httpx.get(f"{agent.http_url}/metrics").text
        assert 'edgeship_gate_runs_total{result="failed"} 1.0' in text
        assert 'edgeship_gate_runs_total{result="passed"} 1.0' in text
        assert 'edgeship_model_updates_total{outcome="gate_failed"} 1.0' in text


def test_agent_gate_modes(tmp_path, keys):
    private, _, pem = keys
    src, _ = build_bundle(tmp_path / "b.tar", private, version=1)
    old = _without_references(src, tmp_path / "old.tar", private)
    base = {"device_id": "d1", "trust": [pem], "runtime": "fake"}
    with Agent(AgentConfig(state_dir=tmp_path / "a", **base)) as agent:
        assert not agent.install_and_activate(old)  # require (default): no reference numbers, no activation
        assert agent.device_state().last_update.outcome == "gate_failed"
    with Agent(AgentConfig(state_dir=tmp_path / "b", gate="if_present", **base)) as agent:
        assert agent.install_and_activate(old)
        assert 'edgeship_gate_runs_total{result="skipped"} 1.0' in agent.metrics.exposition()[0].decode()
    with Agent(AgentConfig(state_dir=tmp_path / "c", gate="off", **base)) as agent:
        assert agent.install_and_activate(old)
        assert "edgeship_gate_runs_total" not in agent.metrics.exposition()[0].decode().replace("# HELP edgeship_gate_runs_total", "").replace("# TYPE edgeship_gate_runs_total", "")


def test_gate_failure_is_reported_over_mqtt(tmp_path, keys, mosquitto):
    real_runtimes()
    from tests.unit.test_edge_agent import Fleet, wait_for

    private, _, pem = keys
    good, _ = build_bundle(tmp_path / "favorita-demand-v1.bundle.tar", private, version=1, model_bytes=real_models(("tflite-fp32",)))
    bad, _ = build_wrong_model_bundle(tmp_path / "favorita-demand-v2.bundle.tar", private, version=2)
    fleet = Fleet(mosquitto.url, key=private)  # signs the targets (edge.delivery.updater refuses unsigned)
    cfg = AgentConfig(device_id="store-1", state_dir=tmp_path / "s", trust=[pem], broker=mosquitto.url)
    agent = Agent(cfg).start()
    try:
        assert agent.mqtt.wait_connected(10)
        fleet.publish_bundle(good)
        wait_for(lambda: agent.predictor is not None and agent.predictor.version == 1, "v1 active")
        fleet.publish_bundle(bad)
        event = wait_for(lambda: [e for e in fleet.events() if e["kind"] == "gate_failed"], "gate_failed event")[0]
        d = event["detail"]
        assert d["version"] == 2 and d["reason"] == "gate_failed" and d["nwrmsle"] > d["expected_nwrmsle"]
        assert d["p99_abs_diff"] > d["max_p99_abs_diff"] and d["variant"] == "tflite-fp32"
        passed = [e for e in fleet.events() if e["kind"] == "gate_passed"]
        assert passed and passed[0]["detail"]["version"] == 1
        assert agent.predictor.version == 1
        # refused for good: the retained announcement is not fetched again
        assert agent.should_fetch(_ann(bad)) is not None
    finally:
        agent.stop()
        fleet.close()


def _ann(path):
    from cloud.fleet.publish import announcement_for

    return announcement_for(path, 4096)[0]

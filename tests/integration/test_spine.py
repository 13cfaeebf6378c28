"""The spine, end to end, with real pieces: synthetic Favorita data → `edgeship train` (real Keras,
real TFLite/ONNX quantisation, real Ed25519) → `edgeship publish` over a real Mosquitto → a real
agent process (LiteRT) serving HTTP; a byte flipped in a newer bundle is refused while the old model
keeps serving; a restart with the broker down still serves.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from cloud.training.bundle import write_bundle
from tests.bundle_kit import flip_member_byte
from models import topics
from models.broker import BrokerURL, new_client
from models.bundle import read_manifest
from models.messages import DeviceState
from models.signing import load_private_key, load_public_key
from tests.conftest import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgeship", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def _http(url: str, body: object | None = None) -> tuple[int, dict]:
    from edgeship.demo import http_json

    return http_json(url, body)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic data, keys and one trained v1 bundle, made through the CLI as a user would."""
    work = tmp_path_factory.mktemp("spine")
    _run("data", "synth", "--out", str(work / "data"), "--stores", "3", "--items", "24", "--days", "400", "--seed", "7")
    _run("keys", "init", "--out", str(work / "keys"))
    _run("train", "--data", str(work / "data"), "--out", str(work / "out"), "--key", str(work / "keys" / "signing.key"), "--no-progress")
    report = json.loads((work / "out" / "report.json").read_text())
    return {"work": work, "report": report, "bundle": Path(report["bundle"]), "pub": work / "keys" / "signing.pub"}


def test_report_has_every_metric_and_verdict(trained: dict) -> None:
    report = trained["report"]
    for name in ("keras", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-int8", "baseline-rf", "baseline-ma-dow"):
        assert {"nwrmsle", "r2"} <= set(report["metrics"][name]), name
        assert np.isfinite(report["metrics"][name]["nwrmsle"])
    assert report["gates"]["baselines"]["passed"] is True
    assert report["metrics"]["keras"]["nwrmsle"] < report["metrics"]["baseline-rf"]["nwrmsle"]
    assert report["metrics"]["keras"]["nwrmsle"] < report["metrics"]["baseline-ma-dow"]["nwrmsle"]
    parity = report["gates"]["parity"]
    assert set(parity) == {"tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-int8", "onnx-lightgbm"}
    assert parity["tflite-fp32"]["shipped"] and parity["onnx-fp32"]["shipped"]
    # LightGBM's ONNX export agrees with LightGBM; it ships (first) exactly when it beat tflite-int8
    lgb, m = parity["onnx-lightgbm"], report["metrics"]
    assert lgb["passed"] and lgb["p99_abs_diff"] < 1e-3  # a rare row may sit on a split (float vs double thresholds)
    better = m["onnx-lightgbm"]["nwrmsle"] < m["tflite-int8"]["nwrmsle"] and report["model_choice"]["store_type_gate"]
    assert lgb["shipped"] == better == (report["shipped_variants"][0] == "onnx-lightgbm")
    assert parity["tflite-fp32"]["p99_abs_diff"] < 1e-3
    assert report["bundle"].endswith("favorita-demand-v1.bundle.tar") and Path(report["bundle"]).is_file()


def test_bundle_manifest_lineage_and_members(trained: dict) -> None:
    manifest = read_manifest(trained["bundle"], [load_public_key(trained["pub"])])
    assert manifest.version == 1 and manifest.name == "favorita-demand"
    assert len(manifest.lineage.dataset_version) == 64
    assert manifest.lineage.dataset_version == trained["report"]["dataset"]["version"]
    shipped = [v.name for v in manifest.variants]
    assert shipped == trained["report"]["shipped_variants"]
    with tarfile.open(trained["bundle"]) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "signature.json", "tables.json", "state.npz", "holdout.npz", "reference_stats.json"} <= names
    assert {v.file for v in manifest.variants} <= names
    assert set(manifest.files) == names - {"manifest.json", "signature.json"}


def test_training_is_reproducible(trained: dict, tmp_path: Path) -> None:
    """Same data, recipe and seed: the same Keras weights, so the same fp32 model bytes."""
    work = trained["work"]
    _run("train", "--data", str(work / "data"), "--out", str(tmp_path), "--key", str(work / "keys" / "signing.key"), "--no-progress")
    again = json.loads((tmp_path / "report.json").read_text())
    assert again["metrics"]["keras"]["nwrmsle"] == trained["report"]["metrics"]["keras"]["nwrmsle"]
    assert again["dataset"]["version"] == trained["report"]["dataset"]["version"]


class Agent:
    """`edgeship agent` as a real process, as on a shop device."""

    def __init__(self, work: Path, broker: str, pub: Path, device: str = "store-1") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"{device}.log"
        self.args = [sys.executable, "-m", "edgeship", "agent", "--broker", broker, "--device-id", device,
                     "--state-dir", str(work / device), "--trust", str(pub), "--http", f"127.0.0.1:{self.port}"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Agent:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        self.wait(lambda h: h is not None, "to answer /healthz")
        return self

    def health(self) -> dict | None:
        try:
            return _http(f"{self.url}/healthz")[1]
        except OSError:
            return None

    def wait(self, cond, what: str, timeout: float = 60) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"agent died:\n{self.log.read_text()[-4000:]}"
            h = self.health()
            if cond(h):
                return h
            time.sleep(0.1)
        raise AssertionError(f"agent did not come {what} in {timeout} s; last {self.health()}\n{self.log.read_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


class StateWatcher:
    """Collects the agent's retained state and events over MQTT, as a fleet view would."""

    def __init__(self, broker: str, device: str = "store-1") -> None:
        url = BrokerURL.parse(broker)
        self.states: list[DeviceState] = []
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.client = new_client("test-watcher", url)
        self.client.on_connect = lambda c, *_: (c.subscribe(topics.state("default", device), 1), c.subscribe(topics.events("default", device), 1))
        self.client.on_message = self._on_message
        self.client.connect(url.host, url.port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if msg.topic.endswith("/state"):
                self.states.append(DeviceState.model_validate_json(msg.payload))
            else:
                self.events.append(json.loads(msg.payload))

    def wait_event(self, cond, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                hits = [e for e in self.events if cond(e)]
            if hits:
                return hits[-1]
            time.sleep(0.1)
        raise AssertionError(f"no matching event in {timeout} s; saw {self.events}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _repack(src: Path, dst: Path, key: Path, version: int, corrupt: str | None = None) -> Path:
    """A validly signed copy of ``src`` as ``version``; with ``corrupt``, one byte of that member flipped after signing."""
    with tarfile.open(src) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar if i.name not in ("manifest.json", "signature.json")}
        manifest = json.loads(tar.extractfile("manifest.json").read())
    fields = {k: v for k, v in manifest.items() if k != "files"} | {"version": version}
    path, _ = write_bundle(dst, fields, members, load_private_key(key))
    return flip_member_byte(path, path, corrupt) if corrupt else path


def _sample(trained: dict) -> dict:
    manifest = read_manifest(trained["bundle"], [load_public_key(trained["pub"])])
    import datetime as dt

    day = dt.date.fromisoformat(manifest.contract.state_end_date) + dt.timedelta(days=1)
    with open(trained["work"] / "data" / "train.csv") as fh:
        fh.readline()
        row = fh.readline().split(",")
    return {"date": day.isoformat(), "store_nbr": int(row[2]), "item_nbr": int(row[3]), "onpromotion": True}


def test_publish_serve_refuse_tampered_and_restart_offline(trained: dict, mosquitto, tmp_path: Path) -> None:
    work, pub, key = tmp_path, trained["pub"], trained["work"] / "keys" / "signing.key"
    watcher = StateWatcher(mosquitto.url)
    agent = Agent(work, mosquitto.url, pub).start()
    try:
        assert agent.health()["model"] is None  # nothing yet
        status, body = _http(f"{agent.url}/v1/predict", {"instances": [_sample(trained)]})
        assert status == 503

        # v1 through the real CLI
        _run("publish", str(trained["bundle"]), "--broker", mosquitto.url, "--key", str(key), "--no-progress")
        h = agent.wait(lambda h: h and h["model"] and h["model"]["version"] == 1, "to activate v1")
        digest_v1 = h["model"]["digest"]
        status, body = _http(f"{agent.url}/v1/predict", {"instances": [_sample(trained)]})
        assert status == 200, body
        assert body["model"]["version"] == 1 and body["model"]["digest"] == digest_v1
        assert len(body["predictions"]) == 1 and body["predictions"][0] >= 0

        # The agent and an embedded Predictor on the same bundle agree exactly.
        from edge.serving.predictor import Predictor

        with Predictor.open(trained["bundle"], trust=[pub], variant=body["model"]["variant"]) as local:
            assert local.predict([_sample(trained)]) == body["predictions"]

        # Bad input: 4xx naming field and rule, and the agent keeps serving.
        status, err = _http(f"{agent.url}/v1/predict", {"instances": [{**_sample(trained), "store_nbr": 99999}]})
        assert status == 422 and err["error"]["details"][0]["field"] == "instances[0].store_nbr"
        assert err["error"]["details"][0]["rule"] == "known_store"

        # v2, validly signed, then one byte flipped in a model member: refused, v1 keeps serving.
        shipped = trained["report"]["shipped_variants"][0]
        member = read_manifest(trained["bundle"], [load_public_key(pub)]).variant(shipped).file
        bad = _repack(trained["bundle"], work / "out" / "favorita-demand-v2.bundle.tar", key, 2, corrupt=member)
        _run("publish", str(bad), "--broker", mosquitto.url, "--key", str(key), "--no-progress")
        event = watcher.wait_event(lambda e: e.get("kind") == "refused" and e.get("detail", {}).get("version") == 2)
        assert event["detail"]["reason"] == "hash_mismatch"
        h = agent.health()
        assert h["model"]["version"] == 1 and h["model"]["digest"] == digest_v1
        assert _http(f"{agent.url}/v1/predict", {"instances": [_sample(trained)]})[0] == 200
        assert not (work / "store-1" / "models" / "2").exists()

        # A good v3 still goes through afterwards.
        good = _repack(trained["bundle"], work / "out" / "favorita-demand-v3.bundle.tar", key, 3)
        _run("publish", str(good), "--broker", mosquitto.url, "--key", str(key), "--no-progress")
        agent.wait(lambda h: h and h["model"]["version"] == 3, "to activate v3")

        # Restart with the broker down: the last good model serves at once.
        agent.stop()
        mosquitto.stop()
        agent = Agent(work, mosquitto.url, pub).start()
        h = agent.health()
        assert h["model"]["version"] == 3
        status, body = _http(f"{agent.url}/v1/predict", {"instances": [_sample(trained)]})
        assert status == 200 and body["model"]["version"] == 3
    finally:
        agent.stop()
        watcher.close()

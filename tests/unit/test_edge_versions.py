"""Issue 4 item 4 (in-process half): version history, start-up recovery, history-aware pruning,
``edgeship agent rollback`` (offline, on the store), Agent.rollback / reload while serving, and the
edgeship_model_rollbacks_total counter. The kill -9 matrix itself is tests/integration/test_crash_matrix.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edge.store import crash
from edge.agent import Agent
from edgeship.cli import main
from edge.config import AgentConfig
from edge.store.model_store import ModelStore
from tests.bundle_kit import build_bundle
from edge.store.versions import RollbackError, VersionHistory, prune, recover, rollback, rollback_target
from models.bundle import verify_unpacked

ROOT = Path(__file__).resolve().parents[2]
ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    out = tmp_path_factory.mktemp("bundles")
    return {v: build_bundle(out / f"favorita-demand-v{v}.bundle.tar", keys[0], version=v)[0] for v in range(1, 6)}


def activated(store: ModelStore, history: VersionHistory, bundle: Path) -> int:
    """Install + activate + record, as the agent does after the gate."""
    b = store.install(bundle)
    store.activate(b.manifest.version)
    history.record_activation(b.manifest.version, b.digest)
    return b.manifest.version


def agent_cfg(tmp_path: Path, pem: Path, **kw) -> AgentConfig:
    return AgentConfig(**{"device_id": "d1", "state_dir": tmp_path / "state", "trust": [pem], "http": "127.0.0.1:0", "runtime": "fake", **kw})


# -- history and recovery -----------------------------------------------------------------------
def test_history_records_activations_once_and_survives_garbage(tmp_path, keys, bundles):
    store, history = ModelStore(tmp_path, [keys[1]]), VersionHistory(tmp_path)
    for v in (1, 2):
        activated(store, history, bundles[v])
    history.record_activation(2, store.active().digest)  # idempotent
    assert [a["version"] for a in history.activations()] == [1, 2]
    history.path.write_text("{not json")
    assert history.activations() == []  # unreadable: logged, a new history starts
    assert recover(store, history) == set()
    assert [a["version"] for a in history.activations()] == [2]  # the pointer is recorded again


def test_recover_removes_interrupted_installs_only(tmp_path, keys, bundles):
    store, history = ModelStore(tmp_path, [keys[1]]), VersionHistory(tmp_path)
    activated(store, history, bundles[2])
    store.install(bundles[1])  # older, installed by hand: kept (a fallback)
    store.install(bundles[3])  # newer, never activated: a crash came before its gate/activation
    (store.models_dir / ".4.tmpxyz").mkdir()  # a crash during unpack
    (store.models_dir / ".removed-1-99").mkdir()  # a crash during prune
    assert recover(store, history) == set()
    assert store.versions() == [1, 2] and not list(store.models_dir.glob(".*"))
    assert store.active().version == 2


def test_recover_on_a_store_from_before_history_keeps_everything(tmp_path, keys, bundles):
    store = ModelStore(tmp_path, [keys[1]])
    for v in (1, 2, 3):
        store.install(bundles[v])
    store.activate(2)
    history = VersionHistory(tmp_path)
    assert not history.exists
    recover(store, history)
    assert store.versions() == [1, 2, 3] and [a["version"] for a in history.activations()] == [2] and history.exists


def test_recover_first_install_interrupted_leaves_nothing_to_serve(tmp_path, keys, bundles):
    store, history = ModelStore(tmp_path, [keys[1]]), VersionHistory(tmp_path)
    recover(store, history)  # first start: empty, managed from now on
    store.install(bundles[1])  # crash before the gate: no pointer
    recover(store, history)
    assert store.versions() == [] and store.load_last_good() is None


def test_prune_keeps_the_last_activated_versions(tmp_path, keys, bundles):
    store, history = ModelStore(tmp_path, [keys[1]]), VersionHistory(tmp_path)
    for v in (1, 2, 3, 4):
        activated(store, history, bundles[v])
    rollback(store, history)  # 4 -> 3; 4 is rolled back
    activated(store, history, bundles[5])
    assert prune(store, history, keep=3) == [1, 4]  # keeps 5 (active), 3, 2; drops the rolled-back 4
    assert store.versions() == [2, 3, 5]
    assert prune(store, history, keep=1) == [2, 3] and store.versions() == [5]
    with pytest.raises(ValueError):
        prune(store, history, keep=0)


# -- rollback -------------------------------------------------------------------------------------
def test_rollback_goes_back_one_version_at_a_time(tmp_path, keys, bundles):
    store, history = ModelStore(tmp_path, [keys[1]]), VersionHistory(tmp_path)
    for v in (1, 2, 3):
        activated(store, history, bundles[v])
    digest3 = store.active().digest
    assert rollback(store, history) == (3, 2)
    assert store.active().version == 2 and history.is_rolled_back(digest3)
    assert rollback(store, history) == (2, 1)
    with pytest.raises(RollbackError, match="no earlier activated version"):
        rollback(store, history)
    assert store.active().version == 1
    # activating a rolled-back version again clears its mark
    history.record_activation(3, digest3)
    assert not history.is_rolled_back(digest3)


def test_rollback_skips_a_damaged_version_and_honours_to(tmp_path, keys, bundles):
    store, history = ModelStore(tmp_path, [keys[1]]), VersionHistory(tmp_path)
    for v in (1, 2, 3):
        activated(store, history, bundles[v])
    (store.version_dir(2) / "tables.json").write_text("{}")  # rotted on disk
    assert rollback_target(store, history) == 1
    with pytest.raises(RollbackError):
        rollback(store, history, to=2)
    with pytest.raises(RollbackError, match="already active"):
        rollback(store, history, to=3)
    assert rollback(store, history, to=1) == (3, 1)
    verify_unpacked(store.version_dir(1), [keys[1]])


def test_interrupted_rollback_is_completed_at_start(tmp_path, keys, bundles, monkeypatch):
    store, history = ModelStore(tmp_path, [keys[1]]), VersionHistory(tmp_path)
    for v in (1, 2):
        activated(store, history, bundles[v])

    def killed(name: str) -> None:
        if name == "during_rollback":
            raise KeyboardInterrupt  # stands in for SIGKILL between the history write and the pointer write

    monkeypatch.setattr("edge.store.versions.crash_point", killed)
    with pytest.raises(KeyboardInterrupt):
        rollback(store, history)
    assert store.active().version == 2  # pointer not moved yet
    assert recover(store, history) == {2}
    assert store.active().version == 1


def test_rollback_cli_offline_then_restart_serves_the_previous_version(tmp_path, keys, bundles, capsys):
    private, public, pem = keys
    with Agent(agent_cfg(tmp_path, pem)) as agent:
        for v in (1, 2):
            assert agent.install_and_activate(bundles[v])
    state = tmp_path / "state"
    assert main(["agent", "rollback", "--state-dir", str(state), "--trust", str(pem)]) == 0
    assert json.loads(capsys.readouterr().out) == {"rolled_back_from": 2, "active": 1, "state_dir": str(state)}
    assert main(["agent", "rollback", "--state-dir", str(state), "--trust", str(pem)]) == 1  # nothing before v1
    assert main(["agent", "rollback", "--state-dir", str(tmp_path / "nothing"), "--trust", str(pem)]) == 2
    with Agent(agent_cfg(tmp_path, pem)) as agent:
        h = httpx.get(f"{agent.http_url}/healthz").json()
        assert h["model"]["version"] == 1
        assert 'edgeship_model_rollbacks_total{reason="manual"} 1.0' in httpx.get(f"{agent.http_url}/metrics").text
        # The rolled-back v2 is not fetched again though its announcement may still be retained.
        from cloud.fleet.publish import announcement_for

        assert agent.should_fetch(announcement_for(bundles[2], 4096)[0]) == "rolled_back"
        assert agent.should_fetch(announcement_for(bundles[3], 4096)[0]) is None
    with Agent(agent_cfg(tmp_path, pem)) as agent:  # counted once, not at every start
        assert 'edgeship_model_rollbacks_total{reason="manual"} 1.0' not in agent.metrics.exposition()[0].decode()


def test_rollback_cli_through_the_edgeship_entry_point(tmp_path, keys, bundles):
    private, public, pem = keys
    store, history = ModelStore(tmp_path, [public]), VersionHistory(tmp_path)
    for v in (1, 2):
        activated(store, history, bundles[v])
    proc = subprocess.run(
        [sys.executable, "-m", "edgeship", "agent", "rollback", "--state-dir", str(tmp_path), "--trust", str(pem)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["active"] == 1 and store.active().version == 1


def test_agent_rollback_and_reload_while_serving(tmp_path, keys, bundles):
    private, public, pem = keys
    with Agent(agent_cfg(tmp_path, pem)) as agent:
        for v in (1, 2, 3):
            assert agent.install_and_activate(bundles[v])
        assert agent.rollback()
        assert agent.predictor.version == 2 and agent.store.active().version == 2
        assert agent.device_state().last_update.outcome == "rolled_back"
        text = agent.metrics.exposition()[0].decode()
        assert 'edgeship_model_rollbacks_total{reason="manual"} 1.0' in text
        assert "edgeship_model_swaps_total 3.0" in text
        # offline CLI while it runs, then SIGHUP's reload
        assert main(["agent", "rollback", "--state-dir", str(tmp_path / "state"), "--trust", str(pem)]) == 0
        assert agent.predictor.version == 2
        assert agent.reload() and agent.predictor.version == 1
        assert not agent.reload()
        r = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]})
        assert r.status_code == 200 and r.json()["model"]["version"] == 1
        with pytest.raises(RollbackError):
            agent.rollback()


def test_start_falls_back_when_the_active_version_is_damaged_and_counts_it(tmp_path, keys, bundles):
    private, public, pem = keys
    with Agent(agent_cfg(tmp_path, pem)) as agent:
        for v in (1, 2):
            assert agent.install_and_activate(bundles[v])
    (tmp_path / "state" / "models" / "2" / "state.npz").write_bytes(b"rot")
    with Agent(agent_cfg(tmp_path, pem)) as agent:
        assert agent.predictor.version == 1
        assert 'edgeship_model_rollbacks_total{reason="damaged"} 1.0' in agent.metrics.exposition()[0].decode()
        assert [a["version"] for a in agent.history.activations()] == [1, 2, 1]


def test_sighup_reloads_after_an_offline_rollback(tmp_path, keys, bundles):
    private, public, pem = keys
    state = tmp_path / "state"
    store, history = ModelStore(state, [public]), VersionHistory(state)
    for v in (1, 2):
        activated(store, history, bundles[v])
    cmd = [sys.executable, "-m", "edgeship", "agent", "--device-id", "d1", "--state-dir", str(state), "--trust", str(pem),
           "--http", "127.0.0.1:0", "--runtime", "fake"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert httpx.get(f"{url}/healthz").json()["model"]["version"] == 2
        assert main(["agent", "rollback", "--state-dir", str(state), "--trust", str(pem)]) == 0
        proc.send_signal(signal.SIGHUP)
        import time

        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/healthz").json()["model"]["version"] != 1:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_crash_points_are_inert_unless_armed(monkeypatch):
    assert not crash.armed() or os.environ.get(crash.ENV)
    crash.crash_point("after_unpack")  # nothing happens
    monkeypatch.setattr(crash, "_target", "after_unpack")
    assert crash.armed()
    killed = []
    monkeypatch.setattr(crash.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    crash.crash_point("after_swap")
    crash.crash_point("after_unpack")
    assert killed == [(os.getpid(), signal.SIGKILL)]

"""Disk faults a shop device meets (issue 15): the state folder is a small tmpfs this test mounts
(root), filled, freed, remounted read-only and read-write under a real agent talking to a real
Mosquitto. Each time the update must complete without a restart, the fault must be reported with a
disk reason code (never as a refused bundle), the old model must keep serving, and the device's
event sequence must have no gap. Under ``CI=true`` these tests never skip.

The figures for the closing note (time from the disk coming back to the new model serving, and what
the device reported meanwhile) are printed: ``pytest -s tests/integration/test_disk_faults.py``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud.fleet.publish import Publisher
from edge.agent import Agent
from tests.bundle_kit import build_bundle
from tests.conftest import require
from tests.delivery_kit import Watcher, keypair, ship, start_agent, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "favorita-demand"
CHUNK = 16 * 1024
DEVICE = "store-1"


# -- a small disk ---------------------------------------------------------------------------
def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``; unmounted again even when the test fails."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a tmpfs needs root and mount(8)")
    path.mkdir(parents=True, exist_ok=True)
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    require(r.returncode == 0, f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield path
    finally:
        _run("mount", "-o", "remount,rw", str(path))
        if _run("umount", str(path)).returncode != 0:
            _run("umount", "-l", str(path))  # something still holds it: detach now, freed when released


def remount(path: Path, mode: str, timeout: float = 10.0) -> None:
    """``mount -o remount,MODE``. A read-only remount by hand is refused while a file is open for writing
    (the kernel's own remount after an I/O error is not); a writer that holds a file for a moment (a
    background flush) is waited for, one that holds it for good fails the test with lsof-like detail."""
    deadline = time.monotonic() + timeout
    while True:
        r = _run("mount", "-o", f"remount,{mode}", str(path))
        if r.returncode == 0 or "busy" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.returncode == 0, f"remount {mode} {path}: {r.stderr} (open for writing: {_writers(path)})"


def _writers(path: Path) -> list[str]:
    """Files under ``path`` that some process holds open for writing (why a read-only remount is busy)."""
    out = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target.startswith(str(path)):
                    flags = (fd_dir.parent / "fdinfo" / fd.name).read_text().split("flags:")[1].split()[0]
                    if int(flags, 8) & 0o3:  # O_WRONLY or O_RDWR
                        out.append(target)
        except OSError:
            continue
    return sorted(set(out))


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the disk with one file."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler.bin"
    with open(filler, "wb") as fh:
        if free > leave:
            os.posix_fallocate(fh.fileno(), 0, free - leave)
    return filler


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """v1 and v2 of about 200 KiB each (a padding member of random bytes) and their key."""
    d = tmp_path_factory.mktemp("disk-bundles")
    k = keypair(d / "keys")
    out = {}
    for v in (1, 2):
        padding = random.Random(v).randbytes(200 << 10)
        out[v], _ = build_bundle(d / f"{MODEL}-v{v}.bundle.tar", k.private, version=v, extra_members={"padding.bin": padding})
    return out, k


def _agent(state: Path, broker: str, k, **fields) -> Agent:
    base = dict(
        state_dir=state, trust=[k.pub_path], http="127.0.0.1:0", disk_reserve_bytes=64 << 10,
        disk_retry_min_s=0.2, disk_retry_max_s=1.0, telemetry={"interval_s": 0, "fsync": False},
    )  # fmt: skip
    return start_agent(state.parent, broker, DEVICE, **{**base, **fields})


def _serving(agent: Agent, version: int) -> bool:
    return agent.predictor is not None and agent.predictor.version == version


def _health(agent: Agent) -> dict:
    return httpx.get(f"{agent.http_url}/healthz", timeout=5).json()


def _check_sequence(w: Watcher) -> list[int]:
    """Every event the device sent, by seq: 1, 2, 3 … with no gap."""
    seqs = sorted({e["seq"] for e in w.of(DEVICE)})
    assert seqs == list(range(1, len(seqs) + 1)), f"gap in the event sequence: {seqs}"
    return seqs


def _report(title: str, w: Watcher, since: float, back: float, active: float) -> None:
    kinds = [
        (e["kind"], e["detail"].get("reason") or e["detail"].get("was") or "")
        for _d, e in w.events if _d == DEVICE and e["detail"].get("version") != 1
    ]  # fmt: skip
    print(f"\n[{title}] disk back -> v2 serving: {active - back:.2f} s (fault lasted {back - since:.2f} s); "
          f"device reported: {kinds}")  # fmt: skip


def _v1_then(tmp_path, mosquitto, bundles, disk: Path, **fields) -> tuple[Agent, Watcher, Publisher]:
    paths, k = bundles
    w = Watcher(mosquitto.url)
    pub = Publisher(mosquitto.url).connect()
    agent = _agent(disk / DEVICE, mosquitto.url, k, **fields)
    ship(pub, paths[1], k.private, chunk_size=CHUNK)
    wait_for(lambda: _serving(agent, 1), "v1 serving", timeout=30)
    return agent, w, pub


# -- the faults -----------------------------------------------------------------------------
def test_disk_full_before_download_waits_then_completes_without_restart(tmp_path, mosquitto, bundles):
    paths, k = bundles
    with tmpfs(tmp_path / "disk", "2m") as disk:
        agent, w, pub = _v1_then(tmp_path, mosquitto, bundles, disk)
        try:
            filler = fill(disk, leave=100 << 10)  # less than the bundle alone
            since = time.monotonic()
            ann = ship(pub, paths[2], k.private, chunk_size=CHUNK)
            failed = w.wait(DEVICE, "failed", version=2, reason="disk_full")
            assert "needs" in failed["detail"]["message"]
            assert _serving(agent, 1)  # the old model keeps serving
            assert ann.sha256 not in agent.refused  # a device fault, never a refused bundle
            assert _health(agent)["disk"]["state"] == "disk_full"
            wait_for(lambda: w.states.get(DEVICE) and (w.states[DEVICE].delivery or {}).get("disk") == "disk_full",
                     "state says disk_full")  # fmt: skip
            wait_for(lambda: agent.mqtt.delivery.stats["disk_faults"] >= 3, "periodic retries with back-off")
            assert _serving(agent, 1)
            filler.unlink()
            back = time.monotonic()
            wait_for(lambda: _serving(agent, 2), "v2 serving after space came back", timeout=30)
            active = time.monotonic()
            assert w.wait(DEVICE, "disk_recovered")["detail"]["was"] == "disk_full"
            assert _health(agent)["disk"]["state"] == "ok"
            assert not list((disk / DEVICE / "downloads").glob("*.part"))  # nothing left behind
            w.wait(DEVICE, "active", version=2)
            _check_sequence(w)
            _report("disk full before the download", w, since, back, active)
        finally:
            agent.stop()
            w.close()
            pub.close()


def test_read_only_disk_events_sent_live_then_update_completes(tmp_path, mosquitto, bundles):
    paths, k = bundles
    with tmpfs(tmp_path / "disk", "2m") as disk, tmpfs(disk / DEVICE / "ingest", "1m"), tmpfs(disk / DEVICE / "feedback", "1m"):
        # the sales ledger (edge.serving.ingest_routes) and the feedback store keep their SQLite files
        # open for writing, which makes the kernel refuse a read-only remount; the kernel's own
        # errors=remount-ro would not ask
        agent, w, pub = _v1_then(tmp_path, mosquitto, bundles, disk)
        try:
            wait_for(lambda: agent.telemetry.spool.pending == 0, "v1's events delivered")
            remount(disk, "ro")  # the SD card went read-only (nothing holds the state folder open for writing)
            since = time.monotonic()
            ann = ship(pub, paths[2], k.private, chunk_size=CHUNK)
            # the failure event cannot be spooled, yet it arrives: held in memory, sent live
            w.wait(DEVICE, "failed", version=2, reason="disk_readonly")
            assert agent.telemetry.spool_fault == "disk_readonly"
            assert agent.telemetry.metrics.unspooled._value.get() >= 1
            health = _health(agent)
            assert health["disk"]["state"] == "disk_readonly" and health["status"] == "ok"
            assert _serving(agent, 1) and ann.sha256 not in agent.refused
            remount(disk, "rw")
            back = time.monotonic()
            wait_for(lambda: _serving(agent, 2), "v2 serving after the disk came back", timeout=30)
            active = time.monotonic()
            w.wait(DEVICE, "active", version=2)
            assert agent.telemetry.spool_fault is None  # spooling resumed
            assert (disk / DEVICE / "telemetry").exists() and agent.telemetry.spool.memory_only == 0
            _check_sequence(w)
            _report("read-only disk", w, since, back, active)
        finally:
            agent.stop()
            w.close()
            pub.close()


def test_full_while_unpacking_is_no_refusal_and_the_download_is_reused(tmp_path, mosquitto, bundles):
    """The download fits but unpacking does not (models/ is its own, full, small disk): ``failed``
    ``disk_full``, not ``load_failed``; after space comes back the kept download is installed
    without fetching a chunk again."""
    paths, k = bundles
    with tmpfs(tmp_path / "disk", "2m") as disk:
        state = disk / DEVICE
        with tmpfs(state / "models", "1m") as models:
            agent, w, pub = _v1_then(tmp_path, mosquitto, bundles, disk)
            try:
                chunks_v1 = agent.mqtt.delivery.stats["chunks"]
                filler = fill(models, leave=32 << 10)
                since = time.monotonic()
                ann = ship(pub, paths[2], k.private, chunk_size=CHUNK)
                w.wait(DEVICE, "failed", version=2, reason="disk_full")
                assert ann.sha256 not in agent.refused and _serving(agent, 1)
                assert not w.of(DEVICE, "refused", version=2)
                assert (state / "downloads" / f"{ann.bundle_id}.tar").exists()  # kept for the retry
                filler.unlink()
                back = time.monotonic()
                wait_for(lambda: _serving(agent, 2), "v2 serving after space came back", timeout=30)
                active = time.monotonic()
                total = len(ann.chunk_sha256)
                assert agent.mqtt.delivery.stats["chunks"] - chunks_v1 == total  # every chunk fetched once
                fetched = sum(e["detail"]["fetched_chunks"] for e in w.of(DEVICE, "downloaded", version=2))
                assert fetched == total
                w.wait(DEVICE, "active", version=2)
                _check_sequence(w)
                _report("disk full while unpacking", w, since, back, active)
            finally:
                agent.stop()
                w.close()
                pub.close()


def test_complete_download_survives_kill_and_is_reused(tmp_path, mosquitto, bundles):
    """``kill -9`` right after the whole-file hash check: the restart installs the complete
    download from disk and fetches no chunk again."""
    paths, k = bundles
    state = tmp_path / DEVICE
    pub = Publisher(mosquitto.url).connect()
    env = {**os.environ, "EDGESHIP_CRASH_AT": "after_download"}
    cmd = [sys.executable, "-m", "edgeship", "agent", "--device-id", DEVICE, "--state-dir", str(state),
           "--trust", str(k.pub_path), "--broker", mosquitto.url, "--runtime", "fake"]  # fmt: skip
    log = tmp_path / "agent.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        ann = ship(pub, paths[1], k.private, chunk_size=CHUNK)
        rc = proc.wait(timeout=60)
        assert rc == -9, log.read_text()[-2000:]
        assert (state / "downloads" / f"{ann.bundle_id}.tar").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    w = Watcher(mosquitto.url)
    agent = start_agent(tmp_path, mosquitto.url, DEVICE, trust=[k.pub_path])
    try:
        wait_for(lambda: _serving(agent, 1), "v1 serving from the kept download", timeout=30)
        assert agent.mqtt.delivery.stats["chunks"] == 0  # nothing fetched again
        downloaded = w.wait(DEVICE, "downloaded", version=1)
        assert downloaded["detail"]["fetched_chunks"] == 0
        assert downloaded["detail"]["resumed_chunks"] == len(ann.chunk_sha256)
    finally:
        agent.stop()
        w.close()
        pub.close()


# -- the other faults of issue 15 -----------------------------------------------------------
def test_clock_behind_signed_time_is_reported_and_never_revives_an_expired_target(tmp_path, mosquitto, bundles):
    """A board without an RTC boots with its clock in the past: the newest signed time this device
    acted on (persisted) is the floor, so a target that expired by then is refused, and the wrong
    clock is reported (event, /healthz)."""
    import datetime as dt
    import json

    paths, k = bundles
    state = tmp_path / DEVICE
    state.mkdir()
    floor = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)  # acted on a target issued "later" than now
    (state / "delivery.json").write_text(json.dumps({"issued": {"other-model": floor.isoformat()}}))
    w = Watcher(mosquitto.url)
    pub = Publisher(mosquitto.url).connect()
    agent = _agent(state, mosquitto.url, k)
    try:
        ann = ship(pub, paths[1], k.private, chunk_size=CHUNK, expires_in=86400.0)  # valid for 1 day by the wall clock
        refused = w.wait(DEVICE, "refused", version=1)
        assert refused["detail"]["reason"] == "expired"
        event = w.wait(DEVICE, "clock_wrong")
        assert event["detail"]["floor"] == floor.isoformat() and event["detail"]["behind_s"] > 86400
        assert _health(agent)["clock"] == "behind_signed_time"
        assert agent.predictor is None and ann.sha256 not in agent.refused  # metadata refusal, not the bundle's
    finally:
        agent.stop()
        w.close()
        pub.close()


def test_stalled_transfer_raises_an_event_within_the_chunk_timeout(tmp_path, mosquitto, bundles):
    """A broker that lost its retained chunks (no working persistence) and no bundle server: the
    device says so after ``chunk_timeout_s``, not minutes later when it gives up."""
    paths, k = bundles
    w = Watcher(mosquitto.url)
    pub = Publisher(mosquitto.url).connect()
    agent = _agent(tmp_path / DEVICE, mosquitto.url, k, chunk_timeout_s=1.0, transfer_retries=100)
    try:
        ann = ship(pub, paths[1], k.private, chunk_size=CHUNK, chunks=False)  # announcement only: no chunk retained
        stalled = w.wait(DEVICE, "transfer_stalled", version=1)
        assert stalled["detail"]["have"] == 0 and stalled["detail"]["total"] == len(ann.chunk_sha256)
        assert stalled["detail"]["waiting"]
        assert not w.of(DEVICE, "failed")  # reported long before the transfer is abandoned
        wait_for(lambda: w.fetch_requests(DEVICE) >= 2, "re-requests")
        assert len(w.of(DEVICE, "transfer_stalled")) == 1  # one event per stall, not one per re-request
    finally:
        agent.stop()
        w.close()
        pub.close()


def test_chunking_travels_with_the_signed_announcement(tmp_path, mosquitto, bundles):
    """A bundle server started with another chunk size than the publisher's still heals a transfer:
    the device's chunk request names the chunking its signed announcement declares."""
    from cloud.fleet.publish import read_bundle

    paths, k = bundles
    server = Publisher(mosquitto.url).connect()
    server.serve(read_bundle(paths[1]))  # the default 64 KiB chunks
    pub = Publisher(mosquitto.url).connect()
    agent = _agent(tmp_path / DEVICE, mosquitto.url, k, chunk_timeout_s=1.0, transfer_retries=100)
    try:
        ann = ship(pub, paths[1], k.private, chunk_size=CHUNK, chunks=False)  # 16 KiB chunks, none retained
        wait_for(lambda: _serving(agent, 1), "v1 served from the bundle server's re-chunked answers", timeout=45)
        assert agent.mqtt.delivery.stats["chunks"] == len(ann.chunk_sha256)
        # the server counts its answer after the broker acked it, which can be after the device had it all
        wait_for(lambda: server.answered_chunks >= len(ann.chunk_sha256), "the server's re-chunked answers counted", timeout=10)
    finally:
        agent.stop()
        server.close()
        pub.close()


def test_rollout_controller_killed_mid_rollout_resumes_its_waves(tmp_path, mosquitto, bundles):
    """``kill -9`` of ``edgeship rollout start`` during the canary's soak; started again, the
    controller resumes the same rollout (its id, its plan), sees the canary already active and
    rolls the next wave out."""
    import json
    import signal

    from cloud.fleet.rollout import Rollout, status

    paths, k = bundles
    pub = Publisher(mosquitto.url).connect()
    agents = {d: _agent(tmp_path / d, mosquitto.url, k, device_id=d) for d in ("store-a", "store-b")}
    ctl = tmp_path / "ctl"
    try:
        ship(pub, paths[1], k.private, chunk_size=CHUNK)
        for a in agents.values():
            wait_for(lambda a=a: _serving(a, 1), "v1 everywhere", timeout=30)
        cmd = [sys.executable, "-m", "edgeship", "rollout", "start", str(paths[2]), "--broker", mosquitto.url,
               "--key", str(k.key_path), "--state-dir", str(ctl), "--canary", "1", "--soak", "600",
               "--discover", "1", "--gate-timeout", "60"]  # fmt: skip
        with open(tmp_path / "ctl.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
        try:
            canary = wait_for(
                lambda: (s := status(ctl)) and [d for d, r in s["devices"].items() if r["status"] == "active"],
                "the canary active (the controller now soaks)", timeout=60,
            )  # fmt: skip
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wait_for(lambda: not status(ctl)["controller_alive"], "the dead controller's heartbeat to go stale", timeout=30)
        dead = json.loads((ctl / "rollout.json").read_text())
        assert dead["phase"] == "running" and dead["waves"][1]["status"] == "pending"
        result = Rollout(paths[2], mosquitto.url, key=k.key_path, state_dir=ctl, canary=1, discover_s=1.0,
                         gate_timeout=60).run()  # fmt: skip
        assert result["phase"] == "succeeded", result
        assert result["id"] == dead["id"] and [w["devices"] for w in result["waves"]] == [w["devices"] for w in dead["waves"]]
        assert any("resuming rollout" in line for line in result["log"])
        for a in agents.values():
            wait_for(lambda a=a: _serving(a, 2), "v2 everywhere", timeout=30)
        assert canary[0] in result["waves"][0]["devices"]
    finally:
        for a in agents.values():
            a.stop()
        pub.close()


def test_resumed_controller_judges_relative_rules_against_the_baseline_from_before_the_kill(tmp_path, mosquitto, bundles):
    """A relative abort rule survives ``kill -9`` of the controller: the baseline (the canary's figures
    before it was assigned) is saved with the rollout; the restarted controller compares the canary's
    figures on the new version with it — not with what the canary reports after the update — and aborts."""
    import json
    import signal

    from cloud.fleet.rollout import Rollout, status

    paths, k = bundles
    rule = "requests_http_invalid>2x"  # invalid requests on the canary more than doubled since before the rollout
    pub = Publisher(mosquitto.url).connect()
    tele = {"interval_s": 0.3, "fsync": False}
    agents = {d: _agent(tmp_path / d, mosquitto.url, k, device_id=d, telemetry=tele) for d in ("store-a", "store-b")}
    canary = agents["store-a"]
    ctl = tmp_path / "ctl"

    def invalid(n: int) -> None:
        for _ in range(n):
            r = httpx.post(f"{canary.http_url}/v1/predict", json={"instances": [{"store_nbr": "x"}]}, timeout=10)
            assert r.status_code == 422, r.text

    try:
        ship(pub, paths[1], k.private, chunk_size=CHUNK)
        for a in agents.values():
            wait_for(lambda a=a: _serving(a, 1), "v1 everywhere", timeout=30)
        invalid(2)  # the canary's figure before the rollout: 2 invalid requests
        cmd = [sys.executable, "-m", "edgeship", "rollout", "start", str(paths[2]), "--broker", mosquitto.url,
               "--key", str(k.key_path), "--state-dir", str(ctl), "--canary", "1", "--soak", "600",
               "--discover", "1", "--gate-timeout", "60", "--abort-if", rule]  # fmt: skip
        with open(tmp_path / "ctl.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
        try:
            saved = wait_for(
                lambda: (s := status(ctl)) and s["devices"].get("store-a", {}).get("status") == "active"
                and s.get("baselines", {}).get("store-a", {}).get("requests_http_invalid") == 2 and s,
                "the canary active and its baseline saved (the controller now soaks)", timeout=60,
            )  # fmt: skip
            assert saved["phase"] == "running"  # 2 invalid requests on v2 too: not more than 2x the baseline
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wait_for(lambda: not status(ctl)["controller_alive"], "the dead controller's heartbeat to go stale", timeout=30)
        assert _serving(canary, 2) and _serving(agents["store-b"], 1)
        invalid(4)  # on v2, with no controller watching: 6 invalid requests, 3x the baseline
        result = Rollout(paths[2], mosquitto.url, key=k.key_path, state_dir=ctl, canary=1, discover_s=1.0,
                         gate_timeout=60, soak=10, abort_if=[rule]).run()  # fmt: skip
        assert result["phase"] == "rolled_back", json.dumps(result, indent=1)[-3000:]
        assert result["id"] == saved["id"] and any("resuming rollout" in line for line in result["log"])
        assert result["reason"] == f"{rule}: store-a reports requests_http_invalid=6", result["reason"]
        assert result["baselines"]["store-a"]["requests_http_invalid"] == 2
        wait_for(lambda: _serving(canary, 1), "the canary rolled back to v1", timeout=30)
        assert _health(canary)["model"]["version"] == 1
        assert result["devices"]["store-b"]["status"] == "pending" and _health(agents["store-b"])["model"]["version"] == 1
    finally:
        for a in agents.values():
            a.stop()
        pub.close()


def test_restart_with_the_disk_unwritable_reports_the_lost_messages_after_the_restart(tmp_path, mosquitto, bundles, caplog):
    """The shop is offline and the SD card read-only: telemetry piles up in memory (visible on /healthz
    and /metrics), then the agent restarts. The shutdown logs the loss and leaves a marker on another
    file system (here a plain folder standing in for /run); the restarted agent never reuses the lost
    sequence numbers and, once its spool takes messages again, sends a ``telemetry_lost`` event with the count."""
    import json
    import logging

    from edge.monitoring.telemetry import LOST_EVENT, loss_marker_path

    run = tmp_path / "run"
    run.mkdir()
    tele = {"interval_s": 0.3, "fsync": False, "loss_marker_dir": str(run)}
    # the sales ledger and the feedback store keep SQLite files open for writing (a read-only remount
    # would be refused): they live on their own small disks, as in the read-only test above
    with tmpfs(tmp_path / "disk", "2m") as disk, tmpfs(disk / DEVICE / "ingest", "1m"), tmpfs(disk / DEVICE / "feedback", "1m"):
        agent, w, pub = _v1_then(tmp_path, mosquitto, bundles, disk, telemetry=tele)
        marker = loss_marker_path(disk / DEVICE / "telemetry", run)
        stopped = False
        try:
            wait_for(lambda: agent.telemetry.spool.pending == 0, "v1's events delivered")
            seen_before = {e["seq"] for e in w.of(DEVICE)}
            # telemetry appends open and close a spool file every 0.3 s: retry when one is open right then
            wait_for(lambda: _run("mount", "-o", "remount,ro", str(disk)).returncode == 0, "a read-only remount")
            mosquitto.stop()  # and the shop's line is down: nothing can go out live either
            wait_for(lambda: agent.telemetry.spool.memory_only >= 3, "telemetry held in memory")
            health = _health(agent)
            assert health["disk"]["state"] == "disk_readonly" and health["disk"]["telemetry_in_memory"] >= 3
            metrics = httpx.get(f"{agent.http_url}/metrics", timeout=5).text
            assert re.search(r"^edgeship_telemetry_in_memory [1-9]", metrics, re.M), metrics[-2000:]
            with caplog.at_level(logging.ERROR, logger="edge.monitoring.telemetry"):
                agent.stop()
                stopped = True
            lost = json.loads(marker.read_text())
            assert lost["count"] >= 3 and lost["reason"] == "disk_readonly" and lost["last_seq"] - lost["first_seq"] + 1 == lost["count"]
            assert f"{lost['count']} telemetry/event messages held in memory are lost" in caplog.text
            assert not seen_before & set(range(lost["first_seq"], lost["last_seq"] + 1))
        finally:
            if not stopped:
                agent.stop()
            w.close()
            pub.close()
        remount(disk, "rw")  # the card is back (after a reboot of the card reader, a fsck …)
        mosquitto.start()
        w = Watcher(mosquitto.url)
        paths, k = bundles
        again = _agent(disk / DEVICE, mosquitto.url, k, telemetry=tele)
        try:
            event = w.wait(DEVICE, LOST_EVENT, timeout=30)
            assert event["detail"]["count"] == lost["count"] and event["detail"]["reason"] == "disk_readonly"
            assert (event["detail"]["first_seq"], event["detail"]["last_seq"]) == (lost["first_seq"], lost["last_seq"])
            assert min(e["seq"] for e in w.of(DEVICE)) >= lost["next_seq"]  # no lost number used again
            assert again.telemetry.metrics.lost_at_restart._value.get() == lost["count"]
            wait_for(lambda: not marker.exists(), "the loss marker removed once reported")
            assert len(w.of(DEVICE, LOST_EVENT)) == 1
        finally:
            again.stop()
            w.close()

"""`edgeship cycle --once`: the whole CD4ML loop on embedded defaults (embedded amqtt broker, three agent
processes, in-process fleet ingest): data → train → publish → shop traffic and sales → realised accuracy
→ retrain on the fleet's actuals → canary rollout with abort rules → promote (or abort, with its reason)."""

import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STEPS = ["0 workdir", "1 data", "2 train", "3 ingest", "4 publish", "5 traffic", "6 realised", "7 retrain", "8 rollout"]


def manifest_of(bundle: Path) -> dict:
    with tarfile.open(bundle) as tar:
        fh = tar.extractfile("manifest.json")
        assert fh is not None
        return json.loads(fh.read())


@pytest.fixture(scope="module")
def first_cycle(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``edgeship cycle --once`` on the defaults; its workdir also lends v1 to the abort test."""
    work = tmp_path_factory.mktemp("cycle")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeship", "cycle", "--once", "--workdir", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    return proc, work


def test_cycle_once_closes_the_loop(first_cycle: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, tmp_path = first_cycle
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-4000:]
    steps = re.findall(r"^\[cycle\] (\d [a-z]+):", out, re.M)
    assert steps[: len(STEPS)] == STEPS, out
    assert steps[len(STEPS)] in ("9 promote", "9 abort"), out

    # shop traffic reached the devices and came back as actuals and realised accuracy per store
    m = re.search(r"5 traffic: 3 shops x 7 days: (\d+) forecasts asked, (\d+) sales rows reported", out)
    assert m and int(m[1]) > 0 and int(m[2]) > 0, out
    reported = int(m[2])
    realised = re.findall(r"^([123])\s+favorita-demand\s+1\s+1\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)$", out, re.M)
    assert sorted(r[0] for r in realised) == ["1", "2", "3"], out
    stored = [json.loads(line) for line in (tmp_path / "fleet" / "actuals.jsonl").read_text().splitlines()]
    assert len(stored) == reported and {r["device"] for r in stored} == {"store-1", "store-2", "store-3"}

    # the new version's lineage records the base data's hash and the fleet actuals' hash
    from cloud.fleet.actuals import fleet_table, table_hash
    from cloud.training.retrain import base_hash

    v2 = manifest_of(tmp_path / "out" / "favorita-demand-v2.bundle.tar")
    v1 = manifest_of(tmp_path / "out" / "favorita-demand-v1.bundle.tar")
    fleet = v2["lineage"]["dataset_source"]["fleet"]
    assert fleet["base_sha256"] == base_hash(tmp_path / "data")
    assert fleet["actuals_sha256"] == table_hash(fleet_table(tmp_path / "fleet"))
    assert fleet["actuals_rows"] == reported and fleet["uncovered_stores"] == []
    assert v2["version"] > v1["version"] and v2["lineage"]["dataset_version"] != v1["lineage"]["dataset_version"]
    assert v2["contract"]["state_end_date"] > v1["contract"]["state_end_date"]  # it learned the shops' days

    # canary first, then promote with the new version on every agent, or an abort with its reason
    assert re.search(r"rollout \S+: 3 devices in 2 waves \[1, 2\]", out), out
    if "9 promote" in steps:
        assert "[cycle] 9 promote: v2 promoted: serving on store-1, store-2, store-3" in out
        assert "promoted: the fleet announcement is now v2" in out
        for n in (1, 2, 3):  # every agent installed and activated v2 (its own store says so)
            active = json.loads((tmp_path / "agents" / f"store-{n}" / "active.json").read_text())
            assert active["version"] == 2, active
    else:
        assert re.search(r"\[cycle\] 9 abort: v2 not promoted \(rolled_back\): \S", out), out


def test_cycle_abort_rolls_the_canary_back_and_the_rest_never_get_the_new_version(
    first_cycle: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """The abort branch: a rule every retrained model breaks on the canary (``nwrmsle>0``). The cycle
    prints the reason, the canary is rolled back to v1, the other shops never get v2 (their /healthz,
    asked here while the fleet is still up, and their model stores), and the exit code is 0 (a clean
    abort). v1 comes from the first cycle's workdir (keys and bundle), so only v2 is trained here."""
    import httpx

    from edgeship.cycle import FIRST_RECORD
    from tests.conftest import wait_for

    done, first = first_cycle
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    shutil.copytree(first / "keys", tmp_path / "keys")
    (tmp_path / "out").mkdir()
    for name in ("favorita-demand-v1.bundle.tar", FIRST_RECORD):
        shutil.copy2(first / "out" / name, tmp_path / "out" / name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "cycle", "--workdir", str(tmp_path), "--abort-if", "nwrmsle>0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("[cycle] serving:") for line in lines) or proc.poll() is not None,
                 "the cycle to abort and keep the fleet up", timeout=480)  # fmt: skip
        out = "".join(lines)
        assert proc.poll() is None, out
        # the fleet is still up: ask every agent's /healthz ourselves
        urls = dict(re.findall(r"^    (store-\d): (http://\S+)/healthz$", out, re.M))
        assert sorted(urls) == ["store-1", "store-2", "store-3"], out
        health = {d: httpx.get(f"{u}/healthz", timeout=10).json() for d, u in urls.items()}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(10)
    out = "".join(lines)
    assert code == 0, out  # documented: 0 for a clean abort (every agent back on / still on v1)
    assert re.search(r"^\[cycle\] 2 train: favorita-demand v1: .* \(reused favorita-demand-v1.bundle.tar", out, re.M), out
    assert "[cycle] 9 promote" not in out
    # the reason, printed: the canary's gate figure broke the rule
    m = re.search(r"^\[cycle\] 9 abort: v2 not promoted \(rolled_back\): nwrmsle>0: (store-\d) reports nwrmsle=[0-9.]+$", out, re.M)
    assert m, out
    canary = m[1]
    assert re.search(rf"{canary}: (assigned|gate_passed|active)", out), out  # it did get v2 first
    assert re.search(rf"^    {canary}: rolled back, /healthz: v1$", out, re.M), out
    rest = sorted(set(urls) - {canary})
    for d in rest:
        assert re.search(rf"^    {d}: never got v2 \(pending\), /healthz: v1$", out, re.M), out
    for d, h in health.items():
        assert h["model"]["version"] == 1, (d, h)
    # the others never received v2 in their model stores
    for d in rest:
        assert sorted(p.name for p in (tmp_path / "agents" / d / "models").iterdir()) == ["1"], d
    assert (tmp_path / "out" / "favorita-demand-v2.bundle.tar").exists()

"""`edgeship cycle --once`: the whole CD4ML loop on embedded defaults (embedded amqtt broker, three agent
processes, in-process fleet ingest): data → train → publish → shop traffic and sales → realised accuracy
→ retrain on the fleet's actuals → canary rollout with abort rules → promote (or abort, with its reason)."""

import json
import re
import subprocess
import sys
import tarfile
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


def test_cycle_once_closes_the_loop(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeship", "cycle", "--once", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
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

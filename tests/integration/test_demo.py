"""`edgeship demo --once`: the whole system on embedded defaults (embedded amqtt broker, two agent processes)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_demo_once_serves_a_prediction_from_every_agent(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeship", "demo", "--once", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    served = re.findall(r"\[demo\] (store-\d): model v1 \((\S+)\) predicts ([0-9.]+) units for (\{.*\})", proc.stdout)
    assert [s[0] for s in served] == ["store-1", "store-2"], proc.stdout
    # the same signed bundle on two devices: the same row gets the same forecast from the same variant
    assert served[0][1:] == served[1][1:], served
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    shipped = [name for name, v in report["gates"]["parity"].items() if v["shipped"]]
    assert served[0][1] in shipped, (served, shipped)
    assert "embedded MQTT broker (amqtt" in proc.stdout
    urls = re.findall(r"predict (http://\S+)/v1/predict", proc.stdout)
    assert len(urls) == 2 and len(set(urls)) == 2, urls
    assert all(u.startswith("http://127.0.0.1:") for u in urls), urls  # agents listen on loopback only
    # a simulated serial shelf fed the first agent: its sales were acked and moved the serial forecast
    shelf = re.search(r"\[demo\] shelf \(firmware-sim on .+\) → bridge → .+: (\d+) sales .* acked; serial forecast", proc.stdout)
    assert shelf and int(shelf.group(1)) == 20, proc.stdout
    # the agents stopped with the demo: their logs end with a clean shutdown
    for log in (tmp_path / "logs").glob("store-*.log"):
        assert '"level": "error"' not in log.read_text(), log.read_text()[-2000:]

"""`edgeship demo --once`: the whole system on embedded defaults (embedded amqtt broker, two agent processes)."""

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
    served = re.findall(r"\[demo\] (store-\d): model v1 \((\S+)\) predicts ([0-9.]+) units", proc.stdout)
    assert [s[0] for s in served] == ["store-1", "store-2"], proc.stdout
    assert all(float(s[2]) >= 0 for s in served)
    assert "embedded MQTT broker (amqtt" in proc.stdout
    for url in re.findall(r"predict (http://127\.0\.0\.1:\d+)/v1/predict", proc.stdout):
        assert url.startswith("http://127.0.0.1:")
    # a simulated serial shelf fed the first agent: its sales were acked and moved the serial forecast
    shelf = re.search(r"\[demo\] shelf \(firmware-sim on .+\) → bridge → .+: (\d+) sales .* acked; serial forecast", proc.stdout)
    assert shelf and int(shelf.group(1)) == 20, proc.stdout
    assert (tmp_path / "out" / "report.json").is_file()
    # the agents stopped with the demo: their logs end with a clean shutdown
    for log in (tmp_path / "logs").glob("store-*.log"):
        assert '"level": "error"' not in log.read_text(), log.read_text()[-2000:]

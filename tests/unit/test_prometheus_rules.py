"""The shipped Prometheus configuration: `promtool check config`, `check rules`, and `promtool test rules`
with a unit test for every alert (a new alert without a test fails here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import require

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    tool = shutil.which("promtool")
    require(tool is not None, "promtool is not installed (apt-get install prometheus)")
    return str(tool)


def run(*args: str) -> None:
    r = subprocess.run([promtool(), *args], cwd=PROM, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_promtool_check_config_and_rules():
    run("check", "config", "prometheus.yml")
    run("check", "rules", "rules.yml")


def test_promtool_test_rules_passes():
    run("test", "rules", "rules.test.yml")


def test_every_alert_has_a_firing_unit_test():
    alerts = {r["alert"] for g in yaml.safe_load((PROM / "rules.yml").read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "rules.test.yml").read_text())["tests"]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    required = {"EdgeDeviceOffline", "EdgeTelemetryGap", "EdgeDriftHigh", "EdgeLatencyP99OverBudget",
                "EdgeGateFailures", "EdgeRolloutStuck", "EdgeRealisedErrorHigh"}
    assert required <= alerts, f"alerts missing from rules.yml: {required - alerts}"
    assert alerts <= fired, f"alerts without a unit test that fires them: {alerts - fired}"

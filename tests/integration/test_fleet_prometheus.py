"""The fleet behind NAT, monitored: two real agents (LiteRT) → real Mosquitto → `edgeship fleet serve`
→ a real Prometheus started with the shipped deploy/prometheus configuration → its HTTP API answers a
per-device edge metric. Also: realised accuracy (forecasts joined with reported sales on the device)
reaches the exporter, `promtool check metrics` passes on what the exporter serves, and every Grafana
panel's PromQL parses and runs on that Prometheus and uses only metrics the exporter serves.

Set EDGESHIP_ARTIFACTS=DIR to keep the Prometheus query result and its address for screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from edge.agent import Agent
from edge.config import AgentConfig
from edge.store.model_store import ModelStore
from tests.bundle_kit import STATE_END, build_bundle, real_models
from tests.conftest import free_port, require, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
DAY = str(np.datetime64(STATE_END, "D") + np.timedelta64(1, "D"))
ROWS = [(1, 103520), (1, 105574)]


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, keys):
    """Mosquitto, two agents with telemetry every 0.3 s, and the fleet exporter (a subprocess)."""
    from tests.conftest import Mosquitto

    tmp = tmp_path_factory.mktemp("fleet")
    bundle, manifest = build_bundle(tmp / "m-v1.tar", keys[0], version=1, variants=("tflite-fp32",),
                                    model_bytes=real_models(["tflite-fp32"]))
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    agents = []
    port = free_port()
    exporter = None
    try:
        for n in (1, 2):
            state = tmp / f"store-{n}"
            store = ModelStore(state, [keys[1]])
            store.install(bundle)
            store.activate(1)
            config = AgentConfig(
                device_id=f"store-{n}", state_dir=state, trust=[keys[2]], http="127.0.0.1:0", broker=broker.url,
                attributes={"store_nbr": str(n)}, telemetry={"interval_s": 0.3, "fsync": False},
                predlog={"sample_rate": 1.0}, drift={"min_rows": 2}, reconnect_min_s=1, reconnect_max_s=2,
            )
            agents.append(Agent(config).start())
        for a in agents:
            assert a.mqtt is not None and a.mqtt.wait_connected(10)
        log = open(tmp / "exporter.log", "wb")
        exporter = subprocess.Popen(
            [sys.executable, "-m", "edgeship", "fleet", "serve", "--broker", broker.url,
             "--metrics", f"127.0.0.1:{port}", "--state", str(tmp / "ingest"), "--save-interval", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        yield {"agents": agents, "port": port, "tmp": tmp, "broker": broker, "manifest": manifest}
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(10)
        for a in agents:
            a.stop()
        broker.stop()


def scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def traffic(agent: Agent) -> None:
    """Forecasts for DAY, then the shop reports what really sold that day."""
    with httpx.Client(base_url=agent.http_url, timeout=10) as c:
        for _ in range(3):
            for store, item in ROWS:
                r = c.post("/v1/predict", json={"instances": [{"date": DAY, "store_nbr": store, "item_nbr": item, "onpromotion": False}]})
                assert r.status_code == 200, r.text
        r = c.post("/v1/sales", json={"sales": [{"date": DAY, "store_nbr": s, "item_nbr": i, "unit_sales": 3.0} for s, i in ROWS]})
        assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def shop_day(fleet):
    for a in fleet["agents"]:
        traffic(a)
    return fleet


def test_exporter_prometheus_and_dashboards(shop_day, tmp_path):
    fleet = shop_day
    promtool, prometheus = shutil.which("promtool"), prometheus_binary()
    require(promtool is not None and prometheus is not None, "prometheus is not installed (apt-get install prometheus)")
    port = fleet["port"]
    # realised accuracy computed on the device arrives at the exporter as a fleet metric
    def realised_from_both(t: str) -> bool:
        lines = [ln for ln in t.splitlines() if ln.startswith("edgeship_fleet_realised_nwrmsle{")]
        return all(any(f'device="store-{n}"' in ln for ln in lines) for n in (1, 2))

    text = wait_for(lambda: (t := scrape(port)) and realised_from_both(t) and t, "realised accuracy in the exporter", 60)
    line = next(ln for ln in text.splitlines() if ln.startswith("edgeship_fleet_realised_nwrmsle{") and 'device="store-1"' in ln)
    assert 'store="1"' in line and 'model_version="1"' in line and 'variant="tflite-fp32"' in line and 'store_nbr="1"' in line
    assert float(line.rsplit(" ", 1)[1]) > 0
    r = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()

    # Prometheus with the shipped configuration, the exporter's address in place of the compose name
    conf_dir = tmp_path / "prometheus"
    conf_dir.mkdir()
    shutil.copy(PROM / "rules.yml", conf_dir / "rules.yml")
    conf = yaml.safe_load((PROM / "prometheus.yml").read_text())
    conf["global"]["scrape_interval"] = conf["global"]["evaluation_interval"] = "1s"
    conf["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    agent_targets = [{"targets": [a.http_url.split("//", 1)[1]], "labels": {"device": a.config.device_id}} for a in fleet["agents"]]
    (conf_dir / "targets").mkdir()
    (conf_dir / "targets" / "agents.json").write_text(json.dumps(agent_targets))
    (conf_dir / "prometheus.yml").write_text(yaml.safe_dump(conf))
    check = subprocess.run([promtool, "check", "config", str(conf_dir / "prometheus.yml")], capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    web = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={conf_dir / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{web}/api/v1"
    try:
        def query(q: str) -> dict:
            try:
                return httpx.get(f"{api}/query", params={"query": q}, timeout=10).json()
            except (httpx.HTTPError, ValueError):
                return {}

        q = 'edgeship_fleet_requests_total{device="store-1",transport="http",outcome="ok"}'
        result = wait_for(lambda: (query(q).get("data") or {}).get("result"), "Prometheus to scrape the exporter", 90)
        sample = result[0]
        assert sample["metric"]["store"] == "1" and sample["metric"]["model_version"] == "1"
        assert float(sample["value"][1]) >= 3
        # agents reachable in the shop network are scraped directly, too
        wait_for(lambda: (query('up{job="edgeship-agent"} == 1').get("data") or {}).get("result"), "agents scraped", 60)
        rules = httpx.get(f"{api}/rules", timeout=10).json()["data"]["groups"][0]["rules"]
        assert len(rules) == len(yaml.safe_load((PROM / "rules.yml").read_text())["groups"][0]["rules"])
        assert all(r["health"] == "ok" for r in wait_for(
            lambda: [r for r in httpx.get(f"{api}/rules", timeout=10).json()["data"]["groups"][0]["rules"] if r.get("lastEvaluation", "").startswith("2")]
            if all(r.get("health") == "ok" for r in httpx.get(f"{api}/rules", timeout=10).json()["data"]["groups"][0]["rules"]) else [],
            "rules evaluated", 30))

        # every Grafana panel's PromQL: parsed and run by this Prometheus, using only exporter metrics
        served: set[str] = set()
        for m, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
            served.add(m)
            served |= {f"{m}_total"} if kind == "counter" else set()
            served |= {f"{m}_bucket", f"{m}_sum", f"{m}_count"} if kind == "histogram" else set()
        checked = 0
        for path in sorted(DASHBOARDS.glob("*.json")):
            for panel in json.loads(path.read_text())["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", "1m").replace("$fleet", "default").replace("$device", ".*")
                    answer = httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()
                    assert answer.get("status") == "success", f"{path.name} / {panel['title']}: {answer}"
                    for name in set(re.findall(r"\b(edgeship_\w+|up)\b", expr)):
                        if name.startswith("edgeship_"):
                            assert name in served, f"{path.name} / {panel['title']} uses {name}, which the exporter does not serve"
                    checked += 1
        assert checked >= 20
        out = os.environ.get("EDGESHIP_ARTIFACTS")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            Path(out, "prometheus-query.json").write_text(json.dumps({"query": q, "result": result}, indent=1))
            Path(out, "prometheus-url.txt").write_text(f"http://127.0.0.1:{web}\n")
            if os.environ.get("EDGESHIP_ARTIFACTS_HOLD"):
                time.sleep(float(os.environ["EDGESHIP_ARTIFACTS_HOLD"]))
    finally:
        proc.terminate()
        proc.wait(15)


def test_fleet_report_after_serve(shop_day):
    """`edgeship fleet report` reads the ingest's saved state: realised per store and version, offline next to it."""
    fleet = shop_day
    state = fleet["tmp"] / "ingest"

    def report() -> list:
        r = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "report", "--state", str(state), "--json"],
                           capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else []

    rows = wait_for(lambda: (rows := report()) and {r["store_nbr"] for r in rows} == {1} and rows, "a saved realised report", 60)
    # store 2's agent answered store 1 rows too (the rows name the store), so two devices pool for store 1
    assert rows[0]["model"] == "favorita-demand" and rows[0]["version"] == 1 and rows[0]["rows"] >= 2
    assert rows[0]["offline_nwrmsle"] == pytest.approx(fleet["manifest"].variants[0].metrics["nwrmsle"])
    text = subprocess.run([sys.executable, "-m", "edgeship", "fleet", "report", "--state", str(state)],
                          capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60).stdout.decode()
    assert "realised_nwrmsle" in text and "offline_nwrmsle" in text

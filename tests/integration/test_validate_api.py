"""The validation app's named API (gradio_client) against a real agent (LiteRT) and a real Mosquitto:
predict, explain (contributions add up to prediction − baseline), feedback reaching the device's
SQLite store, the lag state, and — across a broker outage — the cloud collector (`edgeship feedback
collect`, a separate process), then `edgeship feedback report`."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Mosquitto, require, wait_for
from tests.validate_kit import agent_and_app, device_feedback

pytestmark = pytest.mark.integration



@pytest.fixture(autouse=True)
def _needs_gradio():
    require(importlib.util.find_spec("gradio") is not None and importlib.util.find_spec("gradio_client") is not None,
            "gradio / gradio_client are not installed (pip install -e '.[validate]')")  # fmt: skip
ROW = ("2017-08-17", "1", "103520", True)


def _persistent_broker(workdir: Path) -> Mosquitto:
    """Mosquitto keeping sessions across a restart (the collector's queued QoS 1 messages survive)."""
    conf = (f"listener {{port}} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {workdir}/\n"
            "max_queued_messages 10000\nlog_dest stderr\n")  # fmt: skip
    return Mosquitto(workdir, config=conf)


def _collected(out: Path) -> list[dict]:
    path = out / "feedback.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_predict_explain_feedback_through_a_broker_outage(tmp_path, keys, tmp_path_factory):
    from gradio_client import Client

    broker = _persistent_broker(tmp_path_factory.mktemp("mosq")).start()
    out = tmp_path / "cloud-feedback"
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[2]))}
    collector = subprocess.Popen(
        [sys.executable, "-m", "edgeship", "feedback", "collect", "--broker", broker.url, "--out", str(out),
         "--client-id", "test-collector"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        with agent_and_app(tmp_path, keys, broker=broker.url) as (agent, url):
            assert agent.mqtt.wait_connected(15)
            client = Client(url, verbose=False)
            assert {"/predict", "/explain", "/feedback"} <= set(client.view_api(return_format="dict")["named_endpoints"])

            # predict: the app shows what the agent's own /v1/predict answers, and the model that answered
            body = {"instances": [{"date": ROW[0], "store_nbr": 1, "item_nbr": 103520, "onpromotion": True}]}
            direct = httpx.post(agent.http_url + "/v1/predict", json=body).json()
            forecast_md, _cand, model_md, _plot, e_date, e_store, e_item, = client.predict(*ROW, api_name="/predict")[:7]
            assert f"{direct['predictions'][0]:.2f} units" in forecast_md
            assert "v1" in model_md and "tflite-fp32" in model_md and direct["model"]["digest"][:12] in model_md
            assert (e_date, e_store, e_item) == ("", "", "")
            # the agent's refusal lands next to the field it names
            bad = client.predict("2017-08-17", "99", "103520", False, api_name="/predict")
            assert "unknown store 99" in bad[5] and "known_store" in bad[5] and bad[4] == bad[6] == ""
            bad = client.predict("2001-01-01", "1", "103520", False, api_name="/predict")
            assert "horizon" in bad[4] and bad[5] == ""

            # explain: computed on the served model; contributions add up to prediction − baseline
            e = httpx.post(agent.http_url + "/v1/explain", json={"instance": body["instances"][0]}).json()
            total = sum(c["contribution"] for c in e["contributions"])
            assert abs(total - (e["prediction"] - e["baseline_prediction"])) < 1e-3
            assert abs(e["prediction"] - direct["predictions"][0]) < 1e-3
            assert [c["feature"] for c in e["contributions"]][:3] == ["store", "item", "family"]
            bars, text = client.predict(*ROW, api_name="/explain")
            assert abs(sum(v for _, v in bars["data"]) - total) < 1e-6
            assert {f for f, _ in bars["data"]} == {c["feature"] for c in e["contributions"]}
            assert "tflite-fp32" in text

            # feedback with the broker up reaches the device store, the lag state, and the collector
            msg = client.predict(*ROW, "wrong", 7, "shelf was empty", "ana", api_name="/feedback")
            assert "stored on the device" in msg and "lag state: updated" in msg
            first = re.search(r"`([0-9a-f]{32})`", msg).group(1)
            rows = device_feedback(agent)
            assert rows[-1]["id"] == first and rows[-1]["actual_units"] == 7 and rows[-1]["validator"] == "ana"
            assert rows[-1]["model"]["digest"] == direct["model"]["digest"] and rows[-1]["device_id"] == "store-1"
            hist = httpx.get(agent.http_url + "/v1/history", params={"store_nbr": 1, "item_nbr": 103520, "days": 3}).json()
            assert hist["end_date"] == ROW[0] and hist["unit_sales"][-1] == 7.0
            wait_for(lambda: any(r["id"] == first for r in _collected(out)), "the first record at the collector", 30)

            # outage: feedback is taken, kept in SQLite and the spool, and delivered after the broker returns
            broker.stop()
            wait_for(lambda: not agent.mqtt.connected, "the agent to notice the outage", 30)
            msg = client.predict("2017-08-18", "1", "105574", False, "right", None, "", "ben", api_name="/feedback")
            assert "stored on the device" in msg and "lag state: not_applicable" in msg
            second = re.search(r"`([0-9a-f]{32})`", msg).group(1)
            assert device_feedback(agent)[-1]["id"] == second
            assert agent.field.feedback.pending >= 1
            broker.start()
            wait_for(lambda: any(r["id"] == second for r in _collected(out)), "the second record after the outage", 60)
            got = _collected(out)
            assert len({r["id"] for r in got}) == len(got) == 2  # deduplicated, nothing lost
            assert sorted(r["seq"] for r in got) == [1, 2]
    finally:
        collector.terminate()
        collector.wait(10)
        broker.stop()

    report = subprocess.run(
        [sys.executable, "-m", "edgeship", "feedback", "report", "--in", str(out), "--format", "json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    (group,) = json.loads(report.stdout)
    assert group["site"] == "store-1" and group["version"] == 1 and group["count"] == 2
    assert group["agreement"] == 0.5 and group["with_actuals"] == 1 and group["nwrmsle"] > 0
    assert group["worst_items"][0]["item_nbr"] == 103520
    csv_out = subprocess.run(
        [sys.executable, "-m", "edgeship", "feedback", "report", "--in", str(out), "--format", "csv"],
        capture_output=True, text=True, env=env, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    assert csv_out[0].startswith("site,model,version") and csv_out[1].startswith("store-1,")


def test_served_page_loads_nothing_from_outside(tmp_path, keys):
    """No CDN: every script, stylesheet, font and image the page and its theme name is on the app's host."""
    with agent_and_app(tmp_path, keys) as (_agent, url):
        html = httpx.get(url).text
        css = httpx.get(url + "theme.css").text if httpx.get(url + "theme.css").status_code == 200 else ""
        refs = re.findall(r'<(?:script|img)[^>]*\bsrc="([^"]+)"', html)
        refs += re.findall(r'<link[^>]*\bhref="([^"]+)"', html)
        refs += re.findall(r"@import\s+(?:url\()?['\"]?([^'\")\s;]+)", html + css)
        refs += re.findall(r"url\(['\"]?([^'\")]+)", css)
        outside = [r for r in refs if re.match(r"(https?:)?//", r) and not re.match(r"(https?:)?//(127\.0\.0\.1|localhost)", r)]
        assert not outside, outside
        assert "fonts.googleapis" not in html + css and "fonts.gstatic" not in html + css


@pytest.mark.parametrize("mode", ["shadow", "ab"])
def test_candidate_forecast_beside_the_live_one_and_the_arm_that_answered(tmp_path, keys, mode):
    """v1 live, v2 (other weights) as candidate: the page shows both forecasts with their models and
    marks the arm that answered; "Answered by" and the feedback record name that arm's model."""
    from gradio_client import Client

    with agent_and_app(tmp_path, keys, candidate={"mode": mode, "share": 1.0}) as (agent, url):
        row = {"date": ROW[0], "store_nbr": 1, "item_nbr": 103520, "onpromotion": True}
        live = httpx.post(agent.http_url + "/v1/predict:live", json={"instances": [row]}).json()
        cand = httpx.post(agent.http_url + "/v1/predict:candidate", json={"instances": [row]}).json()
        assert (live["model"]["version"], cand["model"]["version"], cand["mode"]) == (1, 2, mode)
        assert abs(live["predictions"][0] - cand["predictions"][0]) > 0.01  # two different models
        answered = cand if mode == "ab" else live  # A/B with share 1.0: every row goes to the candidate

        forecast_md, side, model_md = Client(url, verbose=False).predict(*ROW, api_name="/predict")[:3]
        assert f"{answered['predictions'][0]:.2f} units" in forecast_md
        assert f"v{answered['model']['version']}" in model_md and answered["model"]["digest"][:12] in model_md
        lines = {ln.split("|")[1].strip(): ln for ln in side.splitlines() if ln.startswith("| **")}
        live_line = next(v for k, v in lines.items() if k.startswith("**live**"))
        cand_line = next(v for k, v in lines.items() if k.startswith("**candidate**"))
        assert f"{live['predictions'][0]:.2f} units" in live_line and "v1" in live_line and live["model"]["digest"][:12] in live_line
        assert f"{cand['predictions'][0]:.2f} units" in cand_line and "v2" in cand_line and f"{mode}, 100% of traffic" in cand_line
        assert ("← answered" in cand_line) == (mode == "ab") and ("← answered" in live_line) == (mode == "shadow")

        msg = Client(url, verbose=False).predict(*ROW, "right", None, "", "ana", api_name="/feedback")
        assert "stored on the device" in msg
        assert device_feedback(agent)[-1]["model"]["version"] == answered["model"]["version"]


def test_no_candidate_no_side_by_side(tmp_path, keys):
    from gradio_client import Client

    with agent_and_app(tmp_path, keys) as (agent, url):
        r = httpx.post(agent.http_url + "/v1/predict:candidate", json={"instances": [{"date": ROW[0], "store_nbr": 1, "item_nbr": 103520}]})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_candidate"
        assert Client(url, verbose=False).predict(*ROW, api_name="/predict")[1] == ""


def test_plot_batch_csv_and_contract_names(tmp_path, keys):
    """The sales plot carries every forecast day after the lag state; the explanation names the
    contract's features; the CSV tab answers per row (errors naming the field) and offers the file."""
    from gradio_client import Client, handle_file

    from models.contract import CAT_FEATURES, NUM_FEATURES

    with agent_and_app(tmp_path, keys) as (agent, url):
        client = Client(url, verbose=False)
        end = httpx.get(agent.http_url + "/v1/history", params={"store_nbr": 1, "item_nbr": 103520}).json()["end_date"]
        assert end == "2017-08-15"
        out = client.predict("2017-08-19", "1", "103520", False, api_name="/predict")
        plot = out[3]
        series = {}
        for ts, units, name in plot["data"]:
            series.setdefault(name, []).append((dt.datetime.fromtimestamp(ts / 1000, dt.timezone.utc).date().isoformat(), units))
        assert len(series["actual sales (lag state)"]) == 28 and series["actual sales (lag state)"][-1][0] == end
        days = [d for d, _ in series["forecast"]]
        assert days == [end, "2017-08-16", "2017-08-17", "2017-08-18", "2017-08-19"]  # joined to the last actual
        rows = [{"date": d, "store_nbr": 1, "item_nbr": 103520, "onpromotion": False} for d in days[1:]]
        direct = httpx.post(agent.http_url + "/v1/predict", json={"instances": rows}).json()["predictions"]
        assert [u for _, u in series["forecast"][1:]] == pytest.approx(direct, abs=1e-6)
        assert f"{direct[-1]:.2f} units" in out[0]

        bars, _ = client.predict("2017-08-19", "1", "103520", False, api_name="/explain")
        assert sorted(f for f, _ in bars["data"]) == sorted((*CAT_FEATURES, *NUM_FEATURES))

        csv_in = tmp_path / "rows.csv"
        csv_in.write_text("date,store_nbr,item_nbr,onpromotion\n2017-08-17,1,103520,1\n2017-08-17,99,103520,0\n"
                          "17/08/2017,1,105574,0\n2017-08-18,1,105574,no\n")  # fmt: skip
        table, download, summary = client.predict(handle_file(str(csv_in)), api_name="/predict_batch")
        assert summary == "2 rows forecast, 2 with errors"
        got = {tuple(r[:3]): r for r in table["data"]}
        assert got[("2017-08-17", 1, 103520)][4] > 0 and got[("2017-08-17", 1, 103520)][5] == ""
        assert got[("2017-08-17", 99, 103520)][4] is None
        assert got[("2017-08-17", 99, 103520)][5] == "store_nbr: unknown store 99 (rule known_store)"
        assert got[("17/08/2017", 1, 105574)][5].startswith("date: ") and "YYYY-MM-DD" in got[("17/08/2017", 1, 105574)][5]
        assert got[("2017-08-18", 1, 105574)][4] > 0
        with open(download, newline="") as fh:
            saved = list(csv.DictReader(fh))
        assert [r["error"] for r in saved] == [r[5] for r in table["data"]]
        assert saved[0]["prediction"] and not saved[1]["prediction"]
        _, _, msg = client.predict(None, api_name="/predict_batch")
        assert "file: upload a CSV" in msg


def test_agent_down_and_agent_without_a_model_are_said_on_screen(tmp_path, keys):
    from gradio_client import Client

    from edge.agent import Agent
    from edge.config import AgentConfig
    from edge.validate_app.app import launch
    from tests.conftest import free_port

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    bare = Agent(AgentConfig(device_id="store-9", state_dir=tmp_path / "bare", trust=[keys[2]], http="127.0.0.1:0")).start()
    apps = []
    try:
        for agent_url in (down, bare.http_url):
            apps.append(launch(agent_url, port=0)[0])
        (down_app, bare_app) = (Client(f"http://127.0.0.1:{a.server_port}/", verbose=False) for a in apps)

        forecast, _, _, _, e_date, e_store, e_item = down_app.predict(*ROW, api_name="/predict")[:7]
        assert "is not reachable" in forecast and down in forecast and (e_date, e_store, e_item) == ("", "", "")
        _, text = down_app.predict(*ROW, api_name="/explain")
        assert "is not reachable" in text
        assert "is not reachable" in down_app.predict(*ROW, "wrong", 3, "", "ana", api_name="/feedback")

        forecast = bare_app.predict(*ROW, api_name="/predict")[0]
        assert "has no model yet" in forecast
        _, text = bare_app.predict(*ROW, api_name="/explain")
        assert "has no model yet" in text
        assert "has no model yet" in bare_app.predict(*ROW, "wrong", 3, "", "ana", api_name="/feedback")
    finally:
        for a in apps:
            a.close()
        bare.stop()


def test_basic_auth_keeps_the_page_and_the_api_closed(tmp_path, keys):
    from gradio_client import Client

    with agent_and_app(tmp_path, keys, auth=[("staff", "s3cret")]) as (_agent, url):
        assert httpx.get(url + "config").status_code in (401, 403)
        with pytest.raises(Exception):  # noqa: B017  (gradio_client raises its own errors for a closed app)
            Client(url, verbose=False)
        with pytest.raises(Exception):  # noqa: B017
            Client(url, auth=("staff", "wrong"), verbose=False)
        client = Client(url, auth=("staff", "s3cret"), verbose=False)
        assert "units" in client.predict(*ROW, api_name="/predict")[0]

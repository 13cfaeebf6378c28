"""The agent's serving over a REAL Mosquitto (ephemeral loopback port): MQTT request/response, sales
and commands, fuzzed payloads, a 30 s broker outage (HTTP keeps serving; the telemetry sequence is
complete afterwards), and — under strace — no network connection but the broker and its listener."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.agent import Agent
from edge.config import AgentConfig
from edge.store.model_store import ModelStore
from tests.bundle_kit import STATE_END, build_bundle, onnx_linear, tflite_linear
from models import topics
from models.broker import BrokerURL, new_client
from tests.conftest import Mosquitto, require

pytestmark = pytest.mark.integration

DEVICE = "store-1"
ROOT = Path(__file__).resolve().parents[2]
END = np.datetime64(STATE_END, "D")


def day(offset: int) -> str:
    return str(END + np.timedelta64(offset, "D"))


ROW = {"date": day(1), "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, keys):
    path, _ = build_bundle(tmp_path_factory.mktemp("b") / "m-v1.bundle.tar", keys[0], version=1, max_batch=8)
    return path


def installed(state: Path, keys, bundle: Path) -> Path:
    store = ModelStore(state, [keys[1]])
    store.install(bundle)
    store.activate(1)
    return state


class Client:
    """The shop's / fleet's side: plain paho, collecting what the device sends."""

    def __init__(self, url: str, client_id: str = "test-client", *, clean: bool = True) -> None:
        u = BrokerURL.parse(url)
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.c = new_client(client_id, u, clean_session=clean)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_: c.subscribe(
            [(topics.device_wildcard("default", leaf), 1) for leaf in ("events", "telemetry", "response/+")]
        )
        self.c.reconnect_delay_set(1, 1)
        self.c.connect(u.host, u.port, keepalive=5)
        self.c.loop_start()

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def received(self, suffix: str) -> list[dict]:
        with self.cond:
            return [json.loads(p) for t, p in self.messages if t.endswith(suffix)]

    def wait(self, cond, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (value := cond()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(min(left, 0.2))
            return value

    def request(self, name: str, payload: bytes | dict) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.c.publish(topics.request("default", DEVICE, name), data, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def agent_config(tmp_path: Path, pem: Path, broker: str, **kw) -> AgentConfig:
    fields = {"device_id": DEVICE, "state_dir": tmp_path / "state", "trust": [pem], "http": "127.0.0.1:0",
              "runtime": "fake", "broker": broker, "reconnect_min_s": 1, "reconnect_max_s": 2, "keepalive_s": 5}  # fmt: skip
    return AgentConfig(**{**fields, **kw})


def test_mqtt_request_response_sales_and_commands(tmp_path, keys, bundle, mosquitto):
    installed(tmp_path / "state", keys, bundle)
    client = Client(mosquitto.url)
    agent = Agent(agent_config(tmp_path, keys[2], mosquitto.url)).start()
    try:
        assert agent.mqtt.wait_connected(10)
        time.sleep(0.3)  # the agent's subscriptions are made on connect
        expected = agent.predictor.predict([ROW])
        for k in range(20):  # a burst: answered together, each with its own correlation id
            client.request("predict", {"correlation_id": f"c{k}", "instances": [ROW]})
        answers = client.wait(lambda: len(client.received("/response/predict")) >= 20 and client.received("/response/predict"), "20 answers")
        assert sorted(a["correlation_id"] for a in answers) == sorted(f"c{k}" for k in range(20))
        assert all(a["predictions"] == expected and a["model"]["version"] == 1 for a in answers)

        def answer_to(cid):
            return client.wait(lambda: [a for a in client.received("/response/predict") if a.get("correlation_id") == cid], cid)[0]

        client.request("predict", {"correlation_id": "bad", "instances": [{**ROW, "store_nbr": 999}]})
        err = answer_to("bad")
        assert err["status"] == 422 and err["error"]["code"] == "invalid_request"
        assert err["error"]["details"][0] == {"field": "instances[0].store_nbr", "rule": "known_store",
                                              "message": "instances[0].store_nbr: unknown store 999 (rule known_store)"}  # fmt: skip
        client.request("predict", {"correlation_id": "old", "instances": [ROW], "expires_at": "2001-01-01T00:00:00Z"})
        assert answer_to("old")["status"] == 408 and answer_to("old")["error"]["code"] == "expired"
        client.request("predict", {"correlation_id": "late", "instances": [ROW], "expires_at": "2999-01-01T00:00:00+00:00"})
        assert answer_to("late")["predictions"] == expected
        n = len(client.received("/response/predict"))
        client.request("predict", b"\xff not json")
        nojson = client.wait(lambda: len(client.received("/response/predict")) > n and client.received("/response/predict")[-1], "400")
        assert nojson["status"] == 400 and nojson["correlation_id"] is None

        client.request("sales", {"correlation_id": "s1", "sales": [{"date": day(1), "store_nbr": 1, "item_nbr": 103520, "unit_sales": 4}]})
        ack = client.wait(lambda: client.received("/response/sales"), "sales ack")[0]
        assert ack == {"schema_version": 1, "correlation_id": "s1", "accepted": 1, "end_date": day(1), "pairs": 4}
        client.request("sales", {"correlation_id": "s2", "sales": [{"date": day(1), "store_nbr": 1, "item_nbr": 1, "unit_sales": 4}]})
        nack = client.wait(lambda: [a for a in client.received("/response/sales") if a["correlation_id"] == "s2"], "nack")[0]
        assert nack["status"] == 422 and nack["error"]["details"][0]["rule"] == "known_item"

        # a candidate by command on …/set (the previous version would be usual; here v1 itself)
        from cloud.fleet.publish import sign_candidate  # candidate commands are signed orders (issue 7)

        order = sign_candidate(keys[0], model=agent.predictor.name, devices=[DEVICE], version=1,
                               sha256=agent.predictor.digest, mode="shadow")  # fmt: skip
        client.c.publish(topics.command("default", DEVICE), json.dumps(
            {"command": "candidate", "correlation_id": "k1", "signed": order.model_dump(mode="json")}), qos=1).wait_for_publish(5)
        event = client.wait(lambda: [e for e in client.received("/events") if e["kind"] == "candidate"], "candidate event")[0]
        assert event["detail"]["outcome"] == "loaded" and event["detail"]["correlation_id"] == "k1" and event["seq"] >= 1
        client.c.publish(topics.command("default", DEVICE), b'{"command": "reboot"}', qos=1).wait_for_publish(5)
        value = agent.metrics.registry.get_sample_value
        client.wait(lambda: value("edgeship_bad_messages_total") >= 1, "unknown command counted")
        client.wait(lambda: value("edgeship_requests_total", {"transport": "mqtt", "outcome": "ok"}) == 21, "21 ok")
        assert value("edgeship_requests_total", {"transport": "mqtt", "outcome": "invalid"}) == 3
    finally:
        agent.stop()
        client.close()


# -- fuzzed MQTT payloads ---------------------------------------------------------------------
payloads = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
            ["instances", "sales", "correlation_id", "expires_at", "command", "version", "mode", "share", "date",
             "store_nbr", "item_nbr", "unit_sales", "onpromotion", "x"]), inner, max_size=5),
        max_leaves=15,
    ).map(lambda v: json.dumps(v).encode()),
)


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory, keys, bundle):
    work = tmp_path_factory.mktemp("fuzz-mqtt")
    broker = Mosquitto(work).start()
    installed(work / "state", keys, bundle)
    client = Client(broker.url, "fuzzer")
    agent = Agent(agent_config(work, keys[2], broker.url)).start()
    assert agent.mqtt.wait_connected(10)
    time.sleep(0.3)
    sent = {"predict": 0, "sales": 0}
    yield agent, client, sent
    agent.stop()
    client.close()
    broker.stop()


def test_fuzzed_mqtt_payloads_are_each_answered_and_never_crash_the_agent(fuzz_setup):
    agent, client, sent = fuzz_setup

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload=payloads, where=st.sampled_from(["predict", "sales", "set"]))
    def fire(payload, where):
        if where == "set":
            client.c.publish(topics.command("default", DEVICE), payload, qos=1).wait_for_publish(5)
        else:
            client.request(where, payload)
            sent[where] += 1

    fire()
    assert sent["predict"] and sent["sales"]  # both request kinds were fuzzed
    for name in ("predict", "sales"):
        client.wait(lambda n=name: len(client.received(f"/response/{n}")) >= sent[n], f"{sent[name]} {name} answers", 20)
        assert len(client.received(f"/response/{name}")) == sent[name]
        for a in client.received(f"/response/{name}"):
            assert "error" in a or "predictions" in a or "accepted" in a
    client.request("predict", {"correlation_id": "alive", "instances": [ROW]})
    ok = client.wait(lambda: [a for a in client.received("/response/predict") if a.get("correlation_id") == "alive"], "alive")
    assert ok[0]["predictions"]
    assert httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]}).status_code == 200


# -- a 30 s broker outage ---------------------------------------------------------------------
def test_broker_outage_serving_continues_and_telemetry_arrives_complete(tmp_path, keys, bundle):
    (tmp_path / "broker" / "db").mkdir(parents=True)
    broker = Mosquitto(tmp_path / "broker")
    # persistence: the fleet-side subscriber's session (and what is queued for it) survives the restart
    broker.conf.write_text(
        broker.conf.read_text().replace("persistence false", f"persistence true\npersistence_location {tmp_path}/broker/db/")
    )
    broker.start()
    installed(tmp_path / "state", keys, bundle)
    fleet = Client(broker.url, "fleet-watcher", clean=False)
    agent = Agent(agent_config(tmp_path, keys[2], broker.url, telemetry={"interval_s": 0.5})).start()
    http = httpx.Client(base_url=agent.http_url, timeout=5)
    try:
        assert agent.mqtt.wait_connected(10)
        fleet.wait(lambda: len(fleet.received("/telemetry")) >= 2, "telemetry before the outage")
        broker.stop()
        outage_started = time.monotonic()
        agent.mqtt.publish_event("note", phase="outage")  # an event while offline: spooled, numbered
        served = failed = 0
        while time.monotonic() - outage_started < 30:
            r = http.post("/v1/predict", json={"instances": [ROW]})
            served, failed = served + (r.status_code == 200), failed + (r.status_code != 200)
            time.sleep(0.05)
        assert failed == 0 and served > 100
        assert not agent.mqtt.connected and agent.telemetry.spool.pending >= 50  # ~60 telemetry messages waiting
        broker.start()
        last = agent.telemetry.spool.next_seq - 1

        def seqs() -> set[int]:
            return {m["seq"] for suffix in ("/telemetry", "/events") for m in fleet.received(suffix) if m.get("seq")}

        fleet.wait(lambda: set(range(1, last + 1)) <= seqs(), f"every message up to seq {last}", timeout=30)
        got = seqs()
        assert set(range(1, max(got) + 1)) == got, f"gaps: {sorted(set(range(1, max(got) + 1)) - got)}"
        note = [e for e in fleet.received("/events") if e["kind"] == "note"]
        assert note and note[0]["detail"] == {"phase": "outage"}
        assert agent.metrics.registry.get_sample_value("edgeship_telemetry_dropped_total") == 0
        # A report built after the outage counts every request served during it. (The last spooled
        # report was built up to one interval before the load loop ended, so it may count fewer.)
        after = fleet.wait(
            lambda: [t for t in fleet.received("/telemetry") if t.get("seq", 0) > last], "a report made after the outage"
        )
        telemetry = after[0]
        assert telemetry["data"]["model"]["version"] == 1 and telemetry["data"]["requests"]["http_ok"] >= served
    finally:
        http.close()
        agent.stop()
        fleet.close()
        broker.stop()


# -- no connection but the broker and the agent's own listener --------------------------------
def unexpected_connections(lines: list[str], *, broker_port: int) -> tuple[list[str], list[str], set[int]]:
    """From ``strace -f -e trace=network`` output: every connect/sendto/sendmsg with an address, those
    going anywhere but the broker or the process's own listeners on loopback, and those listeners."""
    # Own listeners: HTTP, and the loopback socket pair paho makes to wake its loop.
    listened = {m[1] for line in lines if (m := re.search(r"\blisten\((\d+),", line))}
    own = {
        int(m[2])
        for line in lines
        if (m := re.search(r"getsockname\((\d+), \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\)", line))
        and m[1] in listened
    }
    allowed = own | {broker_port}
    connects = [line for line in lines if re.search(r"\b(connect|sendto|sendmsg)\(", line) and "sa_family=" in line]
    unexpected = []
    for line in connects:
        m = re.search(r"sa_family=(AF_\w+)(?:, sin6?_port=htons\((\d+)\))?", line)
        family, port = m[1], int(m[2]) if m[2] else None
        loopback = 'inet_addr("127.0.0.1")' in line or 'inet_pton(AF_INET6, "::1"' in line
        if family == "AF_NETLINK":  # the kernel (interface lists), not the network
            continue
        if family in ("AF_INET", "AF_INET6") and loopback and port in allowed:
            continue
        unexpected.append(line)  # anything else: DNS, a phone-home, nscd/D-Bus over a Unix socket...
    return connects, unexpected, own


def test_the_trace_check_catches_dns_and_phone_home():
    lines = [
        '1 bind(7, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        "1 listen(7, 1) = 0",
        '1 getsockname(7, {sa_family=AF_INET, sin_port=htons(4000), sin_addr=inet_addr("127.0.0.1")}, [16]) = 0',
        '1 connect(8, {sa_family=AF_INET, sin_port=htons(4000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '2 connect(9, {sa_family=AF_INET, sin_port=htons(1883), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '2 connect(10, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}, 16) = 0',
        '2 sendto(11, "...", 40, MSG_NOSIGNAL, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("127.0.0.53")}, 16) = 40',
        '2 connect(12, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        '2 connect(13, {sa_family=AF_INET, sin_port=htons(443), sin_addr=inet_addr("20.42.65.92")}, 16) = -1 EINPROGRESS',
        '2 sendto(14, {{len=20, type=RTM_GETLINK}}, 20, 0, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 20',
    ]
    _, unexpected, own = unexpected_connections(lines, broker_port=1883)
    assert own == {4000}
    assert [line.split("(", 1)[1].split(",", 1)[0] for line in unexpected] == ["10", "11", "12", "13"]


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-f", "-e", "trace=network", "-o", os.devnull, "true"], capture_output=True).returncode == 0


def test_agent_opens_no_connection_but_the_broker_and_its_listener(tmp_path, keys, mosquitto):
    require(_strace_works(), "strace is missing or not permitted (apt-get install strace)")
    models = {"tflite-fp32": tflite_linear(), "onnx-fp32": onnx_linear()}
    bundle, _ = build_bundle(tmp_path / "m-v1.bundle.tar", keys[0], variants=("onnx-fp32", "tflite-fp32"), model_bytes=models)
    installed(tmp_path / "state", keys, bundle)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "GRADIO_"))}  # the agent must do it itself
    trace = tmp_path / "trace.txt"
    cmd = ["strace", "-f", "-e", "trace=network", "-o", str(trace),
           sys.executable, "-m", "edgeship", "agent", "--device-id", DEVICE, "--state-dir", str(tmp_path / "state"),
           "--trust", str(keys[2]), "--http", "127.0.0.1:0", "--broker", mosquitto.url, "--variant", "onnx-fp32"]  # fmt: skip
    log = tmp_path / "agent.log"
    with open(log, "w") as err:  # a file, not a pipe: nothing here can block on a process that lingers
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
        )
    client = Client(mosquitto.url)
    try:
        first_line: list[str] = []
        reader = threading.Thread(target=lambda: first_line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(60)
        url = first_line[0].strip() if first_line else ""
        assert url.startswith("http://127.0.0.1:"), f"agent did not start: {url!r}\n{log.read_text()[-3000:]}"
        r = httpx.post(f"{url}/v1/predict", json={"instances": [ROW]}, timeout=10)
        assert r.status_code == 200 and r.json()["model"]["runtime"] == "onnxruntime"
        time.sleep(1.0)  # connected; a telemetry-minded runtime would phone home about now
        client.request("predict", {"correlation_id": "x", "instances": [ROW]})
        client.wait(lambda: client.received("/response/predict"), "an MQTT answer")
        httpx.post(f"{url}/v1/sales", json={"sales": [{"date": day(1), "store_nbr": 1, "item_nbr": 103520, "unit_sales": 1}]})
        agent_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        os.kill(agent_pid, signal.SIGTERM)  # the agent, not strace
        try:
            assert proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError("the agent did not stop on SIGTERM:\n" + log.read_text()[-3000:]) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # strace and the agent: the session this test started
            proc.wait()
        client.close()
    lines = trace.read_text().splitlines()
    connects, unexpected, own = unexpected_connections(lines, broker_port=mosquitto.port)
    assert int(url.rsplit(":", 1)[1]) in own
    assert not unexpected, "unexpected connections:\n" + "\n".join(unexpected[:20])
    assert any(f"htons({mosquitto.port})" in line for line in connects), "the broker connection was not traced"


# The same bad inputs over HTTP and over MQTT: one error table (edge.serving.errors.error_reply),
# so the status, code, and every detail's field and rule are the same both ways.
SAME_BAD_INPUTS = [
    b"\xff not json",
    b"[1, 2]",
    b'{"instances": []}',
    b'{"instances": [{"date": "2017-8-16", "store_nbr": 1, "item_nbr": 103520}]}',
    json.dumps({"instances": [{**ROW, "store_nbr": 999}]}).encode(),
    json.dumps({"instances": [{**ROW, "item_nbr": 5}, {**ROW, "store_nbr": "1"}]}).encode(),
    json.dumps({"instances": [{**ROW, "date": day(400)}]}).encode(),
    json.dumps({"instances": [{**ROW, "onpromotion": 1, "extra": True}]}).encode(),
    json.dumps({"instances": [ROW] * 9}).encode(),
    b'{"instances": [{"date": "2017-08-16", "store_nbr": NaN, "item_nbr": 1}]}',
]


def test_same_bad_inputs_get_the_same_errors_over_http_and_mqtt(tmp_path, keys, bundle, mosquitto):
    installed(tmp_path / "state", keys, bundle)
    client = Client(mosquitto.url)
    agent = Agent(agent_config(tmp_path, keys[2], mosquitto.url)).start()
    try:
        assert agent.mqtt.wait_connected(10)
        client.wait(lambda: agent.mqtt.connected, "subscribed")
        for k, raw in enumerate(SAME_BAD_INPUTS):
            r = httpx.post(f"{agent.http_url}/v1/predict", content=raw, headers={"Content-Type": "application/json"})
            over_http = r.json()
            assert set(over_http) == {"error"} and set(over_http["error"]) == {"code", "message", "details"}, raw
            # over MQTT the correlation id travels in the payload: add it where the body is an object
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = None
            payload = json.dumps({**decoded, "correlation_id": f"bad{k}"}).encode() if isinstance(decoded, dict) else raw
            n = len(client.received("/response/predict"))
            client.request("predict", payload)
            over_mqtt = client.wait(
                lambda n=n: len(client.received("/response/predict")) > n and client.received("/response/predict")[-1], f"bad{k}"
            )
            assert over_mqtt["status"] == r.status_code, raw
            assert over_mqtt["error"]["code"] == over_http["error"]["code"], raw
            fields = [(d["field"], d["rule"]) for d in over_http["error"]["details"]]
            assert fields and fields == [(d["field"], d["rule"]) for d in over_mqtt["error"]["details"]], raw
        # no model: the same 503 both ways
        agent.slot.swap(None)
        r = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": [ROW]})
        n = len(client.received("/response/predict"))
        client.request("predict", {"correlation_id": "none", "instances": [ROW]})
        over_mqtt = client.wait(lambda: len(client.received("/response/predict")) > n and client.received("/response/predict")[-1], "503")
        assert r.status_code == over_mqtt["status"] == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"] == over_mqtt["error"] == {"code": "no_model", "message": "no model is active yet", "details": []}
    finally:
        agent.stop()
        client.close()

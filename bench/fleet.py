"""Fleet ingest benchmark (``make bench`` → BENCHMARKS.md): 1,000 simulated devices through a real Mosquitto.

Measured in one run on one private Mosquitto on loopback, with ``edgeship fleet serve`` (MQTT 3.1.1,
one worker) pinned to one core (``taskset -c 0``):

- **paced**: 1,000 devices × 1 telemetry message per second (a realistic ~1 KiB agent record, QoS 1)
  for ``seconds``; ten devices skip one sequence number each (injected gaps). Checked from the
  exporter's own ``/metrics``: no message lost (unique received = sent), exactly the injected gaps
  found, no false duplicates; the ingest's CPU use as a share of its one core;
- **burst**: the same messages as fast as one publisher sends them; the ingest's throughput against a
  **raw paho subscriber** (the reference, same broker, same run) as a ratio;
- **memory per device** (RSS growth of the exporter process from 0 to 1,000 devices / 1,000) and the
  **scrape time** of ``/metrics`` at 1,000 devices (median of 10).

    python -m bench.fleet [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from bench.common import free_port

__all__ = ["run"]

DEVICES = 1000
GAPPED = 10
ROOT = Path(__file__).resolve().parent.parent


def _payload(device: str, seq: int) -> bytes:
    data = {
        "status": "serving", "model": {"version": 3, "digest": "a" * 64, "name": "favorita-demand", "variant": "tflite-int8"},
        "store": str(int(device.split("-")[1]) % 54 + 1),
        "metrics": {"requests": {"http:ok": seq * 10.0, "mqtt:ok": seq * 2.0},
                    "latency": {"http": {"le": [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
                                         "counts": [0, seq, seq * 5, seq * 9, seq * 10] + [seq * 10] * 7, "sum": seq * 0.004, "count": seq * 10}},
                    "gate_runs": {"passed": 1.0}, "updates": {"active": 1.0}, "rollbacks": {}, "bad_messages": 0},
        "drift_psi": {"onpromotion": 0.01, "store_nbr": 0.02, "item_nbr": 0.03, "dow": 0.01, "lag_mean_7": 0.05},
        "realised": [{"store_nbr": 1, "model": "favorita-demand", "version": 3, "rows": seq, "nwrmsle": 0.52, "offline_nwrmsle": 0.5}],
        "uptime_s": float(seq), "spool_pending": 0, "dropped_total": 0, "rss_bytes": 60_000_000,
    }
    return json.dumps({"schema_version": 1, "device_id": device, "seq": seq, "at": "2026-01-01T00:00:00+00:00", "data": data},
                      separators=(",", ":")).encode()


def _client(url: str, cid: str):
    from models.broker import BrokerURL, new_client

    u = BrokerURL.parse(url)
    c = new_client(cid, u)
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect(u.host, u.port, keepalive=60)
    c.loop_start()
    return c


def _publish(url: str, messages: list[tuple[str, bytes]], rate: float | None) -> float:
    c = _client(url, "bench-devices")
    t0 = time.perf_counter()
    infos = []
    for i, (topic, payload) in enumerate(messages):
        if rate:
            due = t0 + i / rate
            if (d := due - time.perf_counter()) > 0:
                time.sleep(d)
        infos.append(c.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(30)
    wall = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return wall


def _messages(seconds: int, start_seq: int, gaps: bool) -> list[tuple[str, bytes]]:
    out = []
    for s in range(seconds):
        for d in range(DEVICES):
            seq = start_seq + s
            if gaps and d < GAPPED and s == seconds // 2:
                continue  # injected gap: this device's message is never sent
            dev = f"dev-{d:04d}"
            out.append((f"edgeship/bench/{dev}/telemetry", _payload(dev, seq)))
    return out


def _scrape(port: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        body = r.read().decode()
    return body, time.perf_counter() - t0


def _sum(text: str, name: str) -> float:
    return sum(float(m) for m in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _wait_total(port: int, total: int, timeout: float) -> float:
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text, _ = _scrape(port)
        if _sum(text, "edgeship_fleet_seq_received_total") >= total:
            return time.perf_counter() - t0
        time.sleep(0.2)
    raise TimeoutError(f"ingest did not take {total} messages in {timeout} s")


def _raw_rate(url: str, messages: list[tuple[str, bytes]]) -> float:
    """Reference: a plain paho subscriber taking the same burst (msg/s)."""
    got = threading.Event()
    n = [0, 0.0]
    sub = _client(url, "bench-raw")

    def on_message(_c, _u, _m) -> None:
        n[0] += 1
        if n[0] == 1:
            n[1] = time.perf_counter()
        if n[0] >= len(messages):
            got.set()

    sub.on_message = on_message
    sub.subscribe("edgeship/raw/+/telemetry", qos=1)
    time.sleep(0.5)
    raw = [(t.replace("/bench/", "/raw/"), p) for t, p in messages]
    _publish(url, raw, None)
    got.wait(120)
    rate = n[0] / max(time.perf_counter() - n[1], 1e-9)
    sub.disconnect()
    sub.loop_stop()
    return rate


def run(work: Path, seconds: int = 20) -> str:
    """Measure and return the markdown section for BENCHMARKS.md."""
    work = Path(work) / "fleet"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    port = free_port()
    with _mosquitto_conf(work) as url:
        cmd = [sys.executable, "-m", "edgeship", "fleet", "serve", "--broker", url, "--metrics", f"127.0.0.1:{port}",
               "--shared", "off", "--save-interval", "3600"]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        log = open(work / "exporter.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _scrape(port)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((work / "exporter.log").read_text()[-800:]) from None
                    time.sleep(0.1)
            time.sleep(0.5)
            rss0 = _rss(proc.pid)
            paced = _messages(seconds, 1, gaps=True)
            cpu0 = _cpu_s(proc.pid)
            pub_wall = _publish(url, paced, rate=float(DEVICES))
            _wait_total(port, len(paced), 60)
            cpu_paced = _cpu_s(proc.pid) - cpu0
            text, _ = _scrape(port)
            received = _sum(text, "edgeship_fleet_seq_received_total")
            gaps = _sum(text, "edgeship_fleet_telemetry_gaps_total")
            dups = _sum(text, "edgeship_fleet_seq_duplicates_total")
            rss1 = _rss(proc.pid)
            scrapes = [_scrape(port)[1] for _ in range(10)]
            size = len(_scrape(port)[0])
            burst = _messages(10, seconds + 1, gaps=False)
            t0 = time.perf_counter()
            _publish(url, burst, None)
            _wait_total(port, len(paced) + len(burst), 120)
            burst_rate = len(burst) / (time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(10)
        raw_rate = _raw_rate(url, burst)
    lost = len(paced) - received
    share = cpu_paced / pub_wall
    per_device = (rss1 - rss0) / DEVICES
    scrape_ms = statistics.median(scrapes) * 1000
    ok = lambda c: "met" if c else "not met"  # noqa: E731
    return "\n".join([
        "## Fleet ingest: 1,000 devices through Mosquitto, memory per device, scrape time",
        "",
        f"`edgeship fleet serve` (MQTT 3.1.1, one worker, `taskset -c 0`), {DEVICES:,} simulated devices, "
        f"~{len(paced[0][1]):,}-byte telemetry records, QoS 1, loopback Mosquitto; {GAPPED} devices skip one message.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| paced: {DEVICES:,} devices × 1 msg/s for {seconds} s | {len(paced):,} sent, {received:,.0f} taken, {lost:,.0f} lost | no loss: {ok(lost == 0)} |",
        f"| injected gaps detected | {gaps:.0f} of {GAPPED} (false duplicates: {dups:.0f}) | exact: {ok(gaps == GAPPED and dups == 0)} |",
        f"| ingest CPU at 1,000 msg/s | {share * 100:.0f} % of one core | < 100 %: {ok(share < 1.0)} |",
        f"| burst throughput, ingest (one core) | {burst_rate:,.0f} msg/s | ≥ 1,000 msg/s: {ok(burst_rate >= 1000)} |",
        f"| burst throughput, raw paho subscriber (reference) | {raw_rate:,.0f} msg/s | ingest/raw = {burst_rate / raw_rate:.2f} |",
        f"| exporter memory per device | {per_device / 1024:.1f} KiB (RSS {rss0 / 2**20:.0f} → {rss1 / 2**20:.0f} MiB) | < 64 KiB: {ok(per_device < 65536)} |",
        f"| `/metrics` scrape at {DEVICES:,} devices | {scrape_ms:.0f} ms median, {size / 2**20:.1f} MiB | < 1 s: {ok(scrape_ms < 1000)} |",
        "",
    ])


def _mosquitto_conf(work: Path):
    """Mosquitto as in bench.delivery, with unbounded per-client queues (a lagging ingest loses nothing)."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def cm():
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        port = free_port()
        conf = work / "mosquitto-fleet.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n"
                        "max_queued_messages 0\nmax_inflight_messages 0\n")
        p = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=open(work / "mosquitto-fleet.log", "wb"))
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if p.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("mosquitto did not start") from None
                    time.sleep(0.05)
            yield f"mqtt://127.0.0.1:{port}"
        finally:
            p.terminate()
            p.wait(10)

    return cm()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work")
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args(argv)
    print(run(args.work, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

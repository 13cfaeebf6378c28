"""Agent serving benchmarks (issue 4 part B): prediction latency in-process, over HTTP and over MQTT
against the raw LiteRT invoke of the same model (ratios, same run), and throughput of an agent
process pinned to one core with and without adaptive micro-batching, under a bounded load from a
separate client process. Network traffic stays on 127.0.0.1; every loop is bounded in count and time.

    from bench.agent_b import run
    markdown = run(work_dir, bundle_path, signing_pub)      # bench/run.py appends it to BENCHMARKS.md

Helpers run as processes of their own::

    python -m bench.agent_b serve --state DIR --trust PUB [--no-batching]    # prints the HTTP URL
    python -m bench.agent_b load --url URL --connections 16 --seconds 5      # prints JSON results
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import free_port

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "tflite-int8"

__all__ = ["run"]


# -- helpers ----------------------------------------------------------------------------------
class _Broker:
    """A throw-away Mosquitto on a loopback port (None-safe: ``start`` raises if it is missing)."""

    def __init__(self, work: Path) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 10000\nset_tcp_nodelay true\n")
        self.log = open(work / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.log.close()


def _row(bundle_dir: Path) -> dict[str, Any]:
    """A valid request row: the first store×item of the bundle's state, the day after it ends."""
    from models.features import SalesState

    state = SalesState.from_bytes((bundle_dir / "state.npz").read_bytes())
    return {
        "date": str(np.datetime64(state.end_date, "D") + 1),
        "store_nbr": int(state.store_nbr[0]),
        "item_nbr": int(state.item_nbr[0]),
        "onpromotion": False,
    }


def _install(state_dir: Path, bundle: Path, pub: Path) -> Path:
    """Pre-install and activate the bundle, as a device that already runs it."""
    from edge.serving.predictor import load_trusted_keys
    from edge.store.model_store import ModelStore

    store = ModelStore(state_dir, load_trusted_keys([pub]))
    installed = store.install(bundle)
    store.activate(installed.manifest.version)
    return store.version_dir(installed.manifest.version)


# -- latency ----------------------------------------------------------------------------------
def _latency(work: Path, bundle: Path, pub: Path, iterations: int, budget: float) -> tuple[dict[str, dict], dict]:
    from bench.common import http_post, measure, raw_litert
    from edge.agent import Agent
    from edge.config import AgentConfig
    from edge.serving.predictor import Predictor
    from models import topics
    from models.broker import BrokerURL, new_client

    lat: dict[str, dict] = {}
    state_dir = work / "latency-agent"
    bundle_dir = _install(state_dir, bundle, pub)
    row = _row(bundle_dir)
    body = json.dumps({"instances": [row]}).encode()
    with Predictor.open(bundle, trust=[pub], variant=VARIANT) as pred:
        feed = pred.encode([row]).as_feed()
        raw = raw_litert(pred.bundle.path(pred.manifest.variant(VARIANT).file), feed)
        lat["raw LiteRT invoke"] = measure(raw, iterations, budget)
        lat["Predictor.predict, embedded (no agent)"] = measure(lambda: pred.predict([row]), iterations, budget)

    broker = _Broker(work / "broker-latency")
    extra: dict[str, Any] = {}
    try:
        for batching in (True, False):
            cfg = AgentConfig(
                device_id="bench", state_dir=state_dir, trust=[pub], http="127.0.0.1:0", broker=broker.url,
                variants=[VARIANT], batching={"enabled": batching}, telemetry={"interval_s": 0},
                predlog={"sample_rate": 0.0},
            )  # fmt: skip
            agent = Agent(cfg).start()
            tag = "batching on" if batching else "batching off"
            try:
                assert agent.mqtt is not None and agent.mqtt.wait_connected(10)
                lat[f"agent Serving.predict, in-process ({tag})"] = measure(
                    lambda: agent.serving.predict([row], transport="serial"), iterations, budget
                )
                over_http, close = http_post(agent.http_url, "/v1/predict", body)
                lat[f"HTTP POST /v1/predict ({tag})"] = measure(over_http, iterations, budget)
                close()

                url = BrokerURL.parse(broker.url)
                got = threading.Event()
                client = new_client(f"bench-{tag.replace(' ', '-')}", url)
                client.on_message = lambda _c, _u, _m: got.set()
                client.connect(url.host, url.port)
                client.loop_start()
                client.subscribe(topics.response("default", "bench", "predict"), qos=1)
                time.sleep(0.3)
                req_topic = topics.request("default", "bench", "predict")
                payload = json.dumps({"correlation_id": "b", "instances": [row]})

                def over_mqtt() -> object:
                    got.clear()
                    client.publish(req_topic, payload, qos=1)
                    if not got.wait(5):
                        raise RuntimeError("no MQTT answer within 5 s")
                    return None

                lat[f"MQTT request/response (QoS 1, {tag})"] = measure(over_mqtt, min(iterations, 2000), budget, warmup=50)
                client.disconnect()
                client.loop_stop()
                if batching:
                    extra["rss_bytes"] = _rss()
            finally:
                agent.stop()
    finally:
        broker.stop()
    return lat, extra


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- throughput -------------------------------------------------------------------------------
def _pin(cpu: int) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu)] if taskset else []


def _throughput(work: Path, bundle: Path, pub: Path, seconds: float, connections: tuple[int, ...]) -> list[dict]:
    state_dir = work / "throughput-agent"
    bundle_dir = _install(state_dir, bundle, pub)
    body = json.dumps({"instances": [_row(bundle_dir)]})
    cpus = os.cpu_count() or 1
    results = []
    for batching in (False, True):
        cmd = [*_pin(0), sys.executable, "-m", "bench.agent_b", "serve", "--state", str(state_dir), "--trust", str(pub)]
        if not batching:
            cmd.append("--no-batching")
        server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = server.stdout.readline().strip()
            if not url.startswith("http://"):
                raise RuntimeError(f"benchmark agent did not start (exit {server.poll()})")
            for conns in connections:
                load = [*_pin(1 if cpus > 1 else 0), sys.executable, "-m", "bench.agent_b", "load", "--url", url,
                        "--connections", str(conns), "--seconds", str(seconds), "--body", body]  # fmt: skip
                before, cpu0 = _batch_stats(url), _cpu_seconds(server.pid)
                out = subprocess.run(load, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
                if out.returncode != 0:
                    raise RuntimeError(f"load client failed: {out.stderr[-500:]}")
                after, cpu1 = _batch_stats(url), _cpu_seconds(server.pid)
                res = json.loads(out.stdout)
                res["per_cpu_second"] = res["total"] / max(cpu1 - cpu0, 1e-9)
                res["cpu_share"] = (cpu1 - cpu0) / res["wall"]
                batches = after.get("count", 0) - before.get("count", 0)
                res.update(
                    batching=batching,
                    connections=conns,
                    per_batch=(after.get("sum", 0) - before.get("sum", 0)) / batches if batches else None,
                )
                results.append(res)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return results


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _batch_stats(url: str) -> dict[str, float]:
    """Requests and batches the live batcher ran so far (from /metrics)."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        for key in ("sum", "count"):
            if line.startswith(f'edgeship_batch_requests_{key}{{batcher="live"}}'):
                values[key] = float(line.rsplit(" ", 1)[1])
    return values


async def _load(url: str, body: str, connections: int, seconds: float) -> dict[str, Any]:
    host, port = url.split("//")[1].rsplit(":", 1)
    payload = body.encode()
    request = (
        f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                if b" 200 " not in status:
                    errors += 1
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    wall = time.perf_counter() - started
    us = np.array(latencies) * 1e6
    return {
        "requests": len(latencies),
        "wall": wall,
        "errors": errors,
        "rps": len(latencies) / wall,
        "p50_us": float(np.percentile(us, 50)) if len(us) else 0.0,
        "p99_us": float(np.percentile(us, 99)) if len(us) else 0.0,
    }


# -- report -----------------------------------------------------------------------------------
def run(work: Path, bundle: Path, pub: Path, *, iterations: int = 3000, budget: float = 6.0, seconds: float = 5.0) -> str:
    """Measure and return the markdown section (``## Edge agent: serving latency and throughput``)."""
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    lat, extra = _latency(work, Path(bundle), Path(pub), iterations, budget)
    tput = _throughput(work, Path(bundle), Path(pub), seconds, (1, 16))
    ref = lat["raw LiteRT invoke"]["p50"]
    lines = [
        "## Edge agent: serving latency and throughput",
        "",
        f"One request row, model variant `{VARIANT}` (LiteRT, 1 inference thread), measured in one run; ratios are "
        "p50 against the raw LiteRT invoke of the same model (`set_tensor` ×2, `invoke`, `get_tensor`). The agent "
        "paths add validation, the table and lag-window look-ups, encoding, metrics, the drift window and (batching "
        "on) a hand-off to the batch worker; HTTP adds a keep-alive loopback request, MQTT a QoS 1 request and a "
        "QoS 1 response through Mosquitto on loopback. `bench/agent_b.py`.",
        "",
        "| path | p50 µs | p99 µs | p50 vs raw LiteRT | samples |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in lat.items():
        lines.append(f"| {name} | {s['p50']:.1f} | {s['p99']:.1f} | {s['p50'] / ref:.1f}× | {s['n']} |")
    cpus = os.cpu_count() or 1
    lines += [
        "",
        f"**Throughput on one core.** The agent process is pinned to CPU 0 (`taskset -c 0`); a separate asyncio "
        f"client process{' on CPU 1' if cpus > 1 else ' (same CPU: this machine has one)'} keeps N keep-alive "
        f"connections each sending single-row `POST /v1/predict` back to back for {seconds:g} s. Adaptive batching "
        "(`batching.max_wait_ms` 1, at most 256 rows) against each request encoded and inferred alone.",
        "",
        "| batching | connections | requests/s (wall) | requests per CPU-second of the agent | agent CPU share | "
        "p50 µs | p99 µs | errors | requests per batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["connections"]: r for r in tput if not r["batching"]}
    for r in tput:
        per_batch = f"{r['per_batch']:.1f}" if r.get("per_batch") else "—"
        b = base[r["connections"]]
        gain = "" if not r["batching"] else f" ({r['rps'] / b['rps']:.2f}×)"
        gain_cpu = "" if not r["batching"] else f" ({r['per_cpu_second'] / b['per_cpu_second']:.2f}×)"
        lines.append(
            f"| {'on' if r['batching'] else 'off'} | {r['connections']} | {r['rps']:,.0f}{gain} | "
            f"{r['per_cpu_second']:,.0f}{gain_cpu} | {r['cpu_share']:.0%} | {r['p50_us']:.0f} | "
            f"{r['p99_us']:.0f} | {r['errors']} | {per_batch} |"
        )
    lines += [
        "",
        "Requests per CPU-second divide the requests served by the CPU time the agent process used (all its "
        "threads, from /proc): it does not depend on what else ran on the core, which wall-clock rates do on a "
        "shared machine. The ratio in brackets is against batching off at the same load.",
    ]
    if "rss_bytes" in extra:
        lines += ["", f"RSS of the benchmark process with the agent (HTTP, MQTT, batching) running: {extra['rss_bytes'] / 2**20:.0f} MiB."]
    lines.append("")
    return "\n".join(lines)


# -- helper processes -------------------------------------------------------------------------
def _serve_main(argv: list[str]) -> int:
    from edge.agent import Agent
    from edge.config import AgentConfig

    p = argparse.ArgumentParser(prog="bench.agent_b serve")
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--trust", required=True, type=Path)
    p.add_argument("--no-batching", action="store_true")
    args = p.parse_args(argv)
    cfg = AgentConfig(
        device_id="bench", state_dir=args.state, trust=[args.trust], http="127.0.0.1:0", variants=[VARIANT],
        batching={"enabled": not args.no_batching}, predlog={"sample_rate": 0.0},
    )  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent = Agent(cfg).start()
    print(agent.http_url, flush=True)
    stop.wait()
    agent.stop()
    return 0


def _load_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.agent_b load")
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--body", required=True)
    args = p.parse_args(argv)
    # warm-up (connections, JIT-free but caches and the batcher's concurrency estimate)
    warm = asyncio.run(_load(args.url, args.body, args.connections, min(1.0, args.seconds / 5)))
    res = asyncio.run(_load(args.url, args.body, args.connections, args.seconds))
    # the caller measures the agent's CPU time over both runs
    res.update(total=warm["requests"] + res["requests"], wall=warm["wall"] + res["wall"])
    print(json.dumps(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve_main(argv[1:])
    if argv[:1] == ["load"]:
        return _load_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "agent-b")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--pub", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    print(run(args.work, args.bundle, args.pub, seconds=args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

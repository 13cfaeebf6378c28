"""Serving targets (issue 9), each as a ratio against a reference started in the same run.

- in-process single row vs the raw LiteRT invoke of the same model (target ≤ 5×, aim 2×);
- HTTP single row, one keep-alive connection: agent p50 vs a bare Starlette + LiteRT endpoint
  (``bench/bare_endpoint.py``) on the same model, uvicorn, parser and loop (target ≤ 1.3×);
- HTTP throughput, 8 connections, one agent process: vs the bare endpoint (target ≥ 0.8×), with
  requests per CPU-second of the server beside it;
- MQTT request/response vs a raw paho request/response through the same Mosquitto (target ≤ 2×);
- agent RSS with LiteRT after warm-up and ≥ 10,000 requests (target ≤ 80 MB), and of a second agent
  pinned to an ONNX Runtime variant (target ≤ 95 MB);
- no RSS growth over a 60-second soak (8 connections, RSS sampled every second): a first 60 s of the
  same load warms up (allocator pools, caches, the drift window fill once), then the least-squares
  slope of the next 60 s must stay ≤ 0.1 MB/min; the warm-up slope and the whole-run slope are
  printed beside it, so a growth that levels off and one that does not are told apart;
- p99 while the agent installs 10 versions one after another under load (one keep-alive connection)
  vs the p99 of the same load before and after (target ≤ 2×, 0 failed requests).

Servers are pinned to CPU 0, clients to CPU 1 (``taskset``). Loops are bounded in count and time.

    from bench.serving import run
    markdown = run(work, bundle, pub)                  # bench/run.py appends it to BENCHMARKS.md
    python -m bench.serving --bundle B --pub P [--variant tflite-int8] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:  # the agent under test starts as `edgeship agent` does
    from edge.memory import tune_process

    tune_process()  # before numpy: one OpenBLAS thread, capped malloc arenas

import numpy as np  # noqa: E402

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parent.parent
__all__ = ["run"]


def _verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def _start(cmd: list[str], *, stdin: bool = False) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            stdin=subprocess.PIPE if stdin else None)  # fmt: skip
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"{cmd[-3:]} did not start (exit {proc.poll()})")
    return proc, url


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _http_load(url: str, body: str, connections: int, seconds: float, pid: int) -> dict[str, Any]:
    from bench.agent_b import _cpu_seconds, _pin

    cpus = os.cpu_count() or 1
    cmd = [*_pin(1 if cpus > 1 else 0), sys.executable, "-m", "bench.agent_b", "load", "--url", url,
           "--connections", str(connections), "--seconds", str(seconds), "--body", body]  # fmt: skip
    cpu0 = _cpu_seconds(pid)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-500:]}")
    res = json.loads(out.stdout)
    res["per_cpu_second"] = res["total"] / max(_cpu_seconds(pid) - cpu0, 1e-9)
    return res


def _in_process(bundle: Path, pub: Path, variant: str, iterations: int, budget: float) -> dict[str, dict]:
    from bench.common import measure, raw_litert
    from edge.monitoring.metrics import AgentMetrics
    from edge.serving.pipeline import Serving
    from edge.serving.predictor import Predictor
    from edge.serving.slot import ModelSlot

    out: dict[str, dict] = {}
    pred = Predictor.open(bundle, trust=[pub], variant=variant)
    row = None
    try:
        state = pred.sales_state
        row = {"date": str(np.datetime64(state.end_date, "D") + 1), "store_nbr": int(state.store_nbr[0]),
               "item_nbr": int(state.item_nbr[0]), "onpromotion": False}  # fmt: skip
        feed = pred.encode([row]).as_feed()
        out["raw LiteRT invoke"] = measure(raw_litert(pred.bundle.path(pred.manifest.variant(variant).file), feed), iterations, budget)
        out["Predictor.predict([row]), embedded"] = measure(lambda: pred.predict([row]), iterations, budget)
        raw = json.dumps({"instances": [row]}).encode()
        out["Predictor.predict(raw JSON bytes)"] = measure(lambda: pred.predict(raw), iterations, budget)
        slot = ModelSlot()
        slot.swap(pred)
        serving = Serving.embedded(slot, AgentMetrics(process=False))
        out["Serving.predict (the agent's path, no HTTP)"] = measure(lambda: serving.predict(raw), iterations, budget)
        try:  # where the microseconds go: one profile of the embedded path
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(2000):
                pred.predict([row])
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
            out["_profile"] = {"text": buf.getvalue()}
        except Exception:  # noqa: BLE001
            pass
    finally:
        pred.close()
    return out


def _mqtt_rtt(broker_url: str, req_topic: str, resp_topic: str, payload_of, n: int, budget: float) -> dict[str, float]:
    """Request/response round trips: publish QoS 1, wait for the response with our correlation id."""
    from models.broker import BrokerURL, new_client

    u = BrokerURL.parse(broker_url)
    c = new_client(f"bench-req-{os.getpid()}-{time.monotonic_ns()}", u)
    got = threading.Event()
    c.on_message = lambda *_: got.set()
    c.connect(u.host, u.port)
    c.subscribe(resp_topic, 1)
    c.loop_start()
    time.sleep(0.3)
    samples = []
    deadline = time.perf_counter() + budget
    try:
        for k in range(n + 50):
            got.clear()
            t0 = time.perf_counter_ns()
            c.publish(req_topic, payload_of(k), qos=1)
            if not got.wait(5):
                raise RuntimeError("no MQTT response within 5 s")
            if k >= 50:
                samples.append(time.perf_counter_ns() - t0)
            if time.perf_counter() > deadline:
                break
    finally:
        c.loop_stop()
        c.disconnect()
    us = np.array(samples, np.float64) / 1e3
    return {"n": len(us), "p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99))}


def _raw_responder(broker_url: str, req: str, resp: str):
    from models.broker import BrokerURL, new_client

    u = BrokerURL.parse(broker_url)
    c = new_client(f"bench-echo-{os.getpid()}", u)
    c.on_message = lambda cl, _u, msg: cl.publish(resp, msg.payload, qos=1)
    c.connect(u.host, u.port)
    c.subscribe(req, 1)
    c.loop_start()
    time.sleep(0.3)
    return c


#: Requests an agent has answered before its RSS is read (the issue: "after warm-up and 10,000 requests").
RSS_AFTER_REQUESTS = 10_000
#: Hot swap: versions installed one after another under load, the pause between them, the steady
#: phase before the first; the load process is one keep-alive connection, closed loop.
SWAPS = 10
#: "No growth": the soak's fitted RSS slope after the warm-up must stay at or below this (MB per minute).
SOAK_SLOPE_MB_MIN = 0.1
#: Seconds of soak load before the judged window (the judged window is the rest of ``--soak``).
SOAK_WARMUP_S = 60.0
SWAP_GAP_S = 0.4
STEADY_S = 3.0


def _serve_cmd(state: Path, trust: list[Path], variant: str, *extra: str) -> list[str]:
    from bench.agent_b import _pin

    cmd = [*_pin(0), sys.executable, "-m", "bench.serving", "serve", "--state", str(state), "--variant", variant]
    for t in trust:
        cmd += ["--trust", str(t)]
    return [*cmd, *extra]


def _top_up(url: str, body: str, pid: int, served: int) -> int:
    """Load until the agent answered at least RSS_AFTER_REQUESTS requests (bounded: 6 rounds of 2 s)."""
    for _ in range(6):
        if served >= RSS_AFTER_REQUESTS:
            break
        served += _http_load(url, body, 8, 2.0, pid)["total"]
    return served


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute (nan under 3 samples)."""
    if len(samples) < 3:
        return float("nan")
    t = np.array([x for x, _ in samples]) / 60.0
    return float(np.polyfit(t, np.array([y for _, y in samples]), 1)[0])


def _soak(url: str, body: str, pid: int, seconds: float) -> dict[str, Any]:
    """RSS sampled every second while 8 connections load the agent for ``seconds``. ``slope`` (the
    verdict's) is fitted after the warm-up (SOAK_WARMUP_S, or the first half of a shorter soak),
    ``warmup_slope`` before it, ``slope_all`` through every sample; MB per minute."""
    from bench.agent_b import _pin

    cpus = os.cpu_count() or 1
    cmd = [*_pin(1 if cpus > 1 else 0), sys.executable, "-m", "bench.agent_b", "load", "--url", url,
           "--connections", "8", "--seconds", str(seconds), "--body", body]  # fmt: skip
    load = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    samples: list[tuple[float, float]] = []
    try:
        while load.poll() is None and time.monotonic() - t0 < seconds + 60:
            samples.append((time.monotonic() - t0, _rss_mb(pid)))
            time.sleep(1.0)
        out, err = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if load.returncode != 0:
        raise RuntimeError(f"soak load failed: {err[-500:]}")
    res = json.loads(out)
    mb = np.array([y for _, y in samples])
    warm = min(SOAK_WARMUP_S, seconds / 2)
    before = [p for p in samples if p[0] < warm]
    after = [p for p in samples if p[0] >= warm]
    return {"seconds": samples[-1][0] if samples else 0.0, "samples": len(samples), "start": float(mb[0]),
            "end": float(mb[-1]), "max": float(mb.max()), "warmup_s": warm, "judged_s": seconds - warm,
            "at_warm": after[0][1] if after else float("nan"), "slope": _slope(after),
            "warmup_slope": _slope(before), "slope_all": _slope(samples), "requests": res["total"],
            "errors": res["errors"]}  # fmt: skip


def _onnx_rss(work: Path, bundle: Path, pub: Path, body: str) -> dict[str, Any]:
    """A second agent pinned to an ONNX Runtime variant: RSS after warm-up and 10,000 requests."""
    from bench.agent_b import _install
    from models.bundle import read_manifest
    from models.signing import load_public_key

    shipped = [v.name for v in read_manifest(bundle, [load_public_key(pub)]).variants]
    variant = next((v for v in ("onnx-fp32", "onnx-int8") if v in shipped), None)
    if variant is None:
        return {"variant": None}
    state = work / "agent-onnx"
    _install(state, bundle, pub)
    agent, url = _start(_serve_cmd(state, [pub], variant))
    try:
        served = _top_up(url, body, agent.pid, 0)
        return {"variant": variant, "rss": _rss_mb(agent.pid), "served": served}
    finally:
        _stop(agent)


def _swap(work: Path, bundle: Path, pub: Path, variant: str, body: str) -> dict[str, Any]:
    """p99 while the agent installs SWAPS new versions one after another under load (each verified,
    unpacked, loaded and warmed up beside the serving model, gated, swapped atomically) against
    the p99 of the same load before the first and after the last (steady state)."""
    from cryptography.hazmat.primitives import serialization

    from bench.agent_a import _repack
    from bench.agent_b import _install, _pin
    from models.signing import generate_keypair

    private, public = generate_keypair()  # signs the versions swapped in
    pem2 = work / "swap-signing.pub"
    pem2.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    versions = [_repack(bundle, work / f"swap-v{100 + i}.tar", 100 + i, private) for i in range(SWAPS)]
    state = work / "agent-swap"
    _install(state, bundle, pub)
    agent, url = _start(_serve_cmd(state, [pub, pem2], variant, "--swap", *map(str, versions)), stdin=True)
    samples, body_file = work / "swap-load.npy", work / "swap-body.json"
    body_file.write_text(body)
    cpus = os.cpu_count() or 1
    total = STEADY_S + SWAPS * (SWAP_GAP_S + 1.0) + STEADY_S
    load = subprocess.Popen([*_pin(1 if cpus > 1 else 0), sys.executable, "-m", "bench.agent_a", "--load", url,
                             "--seconds", str(total), "--out", str(samples), "--body", str(body_file)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        time.sleep(STEADY_S)
        agent.stdin.write("swap\n")
        agent.stdin.flush()
        line = agent.stdout.readline()  # the serve process answers when its last install returned
        if not line.startswith("{"):
            raise RuntimeError(f"the swapping agent stopped (exit {agent.poll()})")
        swaps = json.loads(line)
        _, err = load.communicate(timeout=total + 60)
        if load.returncode != 0:
            raise RuntimeError(f"swap load failed: {err.decode()[-500:]}")
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
        _stop(agent)
    if not all(swaps["ok"]):
        raise RuntimeError(f"an install was refused: {swaps}")
    rows = np.load(samples)
    windows = swaps["windows"]
    failed = int(np.sum(rows[:, 2] != 200))
    ok = rows[rows[:, 2] == 200]
    first, last = windows[0][0], windows[-1][1]
    during = [(t1 - t0) * 1e6 for t0, t1, *_ in ok if any(t0 <= b and t1 >= a for a, b in windows)]
    steady = [(t1 - t0) * 1e6 for t0, t1, *_ in ok if t1 < first or t0 > last + SWAP_GAP_S]
    phase = [(t1 - t0) * 1e6 for t0, t1, *_ in ok if first <= t0 <= last]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    return {"requests": len(rows), "failed": failed, "steady": len(steady), "during": len(during),
            "steady_p50": pct(steady, 50), "steady_p99": pct(steady, 99), "during_p50": pct(during, 50),
            "during_p99": pct(during, 99), "phase": len(phase), "phase_p99": pct(phase, 99),
            "install_ms": [(b - a) * 1e3 for a, b in windows], "versions": sorted({int(v) for *_, v in rows if v})}  # fmt: skip


def run(work: Path, bundle: Path, pub: Path, *, variant: str = "tflite-int8", iterations: int = 3000,
        budget: float = 5.0, seconds: float = 4.0, soak: float = 120.0) -> str:  # fmt: skip
    import shutil

    from bench.agent_b import _Broker, _install, _pin, _row
    from models import topics

    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    rows: list[tuple[str, str, str, str, str]] = []  # target, measured, reference, ratio, verdict
    lat = _in_process(bundle, pub, variant, iterations, budget)
    profile = lat.pop("_profile", {}).get("text", "")
    ref = lat["raw LiteRT invoke"]["p50"]
    single = lat["Predictor.predict([row]), embedded"]["p50"]
    rows.append(("in-process single row ≤ 5× raw invoke (aim 2×)", f"{single:.1f} µs", f"{ref:.1f} µs",
                 f"{single / ref:.2f}×", _verdict(single / ref <= 5)))  # fmt: skip

    state_dir = work / "agent"
    bundle_dir = _install(state_dir, bundle, pub)
    row = _row(bundle_dir)
    body = json.dumps({"instances": [row]})
    from edge.serving.predictor import load_trusted_keys
    from models.bundle import verify_unpacked

    model_file = bundle_dir / verify_unpacked(bundle_dir, load_trusted_keys([pub])).manifest.variant(variant).file
    broker = _Broker(work / "broker")
    http: dict[str, dict] = {}
    rss, served, soaked = float("nan"), 0, {}
    try:
        bare, bare_url = _start([*_pin(0), sys.executable, "-m", "bench.bare_endpoint", "--model", str(model_file)])
        try:
            http["bare 1"] = _http_load(bare_url, body, 1, seconds, bare.pid)
            http["bare 8"] = _http_load(bare_url, body, 8, seconds, bare.pid)
        finally:
            _stop(bare)
        agent, url = _start(_serve_cmd(state_dir, [pub], variant, "--broker", broker.url))
        try:
            http["agent 1"] = _http_load(url, body, 1, seconds, agent.pid)
            http["agent 8"] = _http_load(url, body, 8, seconds, agent.pid)
            req_t, resp_t = topics.request("default", "bench", "predict"), topics.response("default", "bench", "predict")
            payload = lambda k: json.dumps({"correlation_id": f"c{k}", "instances": [row]}).encode()  # noqa: E731
            mqtt_agent = _mqtt_rtt(broker.url, req_t, resp_t, payload, 2000, budget)
            echo = _raw_responder(broker.url, "bench/raw/req", "bench/raw/resp")
            try:
                mqtt_raw = _mqtt_rtt(broker.url, "bench/raw/req", "bench/raw/resp", payload, 2000, budget)
            finally:
                echo.loop_stop()
                echo.disconnect()
            served = http["agent 1"]["total"] + http["agent 8"]["total"] + mqtt_agent["n"] + 50
            served = _top_up(url, body, agent.pid, served)
            rss = _rss_mb(agent.pid)
            soaked = _soak(url, body, agent.pid, soak)
        finally:
            _stop(agent)
    finally:
        broker.stop()
    onnx = _onnx_rss(work, bundle, pub, body)
    swap = _swap(work, bundle, pub, variant, body)
    a1, b1 = http["agent 1"]["p50_us"], http["bare 1"]["p50_us"]
    rows.append(("HTTP single row, 1 keep-alive connection: p50 ≤ 1.3× bare endpoint", f"{a1:.0f} µs", f"{b1:.0f} µs",
                 f"{a1 / b1:.2f}×", _verdict(a1 / b1 <= 1.3)))  # fmt: skip
    a8, b8 = http["agent 8"], http["bare 8"]
    rows.append(("HTTP throughput, 8 connections: ≥ 0.8× bare endpoint's requests/s",
                 f"{a8['rps']:,.0f} req/s ({a8['per_cpu_second']:,.0f} per CPU-s)",
                 f"{b8['rps']:,.0f} req/s ({b8['per_cpu_second']:,.0f} per CPU-s)",
                 f"{a8['rps'] / b8['rps']:.2f}×", _verdict(a8["rps"] / b8["rps"] >= 0.8)))  # fmt: skip
    rows.append(("MQTT request/response p50 ≤ 2× raw paho round trip", f"{mqtt_agent['p50']:.0f} µs",
                 f"{mqtt_raw['p50']:.0f} µs", f"{mqtt_agent['p50'] / mqtt_raw['p50']:.2f}×",
                 _verdict(mqtt_agent["p50"] / mqtt_raw["p50"] <= 2)))  # fmt: skip
    rows.append((f"agent RSS with LiteRT after warm-up and {served:,} requests ≤ 80 MB", f"{rss:.1f} MB", "80 MB",
                 f"{rss / 80:.2f}×", _verdict(rss <= 80)))  # fmt: skip
    if onnx.get("variant"):
        rows.append((f"agent RSS with ONNX Runtime ({onnx['variant']}) after warm-up and {onnx['served']:,} requests ≤ 95 MB",
                     f"{onnx['rss']:.1f} MB", "95 MB", f"{onnx['rss'] / 95:.2f}×", _verdict(onnx["rss"] <= 95)))  # fmt: skip
    else:
        rows.append(("agent RSS with ONNX Runtime ≤ 95 MB", "no ONNX variant in the bundle", "95 MB", "—", "not met"))
    rows.append((f"no RSS growth over a {soaked['judged_s']:.0f}-second soak after {soaked['warmup_s']:.0f} s of warm-up "
                 f"(8 connections, {soaked['requests']:,} requests in all): slope ≤ {SOAK_SLOPE_MB_MIN} MB/min",
                 f"{soaked['slope']:+.3f} MB/min ({soaked['at_warm']:.2f} → {soaked['end']:.2f} MB; warm-up "
                 f"{soaked['warmup_slope']:+.3f} MB/min from {soaked['start']:.2f} MB)",
                 f"{SOAK_SLOPE_MB_MIN} MB/min", f"{soaked['slope'] / SOAK_SLOPE_MB_MIN:+.2f}×",
                 _verdict(soaked["slope"] <= SOAK_SLOPE_MB_MIN and soaked["errors"] == 0)))  # fmt: skip
    swap_ratio = swap["during_p99"] / swap["steady_p99"]
    rows.append((f"p99 while hot-swapping {SWAPS} versions under load ≤ 2× steady state, 0 failed requests",
                 f"{swap['during_p99']:.0f} µs, {swap['failed']} failed of {swap['requests']:,}",
                 f"{swap['steady_p99']:.0f} µs", f"{swap_ratio:.2f}×",
                 _verdict(swap_ratio <= 2 and swap["failed"] == 0)))  # fmt: skip
    lines = [
        "## Serving targets (issue 9)",
        "",
        f"Model variant `{variant}`, one row per request; each ratio against a reference started in the same run "
        "(`bench/serving.py`; the bare endpoint is `bench/bare_endpoint.py`, served by the same uvicorn, parser and "
        "loop). Servers pinned to CPU 0, clients to CPU 1.",
        "",
        "| target | agent | reference | ratio | verdict |",
        "|---|---:|---:|---:|---|",
        *[f"| {t} | {m} | {r} | {x} | {v} |" for t, m, r, x, v in rows],
        "",
        "| in-process path | p50 µs | p99 µs | vs raw invoke |",
        "|---|---:|---:|---:|",
        *[f"| {k} | {s['p50']:.1f} | {s['p99']:.1f} | {s['p50'] / ref:.2f}× |" for k, s in lat.items()],
        "",
        "| HTTP | p50 µs | p99 µs | requests/s | per CPU-second | errors |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {k} connection(s) | {s['p50_us']:.0f} | {s['p99_us']:.0f} | {s['rps']:,.0f} | {s['per_cpu_second']:,.0f} | {s['errors']} |"
          for k, s in http.items()],  # fmt: skip
        "",
        f"MQTT: agent p50 {mqtt_agent['p50']:.0f} µs / p99 {mqtt_agent['p99']:.0f} µs ({mqtt_agent['n']} round trips); "
        f"raw paho echo p50 {mqtt_raw['p50']:.0f} µs / p99 {mqtt_raw['p99']:.0f} µs.",
        "",
        f"Soak: RSS sampled every second ({soaked['samples']} samples) while 8 connections loaded the LiteRT agent for "
        f"{soaked['seconds']:.0f} s; least-squares slope after the first {soaked['warmup_s']:.0f} s (the verdict's) "
        f"{soaked['slope']:+.3f} MB/min, during them {soaked['warmup_slope']:+.3f} MB/min, through all samples "
        f"{soaked['slope_all']:+.3f} MB/min; start {soaked['start']:.2f} MB, end {soaked['end']:.2f} MB, max "
        f"{soaked['max']:.2f} MB, {soaked['errors']} errors. RSS grows in steps (allocator pools, the drift window's "
        f"pages touched once): a slope through a short window that holds one step reads as growth, so the judged "
        f"window starts after the warm-up.",
        "",
        f"Hot swap: one keep-alive connection (closed loop, its own process) while the agent installed {SWAPS} versions "
        f"one after another, {SWAP_GAP_S} s apart (each verified, unpacked, loaded and warmed up beside the serving model, "
        f"gated on the holdout slice, swapped atomically; install → serving {np.median(swap['install_ms']):.0f} ms median, "
        f"{min(swap['install_ms']):.0f} … {max(swap['install_ms']):.0f}). \"During\" = requests that overlapped an install "
        f"({swap['during']:,}: p50 {swap['during_p50']:.0f} µs, p99 {swap['during_p99']:.0f} µs); steady = before the first "
        f"and after the last ({swap['steady']:,}: p50 {swap['steady_p50']:.0f} µs, p99 {swap['steady_p99']:.0f} µs). "
        f"Over the whole swapping phase ({swap['phase']:,} requests) p99 was {swap['phase_p99']:.0f} µs. "
        f"Versions answered: {swap['versions']}.",
        "",
        "Where the in-process microseconds go (cProfile of `Predictor.predict([row])`, 2,000 calls, by own time):",
        "",
        "```",
        *[ln for ln in profile.strip().splitlines()[-14:]],
        "```",
        "",
    ]
    return "\n".join(lines)


def _serve_main(argv: list[str]) -> int:
    """The agent under test, as its own process: prints its URL, serves until SIGTERM. With
    ``--swap B...`` it installs those bundles one after another when "swap" arrives on stdin and
    prints ``{"windows": [[t0, t1], ...], "ok": [...]}`` (``time.monotonic``, the load process's clock)."""
    from edge.agent import Agent
    from edge.config import AgentConfig

    p = argparse.ArgumentParser(prog="bench.serving serve")
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--trust", required=True, type=Path, action="append")
    p.add_argument("--variant", default="tflite-int8")
    p.add_argument("--broker")
    p.add_argument("--swap", nargs="*", type=Path, default=[])
    args = p.parse_args(argv)
    cfg = AgentConfig(device_id="bench", state_dir=args.state, trust=args.trust, http="127.0.0.1:0",
                      variants=[args.variant], broker=args.broker, predlog={"sample_rate": 0.0},
                      keep_versions=2)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent = Agent(cfg).start()
    if args.broker:
        agent.mqtt.wait_connected(10)
    print(agent.http_url, flush=True)

    def swapper() -> None:
        if sys.stdin.readline().strip() != "swap":
            return
        windows, ok = [], []
        for path in args.swap:
            t0 = time.monotonic()
            ok.append(agent.install_and_activate(path))
            windows.append((t0, time.monotonic()))
            time.sleep(SWAP_GAP_S)
        print(json.dumps({"windows": windows, "ok": ok}), flush=True)

    if args.swap:
        threading.Thread(target=swapper, name="bench-swapper", daemon=True).start()
    stop.wait()
    agent.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "serving")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--pub", type=Path, required=True)
    p.add_argument("--variant", default="tflite-int8")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--soak", type=float, default=120.0,
                   help="seconds of the RSS soak: the first 60 warm up, the rest is judged (the target says 60)")
    args = p.parse_args(argv)
    print(run(args.work, args.bundle, args.pub, variant=args.variant, seconds=args.seconds, budget=args.budget,
              soak=args.soak))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Edge agent figures (issue 4, part A): memory per runtime, start-to-serving time, and p99 latency
while models are swapped against steady state in the same run.

    section = run(work, bundle, pub)   # markdown; bench/run.py appends it to BENCHMARKS.md
    python -m bench.agent_a --work bench/.work-agent --bundle out/favorita-demand-v1.bundle.tar --pub keys/signing.pub

- **Memory**: the real agent (``edgeship agent``) as its own process, once pinned to a LiteRT
  variant and once to an ONNX Runtime one, started on a store that holds the bundle; VmRSS (and the
  peak VmHWM) from ``/proc`` after start-up, model load and warm-up, and one HTTP prediction.
- **Start-to-serving**: from process start to the first 200 on ``/healthz`` that names a model
  (median of 3 starts per runtime).
- **Swap**: an agent serving HTTP while a load process (its own Python, one keep-alive connection,
  closed loop) times every request; after a steady phase the agent installs ten new versions one
  after another (verify, unpack, load and warm up beside the old, on-device gate, atomic swap).
  Requests that overlapped an install are "during a swap"; the rest are steady state. Loops are
  bounded in count and time; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from bench.common import free_port

ROOT = Path(__file__).resolve().parent.parent
STARTS = 3
SWAPS = 10
STEADY_S = 3.0
GAP_S = 0.4
LOAD_MAX_REQUESTS = 200_000


# -- helpers ----------------------------------------------------------------------------------
def _row(bundle_dir: Path) -> dict:
    """A valid request row from the bundle's own state (first store×item pair, the day after)."""
    from models.features import SalesState
    from models.manifest import Manifest

    manifest = Manifest.model_validate_json((bundle_dir / "manifest.json").read_bytes())
    state = SalesState.from_bytes((bundle_dir / manifest.state).read_bytes())
    day = np.datetime64(manifest.contract.state_end_date) + 1
    return {"date": str(day), "store_nbr": int(state.store_nbr[0]), "item_nbr": int(state.item_nbr[0]), "onpromotion": False}


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# -- memory and start-to-serving ------------------------------------------------------------------
def _agent_once(state: Path, pub: Path, variant: str, body: bytes, log: Path) -> dict[str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "edgeship", "agent", "--device-id", "bench", "--state-dir", str(state), "--trust", str(pub),
           "--http", f"127.0.0.1:{port}", "--variant", variant, "--log-level", "WARNING"]  # fmt: skip
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    t0 = time.perf_counter()
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("agent did not serve within 60 s")
            try:
                status, data = _get(port, "/healthz")
                if status == 200 and json.loads(data).get("model"):
                    break
            except OSError:
                pass
            time.sleep(0.002)
        serving_s = time.perf_counter() - t0
        model = json.loads(data)["model"]
        status, data = _get(port, "/v1/predict", body)
        if status != 200:
            raise RuntimeError(f"prediction failed: {status} {data[:300]!r}")
        rss, hwm = _rss_mb(proc.pid)
        return {"serving_s": serving_s, "rss_mb": rss, "hwm_mb": hwm, "variant": model["variant"], "runtime": model["runtime"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _memory_and_startup(work: Path, bundle: Path, pub: Path, body: bytes, variants: dict[str, str]) -> dict[str, dict]:
    from edge.store.model_store import ModelStore
    from edge.store.versions import VersionHistory
    from models.signing import load_public_key

    out: dict[str, dict] = {}
    for label, variant in variants.items():
        state = work / f"state-{label}"
        store = ModelStore(state, [load_public_key(pub)])
        b = store.install(bundle)
        store.activate(b.manifest.version)
        VersionHistory(state).record_activation(b.manifest.version, b.digest)
        runs = [_agent_once(state, pub, variant, body, work / f"agent-{label}.log") for _ in range(STARTS)]
        out[label] = {
            "variant": runs[0]["variant"],
            "runtime": runs[0]["runtime"],
            "rss_mb": statistics.median(r["rss_mb"] for r in runs),
            "hwm_mb": statistics.median(r["hwm_mb"] for r in runs),
            "serving_ms": [r["serving_s"] * 1e3 for r in runs],
        }
    return out


# -- p99 during swaps ---------------------------------------------------------------------------
def _repack(src: Path, dst: Path, version: int, key) -> Path:
    from cloud.training.bundle import write_bundle

    with tarfile.open(src) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar if i.name not in ("manifest.json", "signature.json")}
        manifest = json.loads(tar.extractfile("manifest.json").read())
    fields = {k: v for k, v in manifest.items() if k != "files"} | {"version": version}
    return write_bundle(dst, fields, members, key)[0]


def _load(url: str, body: bytes, seconds: float, out: Path) -> None:
    """The load process: one keep-alive connection, closed loop; writes t0, t1 (monotonic), status."""
    host, port = url.split("//")[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    rows = []
    deadline = time.monotonic() + seconds
    for _ in range(LOAD_MAX_REQUESTS):
        t0 = time.monotonic()
        if t0 > deadline:
            break
        try:
            conn.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            status = r.status
            version = json.loads(data)["model"]["version"] if status == 200 else 0
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            status, version = -1, 0
        rows.append((t0, time.monotonic(), status, version))
    np.save(out, np.array(rows, dtype=np.float64))


def _swap_latency(work: Path, bundle: Path, pub: Path, body: bytes, variant: str) -> dict:
    from cryptography.hazmat.primitives import serialization

    from edge.agent import Agent
    from edge.config import AgentConfig
    from models.signing import generate_keypair

    private, public = generate_keypair()  # signs the extra versions swapped in
    pem2 = work / "swap-signing.pub"
    pem2.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    versions = [_repack(bundle, work / f"swap-v{100 + i}.tar", 100 + i, private) for i in range(SWAPS)]
    cfg = AgentConfig(device_id="bench", state_dir=work / "state-swap", trust=[pub, pem2], http="127.0.0.1:0", variants=[variant], keep_versions=2)
    agent = Agent(cfg).start()
    try:
        if not agent.install_and_activate(bundle):
            raise RuntimeError(f"the bundle was not activated: {agent.device_state().last_update}")
        total = STEADY_S + SWAPS * GAP_S + 8.0
        samples, body_file = work / "swap-load.npy", work / "swap-body.json"
        body_file.write_bytes(body)
        load = subprocess.Popen(
            [sys.executable, "-m", "bench.agent_a", "--load", agent.http_url, "--seconds", str(total), "--out", str(samples),
             "--body", str(body_file)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(STEADY_S)
        windows = []
        for path in versions:
            t0 = time.monotonic()
            if not agent.install_and_activate(path):
                raise RuntimeError(f"swap to {path.name} failed: {agent.device_state().last_update}")
            windows.append((t0, time.monotonic()))
            time.sleep(GAP_S)
        _, err = load.communicate(timeout=total + 30)
        if load.returncode != 0:
            raise RuntimeError(f"load process failed: {err.decode()[-2000:]}")
    finally:
        agent.stop()
    rows = np.load(samples)
    failed = int(np.sum(rows[:, 2] != 200))
    ok = rows[rows[:, 2] == 200]
    # during: the request overlapped an install; steady: before the first or after the last one
    during = [(t1 - t0) * 1e3 for t0, t1, *_ in ok if any(t0 <= b and t1 >= a for a, b in windows)]
    first, last = windows[0][0], windows[-1][1]
    steady = [(t1 - t0) * 1e3 for t0, t1, *_ in ok if t1 < first or t0 > last + GAP_S]
    return {
        "requests": len(rows),
        "failed": failed,
        "steady": steady,
        "during": during,
        "swap_ms": [(b - a) * 1e3 for a, b in windows],
        "versions_seen": sorted({int(v) for *_, v in rows if v}),
    }


# -- the section --------------------------------------------------------------------------------
def run(work: Path, bundle: Path, pub: Path) -> str:
    """Measure and return the markdown section (see the module doc)."""
    from models.bundle import read_manifest
    from models.signing import load_public_key

    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    manifest = read_manifest(bundle, [load_public_key(pub)])
    shipped = [v.name for v in manifest.variants]
    lite = next(v for v in ("tflite-int8", "tflite-dynamic", "tflite-fp16", "tflite-fp32") if v in shipped)
    onnx = next(v for v in ("onnx-fp32", "onnx-int8") if v in shipped)
    import tempfile

    from models.bundle import unpack_bundle

    with tempfile.TemporaryDirectory() as tmp:
        body = json.dumps({"instances": [_row(unpack_bundle(bundle, Path(tmp) / "b", [load_public_key(pub)]).directory)]}).encode()

    mem = _memory_and_startup(work, bundle, pub, body, {"LiteRT": lite, "ONNX Runtime": onnx})
    swap = _swap_latency(work, bundle, pub, body, lite)

    lines = [
        "## Edge agent: memory, start-up and hot swap",
        "",
        f"The real agent process (`edgeship agent`, HTTP on loopback, no broker), {os.cpu_count()} CPUs, 1 inference "
        "thread. Memory is VmRSS after start-up, model load and warm-up and one HTTP prediction (VmHWM = peak); "
        f"start-to-serving is process start to the first `/healthz` 200 naming a model (median of {STARTS} starts).",
        "",
        "| runtime | variant | RSS MB | peak RSS MB | start-to-serving ms (median) | min … max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, m in mem.items():
        ms = m["serving_ms"]
        lines.append(
            f"| {label} | {m['variant']} | {m['rss_mb']:.0f} | {m['hwm_mb']:.0f} | {statistics.median(ms):.0f} | {min(ms):.0f} … {max(ms):.0f} |"
        )
    if "LiteRT" in mem and "ONNX Runtime" in mem:
        lines.append("")
        lines.append(f"ONNX Runtime costs {mem['ONNX Runtime']['rss_mb'] - mem['LiteRT']['rss_mb']:+.0f} MB of RSS against LiteRT.")
    s, d = swap["steady"], swap["during"]
    ratio = _pct(d, 99) / _pct(s, 99) if s and d else float("nan")
    lines += [
        "",
        f"**Latency while swapping models** ({lite}, one keep-alive connection from a separate load process, closed loop): "
        f"{SWAPS} updates installed one after another while serving — each verified, unpacked, loaded and warmed up beside "
        "the serving model, gated on the holdout slice, then swapped atomically. Requests that overlapped an update are "
        "\"during a swap\".",
        "",
        "| phase | requests | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        f"| steady state | {len(s)} | {_pct(s, 50):.2f} | {_pct(s, 99):.2f} | {max(s, default=float('nan')):.2f} |",
        f"| during a swap | {len(d)} | {_pct(d, 50):.2f} | {_pct(d, 99):.2f} | {max(d, default=float('nan')):.2f} |",
        "",
        f"p99 during a swap / p99 steady: **{ratio:.1f}×**. Failed requests: **{swap['failed']}** of {swap['requests']}. "
        f"Versions answered: {swap['versions_seen']}. One update (install → serving) took "
        f"{statistics.median(swap['swap_ms']):.0f} ms median ({min(swap['swap_ms']):.0f} … {max(swap['swap_ms']):.0f}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--body", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work-agent")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--pub", type=Path)
    args = parser.parse_args(argv)
    if args.load:
        _load(args.load, args.body.read_bytes(), args.seconds, args.out)
        return 0
    if not (args.bundle and args.pub):
        parser.error("--bundle and --pub are required")
    print(run(args.work, args.bundle, args.pub))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgeship demo``: the whole system on embedded defaults, in one command.

Synthetic Favorita data → training with gates → export and parity gate → signed bundle → an MQTT
broker (embedded ``amqtt`` in this process unless ``--broker`` names one) → two edge agents (real
processes, as on a shop device) → publish → a prediction from every agent over HTTP.

The embedded broker speaks MQTT 3.1.1 only, which is all edgeship's core protocol uses. Its stock
anonymous login silently drops queued QoS 1 messages of persistent sessions, so the demo installs
an authentication plugin that accepts every client as a named one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedBroker", "run_demo", "free_port", "http_json"]

logger = logging.getLogger(__name__)

try:  # amqtt is the demo's broker; the rest of edgeship does not need it.
    from amqtt.plugins.base import BaseAuthPlugin
except ImportError:  # pragma: no cover - reported when the demo starts
    BaseAuthPlugin = object  # type: ignore[assignment,misc]


class AcceptEveryone(BaseAuthPlugin):  # type: ignore[misc,valid-type]
    """amqtt auth plugin: every client is accepted *without* being marked anonymous."""

    @dataclasses.dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        del session  # amqtt passes it by name; every client is accepted
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on ``host`` (loopback: 127.0.0.1 or ::1), for a local broker or agent."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An in-process amqtt broker on a loopback port, in its own thread and event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt-broker", daemon=True)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {f"{__name__}.AcceptEveryone": {}},
        }
        self._thread.start()

        async def _start() -> Any:
            broker = Broker(config)
            await broker.start()
            return broker

        self._broker = asyncio.run_coroutine_threadsafe(_start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def http_json(url: str, body: Any | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON) ``url``; return status and decoded JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we built
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclasses.dataclass
class _AgentProc:
    device_id: str
    http: str
    proc: subprocess.Popen[bytes]
    log: Path


def _start_agent(device_id: str, broker: str, work: Path, trust: Path, extra: Sequence[str] = ()) -> _AgentProc:
    """An agent process; ``extra``: more ``edgeship agent`` arguments (``--attr``, ``--option`` …)."""
    port = free_port()
    log = work / "logs" / f"{device_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "edgeship", "agent",
        "--broker", broker,
        "--device-id", device_id,
        "--state-dir", str(work / "agents" / device_id),
        "--trust", str(trust),
        "--http", f"127.0.0.1:{port}",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    return _AgentProc(device_id, f"http://127.0.0.1:{port}", proc, log)


def stop_agents(procs: Sequence[_AgentProc], timeout: float = 15.0) -> None:
    """SIGTERM every agent process still running, wait for each, kill what does not stop in time."""
    for agent in procs:
        if agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
    for agent in procs:
        try:
            agent.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            agent.proc.kill()


def _wait_for_version(agent: _AgentProc, version: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            raise RuntimeError(f"agent {agent.device_id} exited with {agent.proc.returncode}; see {agent.log}")
        with contextlib.suppress(OSError, ValueError):
            _, last = http_json(f"{agent.http}/healthz", timeout=2)
            if last and (last.get("model") or {}).get("version") == version:
                return last
        time.sleep(0.2)
    raise TimeoutError(f"agent {agent.device_id} did not activate v{version} within {timeout:.0f} s (last: {last}); see {agent.log}")


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="edgeship-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_demo(*, once: bool = False, broker: str | None = None, workdir: Path | None = None, agents: int = 2) -> int:
    """Run the demo; with ``once``, exit 0 after every agent answered a prediction over HTTP."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from cloud.training.pipeline import train
    from cloud.fleet.publish import publish
    from cloud.data.synth import generate
    from models.signing import write_keypair

    t0 = time.perf_counter()
    with _workdir(workdir) as work:
        print(f"[demo] working in {work}")
        data_dir = work / "data"
        if not (data_dir / "train.csv").exists():
            print(f"[demo] {generate(data_dir)}")
        keys = work / "keys"
        if not (keys / "signing.key").exists():
            write_keypair(keys)
        # the demo keeps its own version registry and run records in its workdir, never the user's ~/.edgeship
        result = train(data_dir, work / "out", keys / "signing.key", registry=work / "registry.json", runs_dir=work / "runs")
        assert result.bundle is not None
        rep = result.report
        print(f"[demo] trained {rep['model']} v{rep['version']}: NWRMSLE keras {rep['metrics']['keras']['nwrmsle']:.4f}, "
              f"baseline-rf {rep['metrics']['baseline-rf']['nwrmsle']:.4f}, "
              f"baseline-ma-dow {rep['metrics']['baseline-ma-dow']['nwrmsle']:.4f}; "
              f"shipped {', '.join(rep['shipped_variants'])}")  # fmt: skip
        first = rep["shipped_variants"][0]
        print(f"[demo] devices run {first} first (NWRMSLE {rep['metrics'][first]['nwrmsle']:.4f}; "
              f"{rep.get('model_choice', {}).get('reason', '')})")  # fmt: skip

        embedded = None
        if broker is None:
            embedded = EmbeddedBroker().start()
            broker = embedded.url
            print(f"[demo] embedded MQTT broker (amqtt, MQTT 3.1.1) on {broker}")
        procs: list[_AgentProc] = []
        stop_shelf = None
        stop = threading.Event()
        old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            for i in range(agents):
                procs.append(_start_agent(f"store-{i + 1}", broker, work, keys / "signing.pub"))
            ann = publish(result.bundle, broker, key=keys / "signing.key", progress=False)
            print(f"[demo] published v{ann.version} ({ann.size} bytes in {len(ann.chunk_sha256)} chunks) to {broker}")
            from models.bundle import read_manifest
            from models.signing import load_public_key

            manifest = read_manifest(result.bundle, [load_public_key(keys / "signing.pub")])
            sample = _sample_instance(work / "data", manifest.contract.state_end_date)
            for agent in procs:
                health = _wait_for_version(agent, ann.version, timeout=90)
                status, answer = http_json(f"{agent.http}/v1/predict", {"instances": [sample]})
                if status != 200:
                    raise RuntimeError(f"agent {agent.device_id} answered {status}: {answer}")
                print(f"[demo] {agent.device_id}: model v{health['model']['version']} "
                      f"({health['model'].get('variant')}) predicts {answer['predictions'][0]:.2f} units for {json.dumps(sample)}")  # fmt: skip
            import datetime as dt  # issue 11: a simulated serial shelf feeds the first agent (edgeship firmware-sim)

            from edgeship.commands.bridge import demo_shelf

            stop_shelf = demo_shelf(procs[0].http, sample["store_nbr"], sample["item_nbr"],
                                    dt.date.fromisoformat(sample["date"]), work)  # fmt: skip
            print("[demo] URLs:")
            print(f"  broker            {broker}")
            for agent in procs:
                print(f"  {agent.device_id:<16}  predict {agent.http}/v1/predict   health {agent.http}/healthz   "
                      f"metrics {agent.http}/metrics   log {agent.log}")  # fmt: skip
            print(f"  report            {result.report_path}")
            print(f"  validation app    {_validation_app(procs[0].http)}")  # issue 10: Gradio app on the first agent
            print(f"[demo] ready in {time.perf_counter() - t0:.1f} s")
            if once:
                return 0
            print("[demo] serving; Ctrl-C to stop")
            try:
                while not stop.is_set() and all(a.proc.poll() is None for a in procs):
                    stop.wait(0.5)
            except KeyboardInterrupt:
                pass
            print("[demo] stopping agents and broker")
            return 0
        finally:
            if stop_shelf is not None:
                stop_shelf()
            stop_agents(procs)
            if embedded is not None:
                embedded.stop()
            signal.signal(signal.SIGTERM, old_term)


def _validation_app(agent_url: str) -> str:
    """Start the field-validation app (edge.validate_app) for ``agent_url``; its URL, or why not."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from edge.validate_app.app import launch

        return launch(agent_url, port=0)[1]
    except Exception as exc:  # noqa: BLE001 - the demo runs without the validate extra
        return f"not started ({type(exc).__name__}: {exc}; pip install -e '.[validate]')"


def _sample_instance(data_dir: Path, state_end: str) -> dict[str, Any]:
    """A request a shop would send: the first store and item sold, the day after the data ends."""
    import datetime as dt

    with open(data_dir / "train.csv") as fh:
        fh.readline()
        first = fh.readline().strip().split(",")
    day = dt.date.fromisoformat(state_end) + dt.timedelta(days=1)
    return {"date": day.isoformat(), "store_nbr": int(first[2]), "item_nbr": int(first[3]), "onpromotion": False}

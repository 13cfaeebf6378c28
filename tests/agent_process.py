"""Real agent processes for install and parity checks: another venv, another CPU (qemu), same bundle.

Used by the light-install and tflite-runtime tests and by ``scripts/arm64-smoke.sh``::

    bundle, pub, key = parity_bundle(tmp)                       # signed, a real tiny .tflite model
    agent = AgentProcess([venv / "bin/python", "-m", "edgeship"], tmp / "a", pub, broker, "store-1").start()
    publish(bundle, key, broker)                                # `edgeship publish` (the cloud side)
    agent.wait_model(1)                                         # installed, gated, serving v1
    preds = agent.predict(PARITY_ROWS)
    agent.stop()                                                # SIGTERM: clean stop, exit code 0
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PARITY_ROWS", "AgentProcess", "parity_bundle", "publish", "max_abs_diff"]

REPO = Path(__file__).resolve().parent.parent

#: Rows every parity check sends (every pair with history, several days, promotions).
PARITY_ROWS = [
    {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False},
    {"date": "2017-08-17", "store_nbr": 1, "item_nbr": 105574, "onpromotion": True},
    {"date": "2017-08-18", "store_nbr": 2, "item_nbr": 103520, "onpromotion": False},
    {"date": "2017-08-19", "store_nbr": 3, "item_nbr": 999001, "onpromotion": True},
    {"date": "2017-08-20", "store_nbr": 1, "item_nbr": 103520, "onpromotion": True},
]


def parity_bundle(folder: Path, version: int = 1) -> tuple[Path, Path, Path]:
    """A signed bundle with one real ``tflite-fp32`` model (runs on LiteRT and tflite-runtime 2.14)
    and its gate figures: ``(bundle, signing public key PEM, signing private key PEM)``."""
    from tests.bundle_kit import build_bundle, tflite_linear
    from tests.delivery_kit import keypair

    kp = keypair(folder / "keys")
    bundle, _ = build_bundle(
        folder / f"parity-v{version}.bundle.tar", kp.private, version=version,
        variants=("tflite-fp32",), model_bytes={"tflite-fp32": tflite_linear()},
    )  # fmt: skip
    return bundle, kp.pub_path, kp.key_path


def publish(bundle: Path, key: Path, broker: str, *, python: str = sys.executable) -> str:
    """``edgeship publish`` (signed targets, retained chunks) from this venv; returns its output."""
    out = subprocess.run(
        [python, "-m", "edgeship", "publish", str(bundle), "--broker", broker, "--key", str(key), "--no-progress",
         "--chunk-size", "16384"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"edgeship publish failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def max_abs_diff(a: Sequence[float], b: Sequence[float]) -> float:
    assert len(a) == len(b), (a, b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


class AgentProcess:
    """``<command> agent --http 127.0.0.1:0 ...`` as a child process; the URL is its first stdout line.

    ``command`` runs the CLI (e.g. ``[python, "-m", "edgeship"]`` or a ``chroot`` prefix);
    ``env`` is the whole environment (nothing inherited when given)."""

    def __init__(
        self,
        command: Sequence[str],
        state_dir: Path | str,
        trust: Path | str,
        broker: str,
        device_id: str,
        *,
        env: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
        log: Path | None = None,
    ) -> None:
        self.argv = [
            *map(str, command), "agent", "--device-id", device_id, "--state-dir", str(state_dir),
            "--trust", str(trust), "--broker", broker, "--http", "127.0.0.1:0", *extra,
        ]  # fmt: skip
        self.env = dict(env) if env is not None else None
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.url: str | None = None

    def start(self, timeout: float = 60.0) -> AgentProcess:
        stderr = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115 (kept for the process)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.env)
        line = _readline(self.proc, timeout)
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"agent did not print its URL (got {line!r}); log: {self.log_tail()}")
        self.url = line.strip()
        return self

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text()[-n:] if self.log and self.log.exists() else "(no log)"

    def get(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def predict(self, rows: Sequence[Mapping[str, Any]], timeout: float = 60.0) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.url}/v1/predict", data=json.dumps({"instances": list(rows)}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST /v1/predict: {exc.code} {exc.read()[:2000]!r}") from None

    def wait_model(self, version: int, timeout: float = 60.0) -> dict[str, Any]:
        """Poll ``/healthz`` until ``version`` serves (installed, verified, gated); its body."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                last = self.get("/healthz", timeout=5)
                if last.get("model") and last["model"]["version"] == version:
                    return last
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"v{version} not served within {timeout} s (last /healthz {last}); log: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop. The exit code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line, or "" after ``timeout`` s / at exit (a thread, so a hung child cannot block us)."""
    import threading

    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else ""


#: Distributions the edge install must never pull (the cloud's and the demo's).
HEAVY = ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "pandas", "scikit-learn", "gradio", "amqtt")
EDGE_VENV = REPO / ".venv-edge"


def ensure_edge_venv(venv: Path = EDGE_VENV, python: str | None = None) -> Path:
    """A venv with ``pip install '.[edge]'`` (a real wheel build, no editable install), rebuilt when the
    project's files change (a fingerprint of pyproject.toml and the packages' sources); its python."""
    import hashlib
    import shutil

    h = hashlib.sha256()
    for path in sorted([REPO / "pyproject.toml", *[p for pkg in ("edgeship", "edge", "models", "cloud", "firmware_bridge")
                                                  for p in (REPO / pkg).rglob("*") if p.is_file() and "__pycache__" not in p.parts]]):  # fmt: skip
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    stamp = venv / ".edgeship-source.sha256"
    py = venv / "bin" / "python"
    if py.exists() and stamp.exists() and stamp.read_text() == h.hexdigest():
        return py
    base = python or shutil.which("python3.11") or sys.executable
    if not py.exists():
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    out = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{REPO}[edge]"],
        capture_output=True, text=True, timeout=1200, env=env, cwd=venv,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"pip install '.[edge]' failed: {out.stderr[-3000:]}")
    stamp.write_text(h.hexdigest())
    return py


#: Runs in the edge venv's python: the real CLI (``edgeship agent ...``) in the main thread; a probe
#: thread waits until /healthz serves ARGV[2]'s version, writes sorted(sys.modules) and the RSS to
#: ARGV[1], then sends SIGTERM (the agent's clean stop).
PROBE = r"""
import json, os, signal, sys, threading, time, urllib.request
out, version, url, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def probe():
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        try:
            body = json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read())
            if body.get("model") and body["model"]["version"] == version:
                break
        except OSError:
            pass
        time.sleep(0.02)
    else:
        os.kill(os.getpid(), signal.SIGTERM); return
    json.dump({"modules": sorted(sys.modules), "rss_kib": rss_kib(), "healthz": body,
               "serving_s": time.monotonic() - START}, open(out, "w"))
    os.kill(os.getpid(), signal.SIGTERM)
START = time.monotonic()
threading.Thread(target=probe, daemon=True).start()
from edgeship.cli import main
sys.exit(main(argv))
"""

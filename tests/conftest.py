"""Shared test fixtures: a real Mosquitto on an ephemeral loopback port, and the CI rule.

Under ``CI=true`` a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeship.demo import free_port  # noqa: F401  (one implementation; tests import it from here)
from cryptography.hazmat.primitives import serialization

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Training runs record themselves and take version numbers from a registry (cloud.tracking): tests
# never touch ~/.edgeship or a configured MLflow. Session-wide here; each test gets its own below.
_TRACKING = Path(tempfile.mkdtemp(prefix="edgeship-tests-tracking-"))
os.environ["EDGESHIP_RUNS_DIR"] = str(_TRACKING / "runs")
os.environ["EDGESHIP_REGISTRY"] = str(_TRACKING / "versions.json")
for _var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
    os.environ.pop(_var, None)


@pytest.fixture(autouse=True)
def _own_tracking(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own runs folder and version registry (module/session fixtures share the session's)."""
    root = tmp_path_factory.mktemp("tracking")
    monkeypatch.setenv("EDGESHIP_RUNS_DIR", str(root / "runs"))
    monkeypatch.setenv("EDGESHIP_REGISTRY", str(root / "versions.json"))


def require(condition: bool, why: str) -> None:
    """Skip locally when a service is missing; fail under CI, where everything must be installed."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI=true: install it, tests may not skip)")
    pytest.skip(why)


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    """Poll ``cond`` until it returns something truthy (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Mosquitto:
    """A Mosquitto process on 127.0.0.1:<port>; ``stop()``/``start()`` simulate an outage."""

    def __init__(self, workdir: Path, port: int | None = None, *, config: str | None = None, extra: str = "") -> None:
        """``config``: a whole configuration instead of the default one (``{port}`` is replaced by the
        port; e.g. deploy/mosquitto's TLS + ACL setup); ``extra``: lines appended to the default one."""
        binary = mosquitto_binary()
        require(binary is not None, "mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        if config is not None:
            self.conf.write_text(config.replace("{port}", str(self.port)))
        else:
            self.conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 10000\nlog_dest stderr\n" + extra
            )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        log = open(self.workdir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()[-2000:]}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


@pytest.fixture()
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    """A fresh Ed25519 signing pair: ``(private, public, path of the public key PEM)``."""
    from models.signing import generate_keypair

    private, public = generate_keypair()
    pem = tmp_path_factory.mktemp("keys") / "signing.pub"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public, pem

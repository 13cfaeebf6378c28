"""The light edge install: ``pip install '.[edge]'`` into a clean venv pulls no TensorFlow, pandas,
scikit-learn or Gradio, and a full agent start (MQTT, HTTP, a bundle side-loaded, verified, gated and
served by LiteRT) imports no ``cloud`` module — read from ``sys.modules`` inside the agent process.

The venv (``.venv-edge``) is built by :func:`tests.agent_process.ensure_edge_venv` and rebuilt only
when the project's files change.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.agent_process import HEAVY, PROBE, ensure_edge_venv, parity_bundle
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def edge_python():
    return ensure_edge_venv()


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (the installed code runs, not the checkout), no EDGESHIP_* settings."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("EDGESHIP_")}


def test_edge_install_pulls_no_cloud_dependencies(edge_python):
    out = subprocess.run([str(edge_python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                         check=True, env=_clean_env(), timeout=120)  # fmt: skip
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out.stdout)}
    assert not set(HEAVY) & set(installed), sorted(set(HEAVY) & set(installed))
    assert {"edgeship", "ai-edge-litert", "onnxruntime", "numpy", "paho-mqtt"} <= set(installed)
    # the wheel installs the project's packages, not its tests or benchmarks
    where = subprocess.run([str(edge_python), "-c", "import edgeship, importlib.util as u; print(edgeship.__file__); "
                            "print(u.find_spec('tests'), u.find_spec('bench'))"],  # fmt: skip
                           capture_output=True, text=True, check=True, env=_clean_env(), cwd="/", timeout=60)
    path, specs = where.stdout.splitlines()
    assert path.startswith(str(edge_python.parent.parent)) and "site-packages" in path, path  # installed, not the checkout
    assert specs == "None None", specs


def test_agent_help_and_version_import_no_cloud(edge_python, tmp_path):
    code = ("import sys, contextlib, io\nfrom edgeship.cli import main\nfrom edgeship import __version__\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['agent', '--help'])\n    except SystemExit: pass\n"
            "print(__version__, sorted(m for m in sys.modules if m == 'cloud' or m.startswith('cloud.')))")  # fmt: skip
    out = subprocess.run([str(edge_python), "-c", code], capture_output=True, text=True, check=True,
                         env=_clean_env(), cwd=tmp_path, timeout=120)  # fmt: skip
    version, cloud = out.stdout.split(" ", 1)
    assert cloud.strip() == "[]", cloud
    shown = subprocess.run([str(edge_python.parent / "edgeship"), "--version"], capture_output=True, text=True,
                           check=True, env=_clean_env(), cwd=tmp_path, timeout=120)  # fmt: skip
    assert shown.stdout.strip() == f"edgeship {version}"


def test_full_agent_start_imports_no_cloud_module(edge_python, mosquitto, tmp_path):
    bundle, pub, _key = parity_bundle(tmp_path)
    port = free_port()
    report = tmp_path / "modules.json"
    argv = ["agent", "--device-id", "light-1", "--state-dir", str(tmp_path / "state"), "--trust", str(pub),
            "--broker", mosquitto.url, "--http", f"127.0.0.1:{port}", "--install", str(bundle)]  # fmt: skip
    proc = subprocess.run(
        [str(edge_python), "-c", PROBE, str(report), "1", f"http://127.0.0.1:{port}", *argv],
        capture_output=True, text=True, env=_clean_env(), cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]  # SIGTERM → clean stop → exit 0
    seen = json.loads(report.read_text())
    assert seen["healthz"]["model"]["runtime"] == "litert" and seen["healthz"]["status"] == "ok"
    from edgeship import __version__

    assert seen["healthz"]["version"] == __version__
    modules = seen["modules"]
    assert "edge.agent" in modules and "paho.mqtt.client" in modules  # it really started
    cloud = [m for m in modules if m == "cloud" or m.startswith("cloud.")]
    heavy = [m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "pandas", "sklearn", "gradio", "tests")]
    assert cloud == [] and heavy == [], (cloud, heavy)

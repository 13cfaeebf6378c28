"""tflite-runtime 2.14 on numpy 1.26 (the ``edge-legacy`` extra, old Raspberry Pi images): the real
agent, in its own venv, installs a published bundle with the ``tflite_legacy`` plugin, passes the
on-device gate and answers like the LiteRT agent (numpy 2) within the bundle's parity tolerance.

The venv (``.venv-legacy``, only the core's and the extra's requirements; the code comes from the
checkout) is built by ``scripts/edge-venv.sh`` once and rebuilt only when those requirements change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_process import PARITY_ROWS, REPO, AgentProcess, max_abs_diff, parity_bundle, publish
from tests.bundle_kit import SAMPLE_TOLERANCE

pytestmark = pytest.mark.integration

LEGACY_VENV = REPO / ".venv-legacy"


@pytest.fixture(scope="module")
def legacy_python() -> Path:
    subprocess.run(["bash", str(REPO / "scripts/edge-venv.sh"), str(LEGACY_VENV), "edge-legacy"], check=True, timeout=900)
    return LEGACY_VENV / "bin/python"


def _env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("EDGESHIP_")}
    return {**keep, "PYTHONPATH": str(REPO), "ORT_DISABLE_TELEMETRY": "1"}


def test_legacy_venv_has_tflite_runtime_on_numpy_1(legacy_python):
    out = subprocess.run(
        [str(legacy_python), "-c", "import json, numpy; from edge.runtimes import available_runtimes as a; "
         "print(json.dumps([numpy.__version__, a()]))"],
        capture_output=True, text=True, check=True, env=_env(), timeout=120,
    )  # fmt: skip
    import json

    numpy_version, runtimes = json.loads(out.stdout)
    assert numpy_version.startswith("1."), numpy_version
    assert runtimes["tflite_legacy"] == "ok" and runtimes["litert"] != "ok", runtimes


def test_tflite_runtime_agent_matches_litert_agent(legacy_python, mosquitto, tmp_path):
    bundle, pub, key = parity_bundle(tmp_path)
    legacy = AgentProcess([legacy_python, "-m", "edgeship"], tmp_path / "legacy", pub, mosquitto.url, "legacy-pi",
                          env=_env(), log=tmp_path / "legacy.log")  # fmt: skip
    modern = AgentProcess([sys.executable, "-m", "edgeship"], tmp_path / "modern", pub, mosquitto.url, "modern-pi",
                          env=_env(), log=tmp_path / "modern.log")  # fmt: skip
    try:
        legacy.start()
        modern.start()
        publish(bundle, key, mosquitto.url)
        old = legacy.wait_model(1)
        new = modern.wait_model(1)
        assert old["model"]["runtime"] == "tflite_legacy" and new["model"]["runtime"] == "litert"
        assert "gate_passed" in legacy.log_tail(200_000)  # the on-device gate ran and passed before activation
        a, b = legacy.predict(PARITY_ROWS), modern.predict(PARITY_ROWS)
        assert a["model"]["digest"] == b["model"]["digest"]
        assert max_abs_diff(a["predictions"], b["predictions"]) <= SAMPLE_TOLERANCE["max_p99_abs_diff"], (a, b)
    finally:
        assert legacy.stop() == 0, legacy.log_tail()
        assert modern.stop() == 0, modern.log_tail()

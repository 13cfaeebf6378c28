"""Two `edgeship train` runs into different --out folders: distinct versions from the one registry
(they both made "v1" before), each run recorded (params, metrics, slices, data hash, code revision,
artefacts), `runs list` / `runs compare` on them; the second also logged to a real MLflow SQLite store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.recipes import load_recipe

from tests.conftest import require

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})  # fmt: skip


def test_two_runs_get_distinct_versions_and_are_recorded(tmp_path: Path) -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        require(False, "mlflow is not installed (pip install 'edgeship[mlflow]')")
    from mlflow import MlflowClient

    from cloud.data.synth import generate
    from models.signing import write_keypair

    generate(tmp_path / "data", stores=3, items=16, days=300, seed=3)
    write_keypair(tmp_path / "keys")
    runs, registry = Path(os.environ["EDGESHIP_RUNS_DIR"]), Path(os.environ["EDGESHIP_REGISTRY"])
    common = ["--data", str(tmp_path / "data"), "--key", str(tmp_path / "keys" / "signing.key"), "--no-progress"]
    a = _cli("train", *common, "--out", str(tmp_path / "out-a"))
    assert a.returncode == 0, a.stderr[-3000:]
    # the second run also logs to MLflow; its version still comes from the same local registry file
    db = tmp_path / "mlflow.db"
    b = _cli("train", *common, "--out", str(tmp_path / "out-b"), "--registry", str(registry), "--recipe",
             str(_recipe(tmp_path)), env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}, cwd=tmp_path)  # fmt: skip
    assert b.returncode == 0, b.stderr[-3000:]
    reports = [json.loads((tmp_path / o / "report.json").read_text()) for o in ("out-a", "out-b")]
    assert [r["version"] for r in reports] == [1, 2]
    assert Path(reports[1]["bundle"]).name == "favorita-demand-v2.bundle.tar"
    assert "run: " in a.stdout

    records = sorted((json.loads(p.read_text()) for p in runs.glob("*.json")), key=lambda r: r["version"])
    assert [r["version"] for r in records] == [1, 2] and {r["status"] for r in records} == {"shipped"}
    ra, rb = records
    assert ra["data"]["hash"] == reports[0]["dataset"]["version"] and len(ra["data"]["hash"]) == 64
    assert ra["code_revision"] == reports[0]["lineage"]["code_revision"] != "unknown"
    default_epochs = load_recipe().training.epochs
    assert ra["params"]["recipe"]["training"]["epochs"] == default_epochs and rb["params"]["recipe"]["training"]["epochs"] == 6
    assert ra["metrics"]["keras"]["nwrmsle"] == reports[0]["metrics"]["keras"]["nwrmsle"]
    assert "store_type" in ra["slices"] and ra["gates"]["baselines"]["passed"] is True
    bundle = ra["artifacts"]["bundle"]
    assert bundle["sha256"] == hashlib.sha256(Path(reports[0]["bundle"]).read_bytes()).hexdigest()
    assert {"report", "keras_model", "bundle"} <= set(ra["artifacts"])
    reg = json.loads(registry.read_text())["models"]["favorita-demand"]["versions"]
    assert reg["1"]["sha256"] == bundle["sha256"] and reg["2"]["status"] == "shipped"

    out = _cli("runs", "list")
    assert out.returncode == 0 and "favorita-demand@v1" in out.stdout and "favorita-demand@v2" in out.stdout, out.stderr
    out = _cli("runs", "compare", "v1", "v2")
    assert out.returncode == 0 and f"≠ recipe.training.epochs: {default_epochs} → 6" in out.stdout and "keras.nwrmsle" in out.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    got = client.get_run(rb["mlflow_run_id"])
    assert got.data.tags["edgeship.version"] == "2" and got.data.params["recipe.training.epochs"] == "6"
    assert got.data.metrics["keras.nwrmsle"] == pytest.approx(rb["metrics"]["keras"]["nwrmsle"])


def _recipe(root: Path) -> Path:
    from models.recipes import load_recipe

    data = load_recipe().model_dump(mode="json")
    data["training"]["epochs"] = 6
    path = root / "recipe.json"
    path.write_text(json.dumps(data))
    return path

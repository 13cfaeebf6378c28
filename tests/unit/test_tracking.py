"""Experiment tracking: the runs folder, ``edgeship runs list|compare``, the one version registry
(local, locked, across processes; MLflow's against a real SQLite store) and MLflow run logging."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.tracking.registry import LocalRegistry, RegistryError, open_registry
from cloud.tracking.runs import RunNotFound, RunStore, compare
from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]


def _reserve_many(path: str, n: int, q) -> None:
    reg = LocalRegistry(path)
    q.put([reg.reserve("m", run_id=f"p{i}", out="o") for i in range(n)])


def test_local_registry_hands_out_each_number_once_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_reserve_many, args=(str(path), 8, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = sorted(v for _ in procs for v in q.get(timeout=60))
    for p in procs:
        p.join(30)
    assert got == list(range(1, 33))  # 32 reservations, 32 distinct numbers, no gap
    reg = LocalRegistry(path)
    assert set(reg.versions("m")) == set(range(1, 33))
    # bundles already in --out raise the floor; an explicit number is refused once taken
    assert reg.reserve("m", run_id="x", out="o", floor=40) == 40
    with pytest.raises(RegistryError, match="version 3 of m is already registered"):
        reg.reserve("m", run_id="y", out="o", requested=3)
    assert reg.reserve("m", run_id="y", out="o", requested=50) == 50
    reg.complete("m", 50, status="shipped", sha256="ab" * 32, bundle="/b")
    assert reg.get("m", 50)["status"] == "shipped" and reg.get("m", 50)["sha256"] == "ab" * 32
    assert not list(tmp_path.glob(".versions.json.*"))  # no temp file left behind


def test_a_corrupt_registry_is_an_error_not_a_restart_at_one(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    path.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        LocalRegistry(path).reserve("m", run_id="r", out="o")


def _run(i: int, **kw) -> dict:
    return {
        "id": f"2026010{i}T000000Z-00000{i}", "status": "shipped", "model": "favorita-demand", "version": i,
        "params": {"recipe": {"training": {"epochs": 8, "learning_rate": 0.003}, "seed": 42}}, "data": {"hash": "d" * 64},
        "code_revision": "abc123", "metrics": {"keras": {"nwrmsle": 0.5, "r2": 0.7}}, "gates": {"baselines": {"passed": True}},
        **kw,
    }  # fmt: skip


def test_runs_store_lookup_and_compare(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    store.write(_run(1))
    b = _run(2, params={"recipe": {"training": {"epochs": 12, "learning_rate": 0.003}, "seed": 42}},
             metrics={"keras": {"nwrmsle": 0.45, "r2": 0.75}}, code_revision="def456")  # fmt: skip
    store.write(b)
    (tmp_path / "runs" / "junk.json").write_text("{")  # unreadable: skipped, not fatal
    assert [r["version"] for r in store.list()] == [1, 2]
    assert store.get("v2")["id"] == b["id"] and store.get("favorita-demand@v1")["version"] == 1
    assert store.get("20260102")["version"] == 2
    with pytest.raises(RunNotFound, match="2 runs"):
        store.get("2026")
    text = compare(store.get("v1"), store.get("v2"))
    assert "params: 2 of 5 differ" in text
    assert "≠ recipe.training.epochs: 8 → 12" in text and "≠ code_revision: abc123 → def456" in text
    assert "learning_rate" not in text  # unchanged parameters are left out unless asked
    line = next(ln for ln in text.splitlines() if ln.startswith("keras.nwrmsle"))
    assert "0.5" in line and "0.45" in line and "-10.00%" in line


def test_runs_cli_list_show_compare(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    store.write(_run(1))
    store.write(_run(2, metrics={"keras": {"nwrmsle": 0.4, "r2": 0.8}}))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgeship", "runs", *args, "--runs-dir", str(store.root)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip

    out = cli("list")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert len(rows) == 3 and "favorita-demand@v1" in rows[1] and "0.4000" in rows[2]
    out = cli("compare", "v1", "v2")
    assert out.returncode == 0 and "keras.nwrmsle" in out.stdout and "-20.00%" in out.stdout, out.stderr
    out = cli("show", "v9")
    assert out.returncode == 1 and "no run" in out.stderr


def test_tracking_imports_no_mlflow_unless_configured() -> None:
    code = ("import sys, cloud, cloud.tracking.session, cloud.tracking.runs, cloud.tracking.registry, edgeship.cli;"
            "from cloud.tracking.registry import open_registry; open_registry();"
            "assert 'mlflow' not in sys.modules, 'mlflow imported'")  # fmt: skip
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr


def test_mlflow_registry_and_run_logging_against_a_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        require(False, "mlflow is not installed (pip install 'edgeship[mlflow]')")
    from mlflow import MlflowClient

    from cloud.tracking.mlflow_log import log_run

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "edgeship-test")
    reg = open_registry()
    assert reg.kind == "mlflow"
    assert [reg.reserve("favorita-demand", run_id=f"r{i}", out=str(tmp_path)) for i in range(2)] == [1, 2]
    assert reg.reserve("favorita-demand", run_id="r3", out=str(tmp_path), floor=5) == 5  # 3 and 4 skipped
    assert reg.reserve("favorita-demand", run_id="r4", out=str(tmp_path), requested=7) == 7  # 6 skipped
    with pytest.raises(RegistryError, match="version 3 of favorita-demand is already taken"):
        reg.reserve("favorita-demand", run_id="r5", out=str(tmp_path), requested=3)
    reg.complete("favorita-demand", 2, status="shipped", sha256="cd" * 32)
    client = MlflowClient()
    mv = client.get_model_version("favorita-demand", "2")
    assert mv.tags["edgeship.status"] == "shipped" and mv.tags["edgeship.bundle_sha256"] == "cd" * 32
    assert client.get_model_version("favorita-demand", "3").tags["edgeship.status"] == "skipped"

    report = tmp_path / "report.json"
    report.write_text("{}")
    rec = _run(2, slices={"store_type": {"keras": {"A": 0.4}}}, artifacts={"report": {"path": str(report)}},
               metrics={"keras": {"nwrmsle": 0.5}, "keras@imputed-flags": {"nwrmsle": 0.52}})  # fmt: skip
    run_id = log_run(rec)
    got = client.get_run(run_id)
    assert got.data.metrics["keras.nwrmsle"] == 0.5 and got.data.metrics["keras_at_imputed-flags.nwrmsle"] == 0.52
    assert got.data.metrics["slice.store_type.keras.A"] == 0.4
    assert got.data.params["recipe.training.epochs"] == "8"
    assert got.data.tags["edgeship.data_hash"] == "d" * 64 and got.data.tags["edgeship.version"] == "2"
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"edgeship-run.json", "report.json"} <= names

"""`edgeship train` when a gate says no: a non-zero exit, a clear message, a report, nothing shipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.recipes import load_recipe

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud.data.synth import generate
    from models.signing import write_keypair

    root = tmp_path_factory.mktemp("gates")
    generate(root / "data", stores=3, items=16, days=300, seed=3)
    write_keypair(root / "keys")
    return root


def _recipe(root: Path, name: str, **changes) -> Path:
    data = load_recipe().model_dump(mode="json")
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = root / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _train(root: Path, out: Path, recipe: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edgeship", "train", "--data", str(root / "data"), "--out", str(out),
           "--key", str(root / "keys" / "signing.key"), "--recipe", str(recipe), "--no-progress"]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_model_that_does_not_beat_the_baselines_is_not_shipped(small_data: Path, tmp_path: Path) -> None:
    # One epoch at a learning rate too small to move: the model stays at the mean.
    recipe = _recipe(tmp_path, "frozen", **{"training.epochs": 1, "training.learning_rate": 1e-9})
    proc = _train(small_data, tmp_path / "out", recipe)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert "gate failed, nothing shipped: baseline gate failed: model NWRMSLE" in proc.stderr
    assert "does not beat" in proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["gates"]["baselines"]["passed"] is False and report["bundle"] is None
    assert report["metrics"]["keras"]["nwrmsle"] > min(report["metrics"]["baseline-rf"]["nwrmsle"], report["metrics"]["baseline-ma-dow"]["nwrmsle"])
    assert not list((tmp_path / "out").glob("*.bundle.tar"))


def test_variant_outside_its_tolerance_is_left_out_and_the_report_says_why(small_data: Path, tmp_path: Path) -> None:
    # scale caps small enough to bind on this data (issue 14): each applies and report.json records it
    caps = {"baselines.rf_max_rows": 500, "baselines.lightgbm_max_rows": 3000, "training.max_rows_per_epoch": 6000,
            "parity_max_rows": 600}  # fmt: skip
    recipe = _recipe(tmp_path, "strict", **{"tolerances.tflite-int8.max_p99_abs_diff": 0.0}, **caps)
    proc = _train(small_data, tmp_path / "out", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    train_rows, valid_rows = report["dataset"]["train_rows"], report["dataset"]["valid_rows"]
    assert report["caps"] == {
        "baseline-rf": {"limit": 500, "rows": train_rows, "used": 500, "applied": True},
        "baseline-lightgbm": {"limit": 3000, "rows": train_rows, "used": 3000, "applied": True},
        "keras": {"limit": 6000, "rows": train_rows, "used": 6000, "applied": True, "per_epoch": True, "epochs": 12},
        "parity": {"limit": 600, "rows": valid_rows, "used": 600, "applied": True},
    }
    assert {g["rows"] for g in report["gates"]["parity"].values()} == {600}  # the variants ran on the sample
    int8 = report["gates"]["parity"]["tflite-int8"]
    assert int8["shipped"] is False and "exceeds 0" in int8["message"] and int8["p99_abs_diff"] > 0
    assert "tflite-int8" not in report["shipped_variants"] and "tflite-fp32" in report["shipped_variants"]
    assert "not shipped: tflite-int8 not shipped" in proc.stdout  # the summary table names the reason


def test_lightgbm_ships_as_onnx_and_an_agent_serves_it_as_lightgbm_forecasts(small_data: Path, tmp_path: Path) -> None:
    """Recipe ``lightgbm_variant: always``: the bundle carries onnx-lightgbm (first when it forecasts
    better, else last); a real agent that prefers it installs the bundle through the on-device holdout
    gate and answers over HTTP exactly what the LightGBM model the trainer saved says."""
    import httpx
    import lightgbm as lgb
    import numpy as np

    from cloud.training.baselines import lgb_x
    from edge.agent import Agent
    from edge.config import AgentConfig

    recipe = _recipe(tmp_path, "lgb", lightgbm_variant="always")
    proc = _train(small_data, tmp_path / "out", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    gate = report["gates"]["parity"]["onnx-lightgbm"]
    assert gate["passed"] and gate["shipped"] and "agrees with LightGBM" in gate["message"] and gate["p99_abs_diff"] < 1e-3
    m = report["metrics"]
    assert abs(m["onnx-lightgbm"]["nwrmsle"] - m["baseline-lightgbm"]["nwrmsle"]) < 1e-4
    choice, order = report["model_choice"], report["shipped_variants"]
    better = m["onnx-lightgbm"]["nwrmsle"] < m[choice["compared_with"]]["nwrmsle"]
    assert order.index("onnx-lightgbm") == (0 if better and choice["store_type_gate"] else len(order) - 1)
    assert choice["shipped_model"] == ("lightgbm" if order[0] == "onnx-lightgbm" else "keras")
    assert f"shipped first: {order[0]} ({choice['shipped_model']}" in proc.stdout

    booster = lgb.Booster(model_file=report["lightgbm_model"])
    cfg = AgentConfig(
        device_id="store-lgb", state_dir=tmp_path / "state", trust=[small_data / "keys" / "signing.pub"],
        http="127.0.0.1:0", variants=["onnx-lightgbm"],
    )  # fmt: skip
    agent = Agent(cfg)
    with agent:
        assert agent.install_and_activate(report["bundle"]) is True  # verified, gated on the holdout, swapped in
        predictor = agent.predictor
        assert (predictor.variant, predictor.runtime_name) == ("onnx-lightgbm", "onnxruntime")
        state = predictor.sales_state
        end = np.datetime64(state.end_date, "D")
        rows = [
            {"date": str(end + 1 + k % 16), "store_nbr": int(s), "item_nbr": int(i), "onpromotion": bool(k % 3 == 0)}
            for k, (s, i) in enumerate(zip(state.store_nbr[:40].tolist(), state.item_nbr[:40].tolist(), strict=True))
        ]
        r = httpx.post(f"{agent.http_url}/v1/predict", json={"instances": rows}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"]["variant"] == "onnx-lightgbm"
        want = np.expm1(np.maximum(booster.predict(lgb_x(predictor.encode(rows))), 0.0))
        np.testing.assert_allclose(body["predictions"], want, rtol=1e-4, atol=1e-3)

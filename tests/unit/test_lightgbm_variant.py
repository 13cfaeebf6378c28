"""``onnx-lightgbm``: the trainer's LightGBM baseline as a shipped variant — the ONNX export agrees
with LightGBM through the edge's own ONNX runtime, and it ships (first) only when it forecasts better."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest

from cloud.training.gates import run_variant
from cloud.training.pipeline import choose_model
from models.contract import CAT_FEATURES, NUM_FEATURES
from models.features import Encoded
from models.variants import NAME_PATTERN, VARIANTS, spec


def _booster(seed: int, rows: int = 6000, rounds: int = 60):
    """LightGBM on [cat as float, num] with categorical id columns, learning a target that needs both."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 30, (rows, len(CAT_FEATURES))).astype(np.int32)
    num = rng.normal(size=(rows, len(NUM_FEATURES))).astype(np.float32)
    y = 1.5 + np.sin(cat[:, 0]) + (cat[:, 1] % 4) * 0.5 + num[:, 0] - 0.7 * num[:, 3] + rng.normal(0, 0.1, rows)
    x = np.concatenate([cat.astype(np.float32), num], axis=1)
    params = {"objective": "regression", "num_leaves": 31, "min_data_in_leaf": 20, "verbose": -1, "seed": seed}
    booster = lgb.train(params, lgb.Dataset(x, y, categorical_feature=list(range(len(CAT_FEATURES)))), rounds)
    return booster, Encoded(cat, num), x


@pytest.mark.parametrize("seed", [1, 7])
def test_onnx_export_agrees_with_lightgbm_through_the_edge_runtime(seed):
    from cloud.training.export import export_lightgbm

    booster, enc, x = _booster(seed)
    data = export_lightgbm(booster)
    got = run_variant("onnx-lightgbm", data, enc)  # edge.runtimes.onnx: inputs found by name, as on a device
    want = np.maximum(booster.predict(x), 0.0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (want == 0).any() or (booster.predict(x) >= 0).all()  # the clip is the baseline's
    # categorical splits survived: changing only an id column changes the forecast as LightGBM says
    moved = Encoded(np.where(np.arange(len(CAT_FEATURES)) == 0, (enc.cat + 1) % 30, enc.cat).astype(np.int32), enc.num)
    np.testing.assert_allclose(
        run_variant("onnx-lightgbm", data, moved),
        np.maximum(booster.predict(np.concatenate([moved.cat.astype(np.float32), moved.num], axis=1)), 0.0),
        atol=1e-4,
    )


def test_a_booster_of_another_width_is_refused():
    from cloud.training.export import export_lightgbm

    rng = np.random.default_rng(0)
    booster = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(rng.normal(size=(500, 5)), rng.normal(size=500)), 5)
    with pytest.raises(ValueError, match="5 features"):
        export_lightgbm(booster)


def test_the_variant_table_names_it_and_the_manifest_accepts_it():
    import re

    assert spec("onnx-lightgbm").source == "lightgbm" and spec("onnx-lightgbm").runtimes == ("onnxruntime",)
    assert all(v.source == "keras" for n, v in VARIANTS.items() if n != "onnx-lightgbm")
    assert re.match(NAME_PATTERN, "onnx-lightgbm") and not re.match(NAME_PATTERN, "onnx-xgboost")


def _metrics(lgb_score: float, int8: float = 0.60, lgb_by_type: float | None = None):
    m = {n: {"nwrmsle": 0.61} for n in ("tflite-fp32", "onnx-fp32")}
    m["tflite-int8"] = {"nwrmsle": int8}
    m["onnx-lightgbm"] = m["baseline-lightgbm"] = {"nwrmsle": lgb_score}
    by_type = {"baseline-lightgbm": {"A": lgb_score, "B": lgb_by_type if lgb_by_type is not None else lgb_score}}
    return m, by_type


ORDER = ["tflite-int8", "tflite-fp32", "onnx-fp32", "onnx-lightgbm"]


def test_lightgbm_leads_only_when_it_beats_what_a_device_would_run():
    # better than tflite-int8 (the first Keras variant): first
    order, why = choose_model(ORDER, *_metrics(0.59), policy="if_better")
    assert order == ["onnx-lightgbm", "tflite-int8", "tflite-fp32", "onnx-fp32"] and why["shipped_model"] == "lightgbm"
    assert why["compared_with"] == "tflite-int8"
    # worse (or tied): not shipped at all, or last when the recipe says always
    for score in (0.60, 0.605):
        order, why = choose_model(ORDER, *_metrics(score), policy="if_better")
        assert order == ORDER[:-1] and why["shipped_model"] == "keras" and "not better than tflite-int8" in why["reason"]
    order, _ = choose_model(ORDER, *_metrics(0.605), policy="always")
    assert order == ORDER
    # better overall but one store type over 1.5x the overall: the store-type gate keeps it out
    order, why = choose_model(ORDER, *_metrics(0.59, lgb_by_type=0.59 * 1.6), policy="if_better")
    assert "onnx-lightgbm" not in order and "store-type" in why["reason"]
    # not exported (or failed its parity gate): the Keras order as it was
    assert choose_model(ORDER[:-1], *_metrics(0.5), policy="if_better")[0] == ORDER[:-1]

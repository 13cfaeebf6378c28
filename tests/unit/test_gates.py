"""The gates decide what ships; their verdicts must say why in numbers."""

import numpy as np

from cloud.training.gates import baseline_gate, parity_gate, score
from models.recipes import Tolerance, load_recipe


def test_baseline_gate_passes_only_when_every_baseline_is_beaten():
    metrics = {"keras": {"nwrmsle": 0.50}, "baseline-rf": {"nwrmsle": 0.61}, "baseline-ma-dow": {"nwrmsle": 0.55}}
    ok = baseline_gate(metrics)
    assert ok.passed and "baseline-ma-dow 0.5500" in ok.message
    metrics["baseline-ma-dow"]["nwrmsle"] = 0.49
    bad = baseline_gate(metrics)
    assert not bad.passed
    assert bad.message == "model NWRMSLE 0.5000 does not beat baseline-ma-dow 0.4900"
    assert bad.figures["baseline-ma-dow_nwrmsle"] == 0.49


def test_a_tie_does_not_beat_a_baseline():
    assert not baseline_gate({"keras": {"nwrmsle": 0.5}, "baseline-rf": {"nwrmsle": 0.5}}).passed


def test_parity_gate_numbers_and_reasons():
    rng = np.random.default_rng(0)
    y = rng.random(1000).astype(np.float32) * 3
    keras = y + rng.normal(0, 0.3, 1000).astype(np.float32)
    per = rng.random(1000) < 0.3
    tol = Tolerance(max_nwrmsle_increase=0.01, max_p99_abs_diff=0.05)
    same = parity_gate("tflite-fp32", keras, keras.copy(), y, per, tol)
    assert same.passed and same.figures["p99_abs_diff"] == 0.0 and same.figures["nwrmsle_increase"] == 0.0
    noisy = keras + rng.normal(0, 0.2, 1000).astype(np.float32)
    verdict = parity_gate("tflite-int8", keras, noisy, y, per, tol)
    assert not verdict.passed
    assert verdict.message.startswith("tflite-int8 not shipped: ")
    assert "p99 |diff|" in verdict.message and "exceeds 0.05" in verdict.message
    assert verdict.figures["p99_abs_diff"] > 0.05 and verdict.figures["tolerance_p99_abs_diff"] == 0.05


def test_score_clips_negative_predictions_at_zero_units():
    y = np.log1p(np.array([0.0, 2.0]))
    assert score(y, np.array([-1.0, np.log1p(2.0)]), np.array([False, False]))["nwrmsle"] == 0.0


def test_recipe_has_a_tolerance_for_every_variant():
    from models.recipes import VARIANTS

    recipe = load_recipe()
    assert set(recipe.tolerances) == set(VARIANTS)
    assert set(recipe.variant_preference) == set(VARIANTS)

"""Quality gates: the model must beat the baselines, and every exported variant must agree with it.

The parity gate runs each variant through the runtime an edge device will use (the agent's own
LiteRT and ONNX Runtime plugins, :mod:`edge.runtimes`) on the whole validation split, and ships it
only when both its NWRMSLE degradation and its p99 divergence from Keras stay within the recipe's
tolerances. The verdict says why in numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cloud.training.metrics import nwrmsle_log, r2
from models.features import Encoded, target_inverse
from models.recipes import Tolerance
from models.variants import spec

__all__ = ["GateError", "Verdict", "baseline_gate", "parity_gate", "run_variant", "score"]

logger = logging.getLogger(__name__)


class GateError(RuntimeError):
    """A gate failed: the model is not shipped."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str
    figures: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "message": self.message, **self.figures}


def score(log_true: np.ndarray, log_pred: np.ndarray, perishable: np.ndarray) -> dict[str, float]:
    """NWRMSLE plus R² in log1p space (``r2``) and in units (``r2_units``)."""
    log_pred = np.maximum(np.asarray(log_pred, dtype=np.float64), 0.0)
    return {
        "nwrmsle": nwrmsle_log(log_true, log_pred, perishable),
        "r2": r2(log_true, log_pred),
        "r2_units": r2(target_inverse(log_true), target_inverse(log_pred)),
    }


def baseline_gate(metrics: dict[str, dict[str, float]], model: str = "keras") -> Verdict:
    """Pass only if ``model`` has a lower NWRMSLE than every ``baseline-*`` entry."""
    ours = metrics[model]["nwrmsle"]
    baselines = {k: v["nwrmsle"] for k, v in metrics.items() if k.startswith("baseline-")}
    losers = {k: v for k, v in baselines.items() if ours >= v}
    figures = {f"{k}_nwrmsle": v for k, v in baselines.items()} | {"model_nwrmsle": ours}
    if losers:
        worst = ", ".join(f"{k} {v:.4f}" for k, v in sorted(losers.items()))
        return Verdict(False, f"model NWRMSLE {ours:.4f} does not beat {worst}", figures)
    best = min(baselines.items(), key=lambda kv: kv[1])
    return Verdict(True, f"model NWRMSLE {ours:.4f} beats every baseline (best {best[0]} {best[1]:.4f})", figures)


def run_variant(variant: str, model_bytes: bytes, x: Encoded, threads: int = 1) -> np.ndarray:
    """Predictions (log1p) of one exported variant through the edge runtime that will serve it."""
    from edge.runtimes import available_runtimes, get_runtime, runtime_for_variant

    available = available_runtimes()
    name = runtime_for_variant(variant, available)
    if name is None:
        raise GateError(f"no edge runtime can run {variant} here: {available}")
    suffix = spec(variant).suffix
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, f"model{suffix}")
        path.write_bytes(model_bytes)
        runtime = get_runtime(name)(path, threads=threads)
        runtime.load()
        try:
            return np.asarray(runtime.infer(x.as_feed()), dtype=np.float32).reshape(-1)
        finally:
            runtime.close()


def parity_gate(
    variant: str,
    keras_pred: np.ndarray,
    variant_pred: np.ndarray,
    log_true: np.ndarray,
    perishable: np.ndarray,
    tolerance: Tolerance,
    reference: str = "Keras",
) -> Verdict:
    """Compare a variant's validation predictions with those of the model it was exported from
    (``reference``: Keras, or LightGBM for ``onnx-lightgbm``) against the recipe's tolerance."""
    ref = score(log_true, keras_pred, perishable)["nwrmsle"]
    got = score(log_true, variant_pred, perishable)["nwrmsle"]
    diff = np.abs(np.asarray(variant_pred, np.float64) - np.asarray(keras_pred, np.float64))
    increase = (got - ref) / ref if ref > 0 else 0.0
    figures = {
        "nwrmsle": got,
        "nwrmsle_increase": increase,
        "p99_abs_diff": float(np.percentile(diff, 99)),
        "max_abs_diff": float(diff.max()),
        "tolerance_nwrmsle_increase": tolerance.max_nwrmsle_increase,
        "tolerance_p99_abs_diff": tolerance.max_p99_abs_diff,
    }
    problems = []
    if increase > tolerance.max_nwrmsle_increase:
        problems.append(
            f"NWRMSLE {got:.4f} is {increase:+.2%} against {reference} {ref:.4f} (allowed +{tolerance.max_nwrmsle_increase:.2%})"
        )
    if figures["p99_abs_diff"] > tolerance.max_p99_abs_diff:
        problems.append(
            f"p99 |diff| {figures['p99_abs_diff']:.4g} in log1p space exceeds {tolerance.max_p99_abs_diff:.4g}"
        )
    if problems:
        return Verdict(False, f"{variant} not shipped: " + "; ".join(problems), figures)
    return Verdict(
        True,
        f"{variant} agrees with {reference}: NWRMSLE {increase:+.3%}, p99 |diff| {figures['p99_abs_diff']:.2g}",
        figures,
    )

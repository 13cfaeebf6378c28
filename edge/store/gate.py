"""The on-device gate: before a new model is activated, it must score on THIS device what the
trainer measured.

The bundle carries a holdout slice of the validation split (``holdout.npz``: the encoded inputs
``cat`` and ``num``, the target ``y`` in log1p space, the Kaggle ``weight`` 1.25/1.00, and each
shipped variant's cloud predictions ``pred_<variant>`` with ``-`` as ``_``, plus ``pred_keras``).
The gate runs the slice through the runtime that will serve (same variant, same providers, same
threads) and compares with the signed manifest:

- NWRMSLE (:func:`models.metrics.weighted_rmse_log`, the formula the trainer's gates use, on
  predictions clipped at 0 as they are there) may exceed the variant's ``holdout_nwrmsle`` by at
  most ``margin`` (relative, default 2 %);
- the p99 of |device prediction − cloud prediction of the same variant| may not exceed the recipe's
  ``tolerances[<variant>].max_p99_abs_diff`` (``manifest.parameters``).

A model that fails is never activated; the agent reports the numbers (``gate_failed`` event,
``state.last_update``, ``edgeship_gate_runs_total{result="failed"}``). A bundle without the
reference numbers fails too unless ``require=False`` (then the run is ``skipped``)::

    result = gate_predictor(predictor, margin=0.02)
    if not result.passed:
        raise GateFailed(result)
    result.figures()   # {"nwrmsle": 0.52, "expected_nwrmsle": 0.52, "p99_abs_diff": 0.0, ...}
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from models.bundle import BundleError, VerifiedBundle
from models.features import Encoded
from models.holdout import Holdout, HoldoutError, pred_key, read_holdout
from models.metrics import weighted_rmse_log
from models.recipes import Tolerance

__all__ = ["GateResult", "GateFailed", "Holdout", "load_holdout", "run_gate", "gate_predictor", "DEFAULT_MARGIN"]

logger = logging.getLogger(__name__)

#: Allowed relative NWRMSLE increase over the manifest's holdout figure.
DEFAULT_MARGIN = 0.02
#: Absolute slack for float noise when the expected figures are exactly zero.
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class GateResult:
    """One gate run: the verdict and every number behind it."""

    result: Literal["passed", "failed", "skipped"]
    variant: str
    runtime: str
    rows: int
    nwrmsle: float | None = None
    expected_nwrmsle: float | None = None
    max_nwrmsle: float | None = None
    p99_abs_diff: float | None = None
    max_p99_abs_diff: float | None = None
    max_abs_diff: float | None = None
    reference: str | None = None  # which cloud predictions parity was measured against
    seconds: float = 0.0
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.result != "failed"

    @property
    def message(self) -> str:
        if self.problems:
            return f"on-device gate {self.result} for {self.variant} ({self.runtime}): " + "; ".join(self.problems)
        return (
            f"on-device gate passed for {self.variant} ({self.runtime}) on {self.rows} rows: NWRMSLE "
            f"{self.nwrmsle:.4f} (manifest {self.expected_nwrmsle:.4f}), p99 |diff| {self.p99_abs_diff:.2g}"
        )

    def numbers(self) -> dict[str, float]:
        """Only the numeric figures (for ``UpdateOutcome.figures``)."""
        return {k: float(v) for k, v in self.figures().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def figures(self) -> dict[str, Any]:
        """The numbers, for events, state and logs (None values left out)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "problems"}
        out["seconds"] = round(self.seconds, 6)
        if self.problems:
            out["problems"] = list(self.problems)
        return out


class GateFailed(BundleError):
    """The on-device gate refused the model (reason ``gate_failed``); ``result`` has the numbers."""

    def __init__(self, result: GateResult) -> None:
        super().__init__("gate_failed", result.message)
        self.result = result


def load_holdout(bundle: VerifiedBundle) -> Holdout:
    """Read the bundle's holdout slice (:mod:`models.holdout`); :class:`BundleError` (``bad_holdout``) if unusable."""
    try:
        return read_holdout(bundle.path(bundle.manifest.holdout).read_bytes())
    except (OSError, HoldoutError) as exc:
        raise BundleError("bad_holdout", f"{bundle.manifest.holdout} {exc}") from exc


def _tolerance(bundle: VerifiedBundle, variant: str) -> float | None:
    """The variant's parity tolerance from the recipe the trainer used (:class:`models.recipes.Tolerance`);
    None when the manifest carries none or an invalid one (the gate then says so)."""
    raw = (bundle.manifest.parameters.get("tolerances") or {}).get(variant)
    try:
        return Tolerance.model_validate(raw).max_p99_abs_diff if raw is not None else None
    except ValidationError:
        return None


def run_gate(
    bundle: VerifiedBundle,
    variant: str,
    runtime: str,
    infer: Callable[[Encoded], np.ndarray],
    *,
    margin: float = DEFAULT_MARGIN,
    require: bool = True,
) -> GateResult:
    """Run ``bundle``'s holdout through ``infer`` (log1p outputs) and judge it; see the module doc."""
    t0 = time.perf_counter()
    holdout = load_holdout(bundle)
    try:
        expected = float(bundle.manifest.variant(variant).metrics["holdout_nwrmsle"])
    except KeyError:
        expected = None
    reference = variant if variant in holdout.preds else ("keras" if "keras" in holdout.preds else None)
    tolerance = _tolerance(bundle, variant)
    missing = [
        what
        for what, value in (
            (f"variants[{variant}].metrics.holdout_nwrmsle", expected),
            (f"holdout {pred_key(variant)} (or pred_keras)", reference),
            (f"parameters.tolerances.{variant}.max_p99_abs_diff", tolerance),
        )
        if value is None
    ]
    base = {"variant": variant, "runtime": runtime, "rows": len(holdout)}
    if missing:
        problems = (f"the bundle lacks the gate's reference numbers: {', '.join(missing)}",)
        return GateResult(result="failed" if require else "skipped", problems=problems, seconds=time.perf_counter() - t0, **base)
    assert expected is not None and reference is not None and tolerance is not None
    try:
        pred = np.asarray(infer(Encoded(holdout.cat, holdout.num)), np.float64).reshape(-1)
    except Exception as exc:  # the runtime failing on the slice is a failed gate, not a crash
        return GateResult(
            result="failed", problems=(f"inference on the holdout failed: {exc}",), seconds=time.perf_counter() - t0, **base
        )
    if pred.shape != holdout.y.shape or not np.all(np.isfinite(pred)):
        return GateResult(
            result="failed",
            problems=(f"the model gave {pred.shape} outputs, not {len(holdout)} finite values",),
            seconds=time.perf_counter() - t0,
            **base,
        )
    got = weighted_rmse_log(holdout.y, np.maximum(pred, 0.0), holdout.weight)
    diff = np.abs(pred - holdout.preds[reference])
    p99, worst = float(np.percentile(diff, 99)), float(diff.max())
    limit = expected * (1.0 + margin) + _EPS
    problems = []
    if not math.isfinite(got) or got > limit:
        problems.append(f"NWRMSLE {got:.4f} exceeds the manifest's {expected:.4f} by more than {margin:.1%} (limit {limit:.4f})")
    if p99 > tolerance + _EPS:
        problems.append(f"p99 |diff| {p99:.4g} from the cloud's {reference} predictions exceeds {tolerance:.4g}")
    result = GateResult(
        result="failed" if problems else "passed",
        nwrmsle=got,
        expected_nwrmsle=expected,
        max_nwrmsle=limit,
        p99_abs_diff=p99,
        max_p99_abs_diff=tolerance,
        max_abs_diff=worst,
        reference=reference,
        seconds=time.perf_counter() - t0,
        problems=tuple(problems),
        **base,
    )
    return result


#: The holdout is inferred in chunks of this many rows: a runtime holds the GIL for a whole invoke,
#: and the gate runs while the serving model answers requests in the same process.
GATE_CHUNK_ROWS = 256


def chunked(infer: Callable[[Encoded], np.ndarray], rows: int = GATE_CHUNK_ROWS) -> Callable[[Encoded], np.ndarray]:
    """``infer`` run ``rows`` rows at a time (the same outputs: rows are independent)."""

    def run(enc: Encoded) -> np.ndarray:
        n = len(enc.cat)
        if n <= rows:
            return infer(enc)
        parts = [infer(Encoded(enc.cat[i : i + rows], enc.num[i : i + rows])) for i in range(0, n, rows)]
        return np.concatenate([np.asarray(part).reshape(-1) for part in parts])

    return run


def gate_predictor(predictor: Any, *, margin: float = DEFAULT_MARGIN, require: bool = True) -> GateResult:
    """:func:`run_gate` on a loaded :class:`edge.serving.predictor.Predictor` (its variant, runtime, providers)."""
    result = run_gate(
        predictor.bundle, predictor.variant, predictor.runtime_name, chunked(predictor.infer_encoded), margin=margin,
        require=require,
    )  # fmt: skip
    log = logger.info if result.result == "passed" else logger.warning
    log(result.message, extra={"version": predictor.version, **result.figures()})
    return result

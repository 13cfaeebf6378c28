"""``edgeship train``: data → model → baselines gate → export → parity gate → signed bundle → report.

Everything the run measured lands in ``<out>/report.json``: ``metrics`` maps ``keras``, every
variant and both baselines to at least ``nwrmsle`` and ``r2``; ``gates`` holds each verdict and why;
``bundle`` names the bundle's path (null when a gate stopped the run); ``caps`` records every scale
cap of the recipe (limit, rows available, rows used, applied) — :mod:`cloud.training.caps`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cloud.training import baselines
from cloud.training.caps import Caps
from cloud.training.bundle import bundle_filename, write_bundle
from cloud.training.gates import GateError, baseline_gate, parity_gate, run_variant, score
from cloud.training.metrics import weights
from cloud.training.prepare import impute_promo, prepare
from cloud.training.slices import group_nwrmsle, slice_labels, slices, store_type_gate
from models.coldstart import Fallback
from models.contract import LAG_WINDOW_DAYS, NUM_FEATURES
from models.features import Encoded
from models.holdout import write_holdout
from models.fsutil import atomic_write_bytes
from models.manifest import ContractInfo, canonical_json
from models.recipes import VARIANTS, Recipe, Tolerance, load_recipe
from models.reference import reference_stats
from models.signing import load_private_key
from models.variants import spec

__all__ = ["TrainResult", "train", "next_version", "code_revision", "choose_model"]

logger = logging.getLogger(__name__)

#: Parity tolerance of a variant the recipe names none for (a recipe from before that variant existed).
DEFAULT_TOLERANCE = Tolerance(max_nwrmsle_increase=0.001, max_p99_abs_diff=0.001)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    report_path: Path
    report: dict[str, Any]
    bundle: Path | None


def code_revision() -> str:
    """git revision of this checkout (``+dirty`` when it has uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def next_version(out_dir: Path, name: str) -> int:
    """One more than the highest version of ``name`` among the bundles already in ``out_dir``."""
    highest = 0
    for path in out_dir.glob("*.bundle.tar"):
        try:
            with tarfile.open(path, "r:") as tar:
                fh = tar.extractfile("manifest.json")
                meta = json.loads(fh.read()) if fh else {}
        except (OSError, KeyError, tarfile.TarError, ValueError):
            logger.warning("ignoring unreadable bundle %s when numbering versions", path)
            continue
        if meta.get("name") == name:
            highest = max(highest, int(meta.get("version", 0)))
    return highest + 1


def _oracle_truth(
    data_dir: Path, grid: pd.DataFrame, days: pd.DatetimeIndex
) -> tuple[np.ndarray, np.ndarray] | None:
    """True promotion flags and oracle log-demand [pairs, days] of the validation days, from the
    synthetic generator's ``oracle.csv`` (None when the folder has none, as real data does not)."""
    path = data_dir / "oracle.csv"
    if not path.is_file():
        return None
    oracle = pd.read_csv(path, parse_dates=["date"])
    oracle = oracle[oracle["date"].isin(days)]
    pairs = grid[["store_nbr", "item_nbr"]].drop_duplicates().reset_index(drop=True)
    full = pd.MultiIndex.from_product([range(len(pairs)), days], names=["p", "date"]).to_frame(index=False)
    full["store_nbr"] = pairs["store_nbr"].to_numpy()[full["p"]]
    full["item_nbr"] = pairs["item_nbr"].to_numpy()[full["p"]]
    full = full.merge(oracle, how="left", on=["date", "store_nbr", "item_nbr"])
    if full["oracle_log"].isna().any():
        logger.warning("oracle.csv lacks %d validation cells; not used", int(full["oracle_log"].isna().sum()))
        return None
    shape = (len(pairs), len(days))
    promo = full["onpromotion"].astype(bool).to_numpy().reshape(shape).astype(np.float32)
    return promo, full["oracle_log"].to_numpy(np.float32).reshape(shape)


def _grid_promo(grid: pd.DataFrame, prep: Any) -> np.ndarray:
    """The flags as train.csv gives them (rows only on days with sales), before imputation."""
    n = len(prep.matrix.store_nbr)
    return grid["onpromotion"].fillna(False).to_numpy(bool).reshape(n, -1).astype(np.float32)


def _oracle_gaps(metrics: dict[str, dict[str, float]]) -> None:
    """Each model's NWRMSLE gap to the oracle (relative), when the oracle is known."""
    if "oracle" not in metrics:
        return
    best = metrics["oracle"]["nwrmsle"]
    for name, m in metrics.items():
        if name != "oracle":
            m["oracle_gap"] = (m["nwrmsle"] - best) / best


def choose_model(
    order: list[str], metrics: dict[str, dict[str, float]], store_type: dict[str, dict[str, float]], *, policy: str
) -> tuple[list[str], dict[str, Any]]:
    """Where ``onnx-lightgbm`` goes in the shipped ``order`` (a bundle's order is what a device tries).

    It leads when it forecasts better (validation NWRMSLE) than the Keras variant a device would run
    by default (the first shipped Keras export) and passes the store-type gate; otherwise it is
    dropped (``policy`` ``if_better``) or shipped last (``always``). Returns the order and the reasons."""
    keras_first = next((n for n in order if spec(n).source == "keras"), None)
    if "onnx-lightgbm" not in order:
        return order, {"shipped_model": "keras", "reason": "onnx-lightgbm not exported or not in agreement with LightGBM"}
    rest = [n for n in order if n != "onnx-lightgbm"]
    lgb = metrics["onnx-lightgbm"]["nwrmsle"]
    fair = store_type_gate(metrics["baseline-lightgbm"]["nwrmsle"], store_type.get("baseline-lightgbm", {})).passed
    against = None if keras_first is None else metrics[keras_first]["nwrmsle"]
    better = fair and (against is None or lgb < against)
    facts = {"onnx-lightgbm_nwrmsle": lgb, "compared_with": keras_first, "compared_nwrmsle": against, "store_type_gate": fair}
    if better:
        return ["onnx-lightgbm", *rest], {"shipped_model": "lightgbm", "reason": "forecasts better", **facts}
    why = "fails the store-type gate" if not fair else f"not better than {keras_first}"
    if policy == "always":
        return [*rest, "onnx-lightgbm"], {"shipped_model": "keras", "reason": f"onnx-lightgbm shipped last: {why}", **facts}
    return rest, {"shipped_model": "keras", "reason": f"onnx-lightgbm not shipped: {why}", **facts}


def _write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode(), mode=0o644)


def train(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    recipe: Recipe | None = None,
    start: str | None = None,
    end: str | None = None,
    stores: list[int] | None = None,
    version: int | None = None,
    progress: bool = True,
    feedback: str | os.PathLike[str] | None = None,
    lineage: dict[str, Any] | None = None,
    track: bool = True,
    runs_dir: str | os.PathLike[str] | None = None,
    registry: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Run the whole training pipeline. Raises :class:`GateError` (after writing the report) if a gate fails.

    ``lineage``: extra facts merged into the manifest's ``lineage.dataset_source`` (e.g. ``{"fleet": {...}}``
    from :mod:`cloud.training.retrain`: the base data's and the fleet actuals' hashes).

    With ``track`` (the default) the version comes from the one registry (:mod:`cloud.tracking.registry`:
    MLflow's when ``MLFLOW_TRACKING_URI`` is set, else a local file; ``registry`` names another file)
    and the run is recorded in the runs folder (:mod:`cloud.tracking.runs`; ``runs_dir``), and in MLflow
    when configured. ``track=False``: the version is one more than the bundles in ``out_dir``, nothing recorded.
    """
    recipe = recipe or load_recipe()
    kwargs = dict(recipe=recipe, start=start, end=end, stores=stores, progress=progress, feedback=feedback, lineage=lineage)
    if not track:
        return _train(data_dir, out_dir, key_path, version=version, **kwargs)
    from cloud.tracking.session import TrackedRun

    load_private_key(key_path)  # a bad key reserves no version
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {
        "recipe": recipe.model_dump(mode="json"),
        "data": {"folder": str(Path(data_dir).resolve()), "start": start, "end": end, "stores": stores,
                 "feedback": None if feedback is None else str(Path(feedback).resolve())},
    }
    with TrackedRun.start(
        recipe.name, out, params=params, code_revision=code_revision(), requested=version,
        floor=next_version(out, recipe.name), runs_dir=runs_dir, registry=registry,
    ) as run:  # fmt: skip
        result = _train(data_dir, out_dir, key_path, version=run.version, **kwargs)
    result.report["run_id"] = run.id
    return result


def _train(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    recipe: Recipe | None = None,
    start: str | None = None,
    end: str | None = None,
    stores: list[int] | None = None,
    version: int | None = None,
    progress: bool = True,
    feedback: str | os.PathLike[str] | None = None,
    lineage: dict[str, Any] | None = None,
) -> TrainResult:
    """The pipeline itself (``version``: given, or one more than the bundles in ``out_dir``)."""
    from cloud.data import loader as favorita

    recipe = recipe or load_recipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_key = load_private_key(key_path)  # fail before hours of work, not after
    version = version or next_version(out, recipe.name)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"model": recipe.name, "version": version, "bundle": None, "gates": {}, "metrics": {}}
    t_all = time.perf_counter()

    t = time.perf_counter()
    loaded = favorita.load(data_dir, start=start, end=end, stores=stores, progress=progress)
    train_rows, feedback_info = loaded.train, None
    if feedback is not None:  # staff-entered actuals as labelled rows (cloud.feedback.training)
        from cloud.feedback.training import merge_feedback

        train_rows, feedback_info = merge_feedback(train_rows, feedback, items=loaded.items)
        report["feedback"] = feedback_info
    rows, cleaning = favorita.clean(train_rows)
    last = rows["date"].max()
    # Only the days the splits need: lag window + forecast offsets + training + validation days.
    needed = LAG_WINDOW_DAYS + recipe.serving.horizon_days + recipe.validation_days + recipe.train_days
    first = max(rows["date"].min(), last - pd.Timedelta(days=needed - 1))
    rows = rows[rows["date"] >= first]
    grid = favorita.daily_grid(rows, first, last)
    horizon = recipe.serving.horizon_days
    day_index = pd.date_range(first, last, freq="D")
    # days whose onpromotion is empty in every row (the real file's early years): a third state
    flag_na = rows["onpromotion"].isna().groupby(rows["date"]).all() if "onpromotion" in rows else pd.Series(dtype=bool)
    unknown_days = np.flatnonzero(day_index.isin(flag_na[flag_na].index))
    truth = _oracle_truth(Path(data_dir), grid, day_index[-recipe.validation_days :])
    prep = prepare(
        grid,
        loaded.stores,
        loaded.items,
        loaded.holidays,
        validation_days=recipe.validation_days,
        train_days=recipe.train_days,
        horizon=horizon,
        unknown_promo_days=unknown_days,
        valid_promo=None if truth is None else truth[0],
    )
    timings["data_seconds"] = time.perf_counter() - t
    report["dataset"] = {"version": loaded.version, "cleaning": cleaning.as_dict(), **prep.summary()}
    report["dataset"]["horizon_days"] = horizon
    report["dataset"]["cold_start_calibration"] = prep.fallback_calibration
    report["dataset"]["unknown_promotion_days"] = int(len(unknown_days))
    report["dataset"]["validation_flags"] = "true (oracle.csv)" if truth is not None else "imputed from other stores"
    logger.info("data %s: %s", loaded.version[:12], prep.summary())

    valid = prep.valid
    metrics: dict[str, dict[str, float]] = report["metrics"]
    preds: dict[str, np.ndarray] = {}
    caps = Caps()
    report["caps"] = caps.as_dict()  # filled in below; written with every report
    b = recipe.baselines
    t = time.perf_counter()
    rf = baselines.random_forest(prep, n_estimators=b.rf_n_estimators, seed=recipe.seed, max_rows=b.rf_max_rows, caps=caps)
    preds["baseline-rf"] = np.log1p(rf).astype(np.float32)
    timings["baseline_rf_seconds"] = time.perf_counter() - t
    preds["baseline-ma-dow"] = baselines.moving_average_dow(prep, ma_days=recipe.baselines.ma_days)
    preds["baseline-mean14"] = baselines.mean14(prep)
    t_lgb = time.perf_counter()
    booster = None  # shipped as onnx-lightgbm when it forecasts better (recipe.lightgbm_variant)
    try:
        preds["baseline-lightgbm"], report["lightgbm"], booster = baselines.lightgbm(
            prep, seed=recipe.seed, max_rounds=b.lightgbm_max_rounds, threads=b.lightgbm_threads,
            max_rows=b.lightgbm_max_rows, caps=caps,
        )  # fmt: skip
    except ImportError:
        logger.warning("lightgbm is not installed (pip install 'edgeship[cloud]'): baseline-lightgbm skipped")
    timings["baseline_lightgbm_seconds"] = time.perf_counter() - t_lgb
    if truth is not None:
        preds["oracle"] = truth[1][valid.pair, valid.day - int(valid.day.min())]
    for name, pred in preds.items():
        metrics[name] = score(valid.y, pred, valid.perishable)
    timings["baselines_seconds"] = time.perf_counter() - t
    report["caps"] = caps.as_dict()

    from cloud.training.train import fit, predict_log

    t = time.perf_counter()
    model = fit(
        recipe, prep.tables.cardinalities(), prep.train.x, prep.train.y, prep.train.perishable, progress=progress, caps=caps
    )
    timings["train_seconds"] = time.perf_counter() - t
    report["caps"] = caps.as_dict()
    t = time.perf_counter()
    keras_pred = predict_log(model, valid.x)
    keras_path = out / f"{recipe.name}-v{version}.keras"
    model.save(keras_path)  # kept beside the bundle for lineage, debugging and benchmarks; never shipped
    report["keras_model"] = str(keras_path)
    if booster is not None:  # LightGBM beside it, likewise (and shipped as onnx-lightgbm when it forecasts better)
        lgb_path = out / f"{recipe.name}-v{version}.lightgbm.txt"
        booster.save_model(str(lgb_path))
        report["lightgbm_model"] = str(lgb_path)
    metrics["keras"] = score(valid.y, keras_pred, valid.perishable)
    preds["keras"] = keras_pred
    if truth is not None:  # the residual promotion effect: the same model scored with the grid's flags
        leaky = impute_promo(_grid_promo(grid, prep), prep.matrix.sales > 0, prep.matrix.item_nbr, unknown_days)
        num = valid.x.num.copy()
        num[:, NUM_FEATURES.index("onpromotion")] = np.clip(leaky[valid.pair, valid.day], 0.0, 1.0)
        x_leaky = Encoded(valid.x.cat, num)  # the same rows, only the flags differ
        metrics["keras@imputed-flags"] = score(valid.y, predict_log(model, x_leaky), valid.perishable)

    # the gate: beat rf, ma-dow and mean14; LightGBM is the bar reported beside it (report.json, BENCHMARKS.md)
    gate_metrics = {k: v for k, v in metrics.items() if k not in ("oracle", "baseline-lightgbm") and "@" not in k}
    verdict = baseline_gate(gate_metrics)
    report["gates"]["baselines"] = verdict.as_dict()
    report["slices"] = slices(prep, preds)
    st = store_type_gate(metrics["keras"]["nwrmsle"], report["slices"]["store_type"]["keras"])
    report["gates"]["store_type"] = st.as_dict()
    timings["evaluate_seconds"] = time.perf_counter() - t
    if not st.passed and verdict.passed:
        verdict = st
    if not verdict.passed:
        report["timings"] = timings
        _oracle_gaps(metrics)
        _write_json_atomic(out / "report.json", report)
        raise GateError(f"baseline gate failed: {verdict.message}")

    from cloud.training.export import VARIANT_FILES, export_all

    t = time.perf_counter()
    rng = np.random.default_rng(recipe.seed)
    calib_idx = rng.choice(len(prep.train), min(recipe.calibration_rows, len(prep.train)), replace=False)
    calibration = Encoded(prep.train.x.cat[np.sort(calib_idx)], prep.train.x.num[np.sort(calib_idx)])
    exported = export_all(model, calibration, progress=progress)
    if booster is not None and recipe.lightgbm_variant != "never":
        from cloud.training.export import export_lightgbm

        try:
            exported["onnx-lightgbm"] = export_lightgbm(booster)
        except ImportError:
            logger.warning("onnxmltools is not installed (pip install 'edgeship[cloud]'): onnx-lightgbm not exported")
    timings["export_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    holdout_idx = np.sort(rng.choice(len(valid), min(recipe.holdout_rows, len(valid)), replace=False))
    # parity is a comparison with Keras on the same rows: a large random sample (with the holdout) suffices
    prows = caps.sample("parity", len(valid), limit=recipe.parity_max_rows, seed=recipe.seed, keep=holdout_idx)
    report["caps"] = caps.as_dict()
    prows = np.arange(len(valid)) if prows is None else prows
    px, py, pper = Encoded(valid.x.cat[prows], valid.x.num[prows]), valid.y[prows], valid.perishable[prows]
    pkeras, phold = keras_pred[prows], np.searchsorted(prows, holdout_idx)
    horizon_labels = slice_labels(prep)["horizon_day"][prows]
    shipped: dict[str, bytes] = {}
    variant_meta: dict[str, dict[str, Any]] = {}
    variant_gates: dict[str, Any] = {}
    holdout_preds: dict[str, np.ndarray] = {"keras": keras_pred[holdout_idx]}
    for name in (n for n in VARIANTS if n in exported):
        pred = run_variant(name, exported[name], px)
        metrics[name] = score(py, pred, pper)
        report["slices"]["horizon_day"][name] = group_nwrmsle(py, pred, pper, horizon_labels)
        # each export agrees with the model it was made from: the Keras network, or LightGBM itself
        ref, ref_name = (pkeras, "Keras") if spec(name).source == "keras" else (preds["baseline-lightgbm"][prows], "LightGBM")
        tolerance = recipe.tolerances.get(name) or DEFAULT_TOLERANCE
        v = parity_gate(name, ref, pred, py, pper, tolerance, reference=ref_name)
        variant_gates[name] = {**v.as_dict(), "shipped": v.passed, "size_bytes": len(exported[name]), "rows": len(py)}
        logger.info(v.message)
        if v.passed:
            shipped[name] = exported[name]
            holdout_preds[name] = pred[phold]
            hold = score(valid.y[holdout_idx], pred[phold], valid.perishable[holdout_idx])
            variant_meta[name] = {
                **metrics[name],
                "p99_abs_diff": v.figures["p99_abs_diff"],
                "max_abs_diff": v.figures["max_abs_diff"],
                "holdout_nwrmsle": hold["nwrmsle"],
            }
    report["gates"]["parity"] = variant_gates
    timings["parity_seconds"] = time.perf_counter() - t
    if not shipped:
        report["timings"] = timings
        _write_json_atomic(out / "report.json", report)
        raise GateError("parity gate failed: no exported variant agrees with the Keras model")

    order = [n for n in recipe.variant_preference if n in shipped] + [n for n in shipped if n not in recipe.variant_preference]
    order, report["model_choice"] = choose_model(order, metrics, report["slices"]["store_type"], policy=recipe.lightgbm_variant)
    for name in set(shipped) - set(order):
        variant_gates[name].update(shipped=False, message=f"{variant_gates[name]['message']}; {report['model_choice']['reason']}")
        for table in (shipped, holdout_preds, variant_meta):
            table.pop(name, None)
    if not order:
        report["timings"] = timings
        _write_json_atomic(out / "report.json", report)
        raise GateError(f"no variant to ship: {report['model_choice']['reason']}")
    members: dict[str, bytes] = {VARIANT_FILES[n]: shipped[n] for n in order}
    members["tables.json"] = canonical_json(prep.tables.to_json())
    state = prep.matrix.state()
    members["state.npz"] = state.to_bytes()
    # cold start: group windows for the catalogue's pairs without history (models.coldstart)
    members["fallback.npz"] = Fallback.build(
        prep.tables, state.store_nbr, state.item_nbr, state.window, state.end_date, level_scale=prep.fallback_scale
    ).to_bytes()
    members["holdout.npz"] = write_holdout(
        valid.x.cat[holdout_idx], valid.x.num[holdout_idx], valid.y[holdout_idx],
        weights(valid.perishable[holdout_idx]), holdout_preds,
    )  # fmt: skip
    members["reference_stats.json"] = canonical_json(reference_stats(prep.train.x))
    manifest_fields = {
        "name": recipe.name,
        "version": version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "lineage": {
            "dataset_version": loaded.version,
            "dataset_source": json.loads(json.dumps(
                {**loaded.source, **({"feedback": feedback_info} if feedback_info else {}), **(lineage or {})}, default=str
            )),
            "train_window": prep.train_window,
            "validation_window": prep.valid_window,
            "rows": {"train": len(prep.train), "validation": len(valid), "holdout": int(len(holdout_idx))},
            "code_revision": code_revision(),
        },
        "parameters": recipe.model_dump(mode="json"),
        "metrics": metrics,
        "fallback": "fallback.npz",
        "variants": [
            {
                "name": n,
                "runtime": "litert" if n.startswith("tflite") else "onnxruntime",
                "file": VARIANT_FILES[n],
                "precision": spec(n).precision,
                "size_bytes": len(shipped[n]),
                "metrics": variant_meta[n],
            }
            for n in order
        ],
        "contract": ContractInfo.current(
            state_end_date=str(state.end_date),
            max_batch=recipe.serving.max_batch,
            horizon_days=recipe.serving.horizon_days,
        ).model_dump(),
    }
    bundle_path, manifest = write_bundle(out / bundle_filename(recipe.name, version), manifest_fields, members, private_key)
    timings["total_seconds"] = time.perf_counter() - t_all
    _oracle_gaps(metrics)
    report.update(
        {
            "bundle": str(bundle_path),
            "bundle_size_bytes": bundle_path.stat().st_size,
            "shipped_variants": order,
            "lineage": manifest.lineage.model_dump(mode="json"),
            "timings": timings,
        }
    )
    _write_json_atomic(out / "report.json", report)
    logger.info("wrote %s (%d bytes), variants %s", bundle_path, bundle_path.stat().st_size, order)
    return TrainResult(out / "report.json", report, bundle_path)

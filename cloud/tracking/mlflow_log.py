"""The run record sent to MLflow when ``MLFLOW_TRACKING_URI`` is set (optional ``mlflow`` extra:
``pip install 'edgeship[mlflow]'``, which is mlflow-skinny plus SQLAlchemy/Alembic for a
``sqlite:///`` store).

Experiment: ``$MLFLOW_EXPERIMENT_NAME``, default ``edgeship``. Params: the flattened recipe and
data arguments; metrics: ``<model>.<metric>`` (``keras.nwrmsle``, ``tflite-int8.r2``…, MLflow's key
alphabet); tags: status, model version, data hash, code revision, edgeship run id; artifacts:
``report.json`` and the run record itself (``edgeship-run.json``). The Keras model and the bundle
stay where they are (paths and sha256 in the run record).

>>> # log_run({"id": "...", "params": {...}, "metrics": {...}, ...})  # -> the MLflow run id
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloud.tracking.runs import flatten

__all__ = ["log_run", "metric_key"]

logger = logging.getLogger(__name__)
_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(key: str) -> str:
    """MLflow accepts alphanumerics, ``_ - . space /``: ``keras@imputed-flags.nwrmsle`` → ``keras_at_imputed-flags.nwrmsle``."""
    return _BAD.sub("_", key.replace("@", "_at_"))


def log_run(run: Mapping[str, Any]) -> str:
    """Log ``run`` (a :mod:`cloud.tracking.runs` record) as one MLflow run; return its id."""
    import mlflow

    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "edgeship")
    params = {metric_key(k): str(v)[:500] for k, v in flatten(run.get("params") or {}).items()}
    metrics = {
        metric_key(k): float(v)
        for k, v in flatten(run.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    }
    slices = {
        metric_key(f"slice.{k}"): float(v)
        for k, v in flatten(run.get("slices") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
    }
    tags = {
        "edgeship.run_id": run.get("id"),
        "edgeship.status": run.get("status"),
        "edgeship.model": run.get("model"),
        "edgeship.version": run.get("version"),
        "edgeship.data_hash": (run.get("data") or {}).get("hash"),
        "mlflow.source.git.commit": run.get("code_revision"),
    }
    with mlflow.start_run(run_name=f"{run.get('model')}-v{run.get('version')}") as active:
        mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})
        mlflow.log_params(params)
        if metrics or slices:
            mlflow.log_metrics({**metrics, **slices})
        mlflow.log_dict(dict(run), "edgeship-run.json")
        report = (run.get("artifacts") or {}).get("report", {}).get("path")
        if report and Path(report).is_file():
            mlflow.log_artifact(report)
        run_id = active.info.run_id
    logger.info("logged run %s to MLflow (%s) as %s", run.get("id"), mlflow.get_tracking_uri(), run_id)
    return run_id

"""Experiment tracking and model versions for ``edgeship train``.

- :mod:`cloud.tracking.runs`: one JSON file per training run (parameters, metrics, slices, data
  hash, code revision, artefacts), ``edgeship runs list | show | compare``.
- :mod:`cloud.tracking.registry`: the one place model version numbers come from (MLflow's model
  registry when ``MLFLOW_TRACKING_URI`` is set, else a locked local file).
- :mod:`cloud.tracking.mlflow_log`: the same record sent to MLflow (optional ``mlflow`` extra).
- :mod:`cloud.tracking.session`: what :func:`cloud.training.pipeline.train` wraps a run in.

Nothing here is imported by ``import cloud`` or on the device; MLflow is imported only when
``MLFLOW_TRACKING_URI`` is set.
"""

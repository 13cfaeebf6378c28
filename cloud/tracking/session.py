"""One tracked training run: reserve a version, run, record (locally always; MLflow when configured).

>>> # with TrackedRun.start("favorita-demand", out, params=..., requested=None, floor=1) as run:
>>> #     result = pipeline(..., version=run.version)
>>> # run.record  -> the dict written to <runs>/<id>.json
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from cloud.tracking.registry import RegistryError, VersionRegistry, mlflow_configured, open_registry
from cloud.tracking.runs import RunStore, new_run_id

__all__ = ["TrackedRun"]

logger = logging.getLogger(__name__)


def _artifact(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"path": str(p.resolve()), "sha256": h.hexdigest(), "size": p.stat().st_size}


class TrackedRun:
    """Reserves the version at :meth:`start`; on exit reads ``<out>/report.json`` (when this run
    wrote it) and writes the run record, then completes the version in the registry."""

    def __init__(self, model: str, out: Path, version: int, run_id: str, params: dict[str, Any], code_revision: str,
                 store: RunStore, registry: VersionRegistry) -> None:  # fmt: skip
        self.model, self.out, self.version, self.id = model, out, version, run_id
        self.params, self.code_revision = params, code_revision
        self.store, self.registry = store, registry
        self.started = time.time()
        self.record: dict[str, Any] = {}
        self.path: Path | None = None

    @classmethod
    def start(
        cls,
        model: str,
        out: str | os.PathLike[str],
        *,
        params: dict[str, Any],
        code_revision: str,
        requested: int | None = None,
        floor: int = 1,
        runs_dir: str | os.PathLike[str] | None = None,
        registry: str | os.PathLike[str] | None = None,
    ) -> TrackedRun:
        out = Path(out)
        run_id = new_run_id()
        try:
            reg = open_registry(registry)
        except ImportError as exc:
            raise RegistryError(f"MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install 'edgeship[mlflow]'): {exc}") from exc
        version = reg.reserve(model, run_id=run_id, out=str(out.resolve()), requested=requested, floor=floor)
        return cls(model, out, version, run_id, params, code_revision, RunStore(runs_dir), reg)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        exc = exc_info[1]
        from cloud.training.gates import GateError

        status = "shipped" if exc is None else ("gate_failed" if isinstance(exc, GateError) else "failed")
        try:
            self.finish(status, None if exc is None else f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - recording must never hide the run's own outcome
            logger.exception("could not record training run %s", self.id)

    def finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        report_path = self.out / "report.json"
        report: dict[str, Any] = {}
        if report_path.is_file() and report_path.stat().st_mtime >= self.started - 1:
            report = json.loads(report_path.read_text())
        bundle = _artifact(report.get("bundle"))
        artifacts = {
            "report": _artifact(report_path) if report else None,
            "keras_model": _artifact(report.get("keras_model")),
            "bundle": bundle,
        }
        self.record = {
            "id": self.id,
            "status": status,
            "error": error,
            "model": self.model,
            "version": self.version,
            "registry": {"kind": self.registry.kind, "where": str(getattr(self.registry, "path", "") or os.environ.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_REGISTRY_URI"))},
            "started_at": dt.datetime.fromtimestamp(self.started, dt.timezone.utc).isoformat(),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "params": self.params,
            "data": {"hash": (report.get("dataset") or {}).get("version"), "folder": self.params.get("data", {}).get("folder"),
                     "summary": {k: v for k, v in (report.get("dataset") or {}).items() if k != "version"}},  # fmt: skip
            "code_revision": self.code_revision,
            "metrics": report.get("metrics") or {},
            "slices": report.get("slices") or {},
            "gates": report.get("gates") or {},
            "shipped_variants": report.get("shipped_variants") or [],
            "timings": report.get("timings") or {},
            "out": str(self.out.resolve()),
            "artifacts": {k: v for k, v in artifacts.items() if v},
        }
        self.registry.complete(self.model, self.version, status=status, sha256=bundle and bundle["sha256"],
                               bundle=bundle and bundle["path"])  # fmt: skip
        if mlflow_configured():
            from cloud.tracking.mlflow_log import log_run

            try:
                self.record["mlflow_run_id"] = log_run(self.record)
            except ImportError:
                logger.warning("MLFLOW_TRACKING_URI is set but mlflow is not installed (pip install 'edgeship[mlflow]')")
        self.path = self.store.write(self.record)
        logger.info("run %s (%s v%d, %s) recorded in %s", self.id, self.model, self.version, status, self.path)
        return self.record

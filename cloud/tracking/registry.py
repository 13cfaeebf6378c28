"""Model version numbers from one registry, so two training runs never make the same version.

Which registry: MLflow's model registry when ``MLFLOW_TRACKING_URI`` (or ``MLFLOW_REGISTRY_URI``) is
set — MLflow allocates the number; otherwise a local file, ``$EDGESHIP_REGISTRY`` if set, else
``$EDGESHIP_STATE_DIR/versions.json``, else ``~/.edgeship/versions.json`` (``edgeship train
--registry FILE`` overrides). The local file is read and replaced under an exclusive ``flock`` on
``<file>.lock`` and written atomically, so concurrent runs on one machine get distinct numbers.

A number is *reserved* when a run starts (so it is known before the bundle is signed) and
*completed* when the run ends (status, bundle sha256). A run that a gate stopped leaves a gap; a
number is never handed out twice.

>>> import tempfile, pathlib
>>> reg = LocalRegistry(pathlib.Path(tempfile.mkdtemp()) / "versions.json")
>>> reg.reserve("favorita-demand", run_id="r1", out="out-a"), reg.reserve("favorita-demand", run_id="r2", out="out-b")
(1, 2)
>>> reg.complete("favorita-demand", 2, status="shipped", sha256="ab" * 32)
>>> reg.get("favorita-demand", 2)["status"]
'shipped'
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from models.fsutil import atomic_write_bytes

__all__ = ["VersionRegistry", "LocalRegistry", "MlflowRegistry", "RegistryError", "open_registry", "default_registry_path",
           "mlflow_configured"]  # fmt: skip

logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """A version cannot be reserved (already taken, or the registry refuses)."""


def mlflow_configured() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_REGISTRY_URI"))


def default_registry_path() -> Path:
    if os.environ.get("EDGESHIP_REGISTRY"):
        return Path(os.environ["EDGESHIP_REGISTRY"])
    return Path(os.environ.get("EDGESHIP_STATE_DIR") or Path.home() / ".edgeship") / "versions.json"


class VersionRegistry(Protocol):
    kind: str

    def reserve(self, model: str, *, run_id: str, out: str, requested: int | None = None, floor: int = 1) -> int: ...

    def complete(self, model: str, version: int, *, status: str, sha256: str | None = None, bundle: str | None = None) -> None: ...


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class LocalRegistry:
    """``versions.json``: ``{"models": {name: {"versions": {"1": {run_id, out, reserved_at, status, sha256, bundle}}}}}``."""

    kind = "local"

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_registry_path()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self._read()
                yield data
                atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o644)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"models": {}}
        try:
            data = json.loads(self.path.read_text())
        except ValueError as exc:
            raise RegistryError(f"{self.path}: not valid JSON ({exc}); fix or move it, versions are numbered from it") from exc
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise RegistryError(f"{self.path}: 'models' must be an object")
        return data

    def versions(self, model: str) -> dict[int, dict[str, Any]]:
        entries = (self._read()["models"].get(model) or {}).get("versions") or {}
        return {int(v): e for v, e in entries.items()}

    def get(self, model: str, version: int) -> dict[str, Any] | None:
        return self.versions(model).get(version)

    def reserve(self, model: str, *, run_id: str, out: str, requested: int | None = None, floor: int = 1) -> int:
        with self._locked() as data:
            entries = data["models"].setdefault(model, {}).setdefault("versions", {})
            if requested is not None:
                if str(requested) in entries:
                    e = entries[str(requested)]
                    raise RegistryError(
                        f"version {requested} of {model} is already registered (run {e.get('run_id')}, {e.get('status')}) "
                        f"in {self.path}; leave --version out to get the next free number"
                    )
                version = requested
            else:
                version = max([floor - 1, *map(int, entries)]) + 1
            entries[str(version)] = {"run_id": run_id, "out": out, "reserved_at": _now(), "status": "running"}
        logger.info("reserved %s v%d in %s", model, version, self.path)
        return version

    def complete(self, model: str, version: int, *, status: str, sha256: str | None = None, bundle: str | None = None) -> None:
        with self._locked() as data:
            e = data["models"].setdefault(model, {}).setdefault("versions", {}).setdefault(str(version), {})
            e.update(status=status, finished_at=_now(), sha256=sha256, bundle=bundle)


class MlflowRegistry:
    """MLflow's model registry: each reservation is a new model version (MLflow numbers it); tags
    carry the run id, the out folder, the status and the bundle's sha256."""

    kind = "mlflow"

    def __init__(self) -> None:
        from mlflow import MlflowClient  # optional extra: pip install 'edgeship[mlflow]'

        self.client = MlflowClient()

    def _ensure_model(self, model: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(model)
        except MlflowException:
            try:
                self.client.create_registered_model(model, description="edgeship: versions of the bundles edgeship train signs")
            except MlflowException:  # created meanwhile by another run
                self.client.get_registered_model(model)

    def reserve(self, model: str, *, run_id: str, out: str, requested: int | None = None, floor: int = 1) -> int:
        self._ensure_model(model)
        if requested is not None:  # MLflow numbers in order: numbers below are created and marked skipped
            floor = max(floor, requested)
        source = Path(out).resolve().as_uri()
        for _ in range(10_000):
            mv = self.client.create_model_version(model, source, tags={"edgeship.run_id": run_id, "edgeship.status": "running"})
            version = int(mv.version)
            if version >= floor:  # below the bundles already in --out: never reuse their numbers
                if requested is not None and version != requested:
                    self.client.set_model_version_tag(model, mv.version, "edgeship.status", "skipped")
                    raise RegistryError(
                        f"version {requested} of {model} is already taken in MLflow's model registry (next free: "
                        f"{version + 1}); leave --version out"
                    )
                logger.info("reserved %s v%d in MLflow's model registry", model, version)
                return version
            self.client.set_model_version_tag(model, mv.version, "edgeship.status", "skipped")
        raise RegistryError(f"could not reach version {floor} of {model} in MLflow's model registry")

    def complete(self, model: str, version: int, *, status: str, sha256: str | None = None, bundle: str | None = None) -> None:
        self.client.set_model_version_tag(model, str(version), "edgeship.status", status)
        if sha256:
            self.client.set_model_version_tag(model, str(version), "edgeship.bundle_sha256", sha256)
        if bundle:
            self.client.set_model_version_tag(model, str(version), "edgeship.bundle", bundle)


def open_registry(path: str | os.PathLike[str] | None = None) -> VersionRegistry:
    """``path`` → that local file; else MLflow when configured; else the default local file."""
    if path is None and mlflow_configured():
        return MlflowRegistry()
    return LocalRegistry(path)

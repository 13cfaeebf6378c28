"""The edge agent: model store + active predictor + HTTP + MQTT + metrics, wired together.

Run it::

    python -m edge.agent --device-id store-1 --state-dir /var/lib/edgeship \\
        --trust /etc/edgeship/signing.pub --http 0.0.0.0:8080 --broker mqtt://broker.local:1883

or embed it::

    agent = Agent(AgentConfig(device_id="store-1", state_dir=..., trust=[...], http="127.0.0.1:0")).start()
    agent.http_url            # e.g. http://127.0.0.1:41234
    agent.stop()

Start-up serves the last good model at once (re-verified from disk); MQTT connects in the
background and keeps retrying, so a device serves even while the broker is down. An update is
installed with full verification, loaded and warmed up, and only then made active (atomic pointer
swap, then the predictor swap); the previous model is closed after its in-flight requests. On any
failure the current model keeps serving and the refusal is reported with a reason code.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config import AgentConfig
from edge.http import HttpServer, create_app
from edge.metrics import AgentMetrics
from edge.mqtt import MqttLink
from edge.predictor import Predictor, load_trusted_keys
from edge.runtimes import REGISTRY, available_runtimes
from edge.slot import ModelSlot
from edge.store import ModelStore
from edge.transfer import Transfer
from edgeship.logs import setup_logging
from models.bundle import BundleError, VerifiedBundle
from models.messages import DeviceState, ModelAnnouncement, UpdateOutcome

__all__ = ["Agent", "build_parser", "config_from_args", "main"]

logger = logging.getLogger(__name__)

#: Transfer failures that say nothing about the bundle itself: not remembered as refusals.
_TRANSIENT = {"stalled", "disk"}


class Agent:
    """One device's agent. Not started by the constructor: call :meth:`start` (or use ``with``)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.slot = ModelSlot()
        self.trusted = load_trusted_keys(config.trust)
        self.store = ModelStore(config.state_dir, self.trusted)
        self.runtimes = available_runtimes()
        self.http: HttpServer | None = None
        self.mqtt: MqttLink | None = None
        self._status = "starting"
        self._last_update: UpdateOutcome | None = None
        self._refused: dict[str, str] = {}  # bundle sha256 -> reason
        self._update_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Agent:
        """Load the last good model, start HTTP (if configured), then MQTT (if configured).

        If any part fails to start, what did start is stopped again and the error raised."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self._load_last_good()
        self._status = "serving" if self.slot.current is not None else "no_model"
        if self.config.http_address is not None:
            host, port = self.config.http_address
            app = create_app(
                self.slot, self.metrics, device_id=self.config.device_id, max_body_bytes=self.config.max_body_bytes
            )
            self.http = HttpServer(app, host, port)
            self.http.start()
        if self.config.broker is not None:
            self.mqtt = MqttLink(
                self.config,
                downloads_dir=self.store.downloads_dir,
                metrics=self.metrics,
                should_fetch=self.should_fetch,
                on_complete=self._on_transfer_complete,
                on_failed=self._on_transfer_failed,
                state=self.device_state,
            )
            self.mqtt.start()
        logger.info(
            "agent started",
            extra={
                "device_id": self.config.device_id,
                "status": self._status,
                "http": self.http_url,
                "broker": self.config.broker,
            },
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Publish ``stopping`` and ``offline``, disconnect, stop HTTP, close the model."""
        self._status = "stopping"
        if self.mqtt is not None:
            self.mqtt.publish_state()
            self.mqtt.stop(timeout=timeout / 2)
        if self.http is not None:
            self.http.stop(timeout=timeout / 2)
        if self._update_lock.acquire(timeout=timeout):  # let an install in progress finish
            self._update_lock.release()
        self.slot.close()
        self.metrics.set_model(None)
        logger.info("agent stopped")

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ------------------------------------------------------------------------------
    @property
    def predictor(self) -> Predictor | None:
        """The active predictor (None while no model is active)."""
        return self.slot.current  # type: ignore[return-value]

    @property
    def http_url(self) -> str | None:
        return self.http.url if self.http is not None else None

    @property
    def refused(self) -> dict[str, str]:
        """Bundles refused since start: sha256 → reason code."""
        return dict(self._refused)

    def device_state(self) -> DeviceState:
        """What the retained ``state`` topic says about this device."""
        current = self.predictor
        return DeviceState(
            device_id=self.config.device_id,
            fleet=self.config.fleet,
            status=self._status,  # type: ignore[arg-type]
            model=current.info if current is not None else None,
            last_update=self._last_update,
            runtimes=self.runtimes,
            hardware={"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
            http=self.http_url,
        )

    # -- models -----------------------------------------------------------------------------
    def _open_predictor(self, bundle: VerifiedBundle) -> Predictor:
        return Predictor.from_verified(
            bundle, variant=self.config.variants, runtime=self.config.runtime, threads=self.config.threads
        )

    def _serve(self, predictor: Predictor) -> None:
        self.slot.swap(predictor)
        self.metrics.set_model(predictor.info)
        self._status = "serving"

    def _load_last_good(self) -> None:
        skip: set[int] = set()
        while (bundle := self.store.load_last_good(skip=skip)) is not None:
            version = bundle.manifest.version
            if self.config.model is not None and bundle.manifest.name != self.config.model:
                logger.warning(
                    "installed version %d is model %s, not %s", version, bundle.manifest.name, self.config.model
                )
                skip.add(version)
                continue
            try:
                self._serve(self._open_predictor(bundle))
                return
            except Exception as exc:
                logger.error("installed version %d does not load: %s", version, exc)
                skip.add(version)
        logger.warning("no model installed yet; serving 503 until one arrives")

    def should_fetch(self, ann: ModelAnnouncement) -> str | None:
        """None if the announced bundle should be downloaded, else why not."""
        if self.config.model is not None and ann.model != self.config.model:
            return "other_model"
        current = self.predictor
        if current is not None:
            if ann.model != current.name:
                return f"model {current.name} is active"
            if ann.sha256 == current.digest:
                return "same_digest"
            if ann.version <= current.version:
                return "not_newer"
        if ann.sha256 in self._refused:
            return f"refused_before ({self._refused[ann.sha256]})"
        return None

    def install_and_activate(
        self, bundle_path: str | Path, announcement: ModelAnnouncement | None = None, *, allow_downgrade: bool = False
    ) -> bool:
        """Install, verify, load, warm up and activate a bundle file; True if it is now served.

        On any failure the current model keeps serving, the refusal is recorded (metrics, state,
        events) and False is returned. A download under the store's ``downloads/`` is deleted after.
        """
        bundle_path = Path(bundle_path)
        ann = announcement
        version = ann.version if ann is not None else 0
        with self._update_lock:
            before = set(self.store.versions())
            bundle: VerifiedBundle | None = None
            predictor: Predictor | None = None
            try:
                bundle = self.store.install(bundle_path, digest=ann.sha256 if ann is not None else None)
                version = bundle.manifest.version
                self._check_update(bundle, ann, allow_downgrade)
                self._step("verified", version, digest=bundle.digest, keyid=bundle.keyid)
                predictor = self._open_predictor(bundle)
                self.store.activate(version)
                self._serve(predictor)
            except Exception as exc:
                if predictor is not None:
                    predictor.close()
                if bundle is not None and version not in before:
                    with contextlib.suppress(OSError, ValueError):
                        self.store.remove(version)
                reason = exc.reason if isinstance(exc, BundleError) else "load_failed"
                if not isinstance(exc, BundleError):
                    logger.exception("activating version %d failed", version)
                self._refuse(version, reason, str(exc), ann.sha256 if ann is not None else None)
                return False
            finally:
                if bundle_path.resolve().parent == self.store.downloads_dir.resolve():
                    bundle_path.unlink(missing_ok=True)
            try:
                self.store.prune(self.config.keep_versions)
            except OSError as exc:
                logger.warning("pruning old versions failed: %s", exc)
        info = predictor.info
        self._step("active", version, digest=info.digest, variant=info.variant, runtime=info.runtime)
        return True

    def _check_update(self, bundle: VerifiedBundle, ann: ModelAnnouncement | None, allow_downgrade: bool) -> None:
        m = bundle.manifest
        if self.config.model is not None and m.name != self.config.model:
            raise BundleError("wrong_model", f"bundle is model {m.name}, this device runs {self.config.model}")
        if ann is not None and (m.name, m.version) != (ann.model, ann.version):
            raise BundleError(
                "announcement_mismatch", f"bundle is {m.name} v{m.version}, announced {ann.model} v{ann.version}"
            )
        current = self.predictor
        if current is not None and current.name == m.name and not allow_downgrade:
            if bundle.digest == current.digest:
                raise BundleError("already_active", f"{m.name} v{m.version} is already active")
            if m.version <= current.version:
                raise BundleError("rollback", f"v{m.version} is not newer than the active v{current.version}")

    # -- update reporting -------------------------------------------------------------------
    def _step(self, outcome: str, version: int, reason: str | None = None, **detail: Any) -> None:
        self.metrics.model_updates.labels(outcome).inc()
        self._last_update = UpdateOutcome(version=version, outcome=outcome, reason=reason)  # type: ignore[arg-type]
        log = logger.warning if outcome in ("refused", "failed") else logger.info
        fields = {k: v for k, v in detail.items() if k != "message"}  # "message" is the record's own
        log(
            "model update %s%s",
            outcome,
            f": {detail['message']}" if "message" in detail else "",
            extra={"version": version, "reason": reason, **fields},
        )
        if self.mqtt is not None:
            self.mqtt.publish_event(outcome, version=version, **({"reason": reason} if reason else {}), **detail)
            self.mqtt.publish_state()

    def _refuse(self, version: int, reason: str, message: str, sha256: str | None) -> None:
        if sha256 is not None:
            self._refused[sha256] = reason
        self._step("refused", version, reason, message=message)

    def _on_transfer_complete(self, transfer: Transfer) -> None:
        ann = transfer.announcement
        self._step("received", ann.version, sha256=ann.sha256, size=ann.size)
        try:
            path = transfer.finish()
        except BundleError as exc:
            transfer.discard()
            self._refuse(ann.version, exc.reason, str(exc), ann.sha256)
            return
        self.install_and_activate(path, ann)

    def _on_transfer_failed(self, ann: ModelAnnouncement, reason: str, message: str) -> None:
        if reason in _TRANSIENT:
            self._step("failed", ann.version, reason, message=message)
        else:
            self._refuse(ann.version, reason, message, ann.sha256)


# -- command line -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgeship agent", description="Run the edgeship edge agent on this device.")
    p.add_argument("--device-id", required=True, help="this device's id, [a-z0-9_-]{1,64}")
    p.add_argument("--state-dir", required=True, type=Path, help="folder for model versions and downloads")
    p.add_argument(
        "--trust",
        required=True,
        action="append",
        type=Path,
        metavar="PUBKEY",
        help="trusted signing public key (PEM); repeatable",
    )
    p.add_argument("--broker", help="MQTT broker, mqtt://HOST:PORT (credentials: EDGESHIP_MQTT_USERNAME/_PASSWORD)")
    p.add_argument("--http", metavar="HOST:PORT", help="serve HTTP here ([::1]:8080 for IPv6; port 0 = any free port)")
    p.add_argument("--fleet", help="fleet id (default: default)")
    p.add_argument("--model", help="accept only this model name's announcements")
    p.add_argument(
        "--variant",
        dest="variants",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="variant preference order, e.g. tflite-int8 onnx-fp32",
    )
    p.add_argument("--runtime", choices=sorted(REGISTRY), help="force one runtime plugin (fake: tests and demos)")
    p.add_argument("--threads", type=int, help="threads per inference runtime (default 1)")
    p.add_argument("--keep-versions", type=int, help="installed versions kept on disk (default 3)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """An :class:`AgentConfig` from parsed arguments (unset options keep the config's defaults)."""
    fields = {k: v for k, v in vars(args).items() if k != "log_level" and v is not None}
    return AgentConfig(**fields)


def main(argv: Sequence[str] | None = None) -> int:
    """``edgeship agent ...``: run until SIGINT/SIGTERM. Logs JSON lines to stderr; prints the HTTP URL."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)  # one JSON object per line on stderr
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            logger.error("invalid option --%s: %s", ".".join(map(str, err["loc"])).replace("_", "-"), err["msg"])
        return 2
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: stop.set())
    try:
        try:
            agent = Agent(config).start()
        except Exception as exc:
            logger.error("agent could not start: %s", exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            return 1
        if agent.http_url:
            print(agent.http_url, flush=True)
        stop.wait()
        logger.info("stopping")
        agent.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())

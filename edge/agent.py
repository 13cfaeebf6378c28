"""The edge agent: model store + active predictor + HTTP + MQTT + metrics, wired together.

Run it::

    edgeship agent --device-id store-1 --state-dir /var/lib/edgeship \\
        --trust /etc/edgeship/signing.pub --http 0.0.0.0:8080 --broker mqtt://broker.local:1883

or embed it::

    agent = Agent(AgentConfig(device_id="store-1", state_dir=..., trust=[...], http="127.0.0.1:0")).start()
    agent.http_url            # e.g. http://127.0.0.1:41234
    agent.stop()

Start-up serves the last good model at once (re-verified from disk); MQTT connects in the
background and keeps retrying, so a device serves even while the broker is down. An update is
installed with full verification, loaded and warmed up, run through the on-device holdout gate
(:mod:`edge.store.gate`), and only then made active (atomic pointer swap, then the predictor swap; a
``kill -9`` anywhere leaves a verified version active, see :mod:`edge.store.versions`); the previous
model is closed after its in-flight requests. On any failure the current model keeps serving and
the refusal is reported with a reason code. ``edgeship agent rollback`` goes back one version
(offline; ``kill -HUP`` makes a running agent serve it), ``--install BUNDLE`` side-loads a file.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any


from edge.config import AgentConfig
from edge.memory import release_free_memory
from edge.store.crash import crash_point
from edge.store.gate import GateFailed, gate_predictor
from edge.runtimes.hardware import Choice, choose, detect
from edge.serving.auth import http_auth_for
from edge.serving.http import HttpServer, create_app
from edge.serving.field_routes import FieldApi
from edge.serving.ingest_routes import Ingest, ingest_routes
from edge.monitoring.metrics import AgentMetrics
from edge.delivery.commands import CandidateAuthority
from edge.delivery.link import MqttLink
from edge.serving.mqtt import MqttServing
from edge.serving.predictor import Predictor
from edge.runtimes import available_runtimes
from edge.serving.pipeline import Serving
from edge.serving.priority import serving_first
from edge.serving.slot import ModelSlot
from edge.store.model_store import ModelStore
from edge.store.policy import update_verdict
from edge.monitoring.telemetry import Telemetry
from edge.monitoring.telemetry import for_agent as telemetry_for_agent
from edge.delivery.transfer import Transfer
from edge.delivery.trust import TrustStore
from edge.store.versions import RollbackError, VersionHistory, recover, rollback_target
from edge.store.versions import prune as prune_versions
from edge.store.versions import rollback as rollback_store
from models.bundle import BundleError, VerifiedBundle, verify_unpacked
from models.messages import ActiveModel, DeviceState, ModelAnnouncement, UpdateOutcome, disk_reason

__all__ = ["Agent"]

logger = logging.getLogger(__name__)



class Agent:
    """One device's agent. Not started by the constructor: call :meth:`start` (or use ``with``)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.slot = ModelSlot()
        # pinned signing keys (--trust) + keys a root-signed key list names (--trust-root), minus revoked ones;
        # a live list the store shares, so a rotation applies at once (edge.delivery.trust)
        self.trust = TrustStore(config.state_dir, pinned=config.trust, roots=config.trust_root)
        self.trusted = self.trust.keys
        self.store = ModelStore(config.state_dir, self.trusted)
        self.runtimes = available_runtimes()
        self.hardware = detect()
        self.history = VersionHistory(config.state_dir)
        self._no_serve: set[int] = set()  # rolled-back versions (edge.store.versions)
        self.http: HttpServer | None = None
        self.mqtt: MqttLink | None = None
        self._status = "starting"
        self._last_update: UpdateOutcome | None = None
        self._last_gate: UpdateOutcome | None = None
        self._refused: dict[str, str] = {}  # bundle sha256 -> reason
        self._update_lock = threading.Lock()
        self._disk_fault: str | None = None  # the disk reason code that stopped the last install, if any
        # batching, shadow / A-B, online lag state, drift, prediction log (edge.serving.pipeline); telemetry on start
        self.serving = Serving.for_agent(self)
        self.telemetry: Telemetry | None = None
        self._start_notes: list[tuple[str, dict[str, Any]]] = []
        self.field = FieldApi.for_agent(self)  # validation app's routes + feedback store (edge.serving.field_routes)
        self.ingest: Ingest | None = None  # sale events and sensor readings (edge.serving.ingest_routes)

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
        self._recover()
        self._load_last_good()
        self._status = "serving" if self.slot.current is not None else "no_model"
        self.serving.start()
        if self.config.http_address is not None:
            host, port = self.config.http_address
            app = create_app(
                self.serving,
                self.metrics,
                device_id=self.config.device_id,
                max_body_bytes=self.config.max_body_bytes,
                routes=[*ingest_routes(self), *self.field.routes()],  # serial bridge input; validation app + feedback
                health=self.health,
                auth=http_auth_for(self.config),  # edge.serving.auth: token for writes, JSON bodies
            )
            self.http = HttpServer(app, host, port)
            self.http.start()
        if self.config.broker is not None:
            # the agent is the link's host (edge.delivery.link.LinkHost): one interface instead of callbacks
            self.mqtt = MqttLink(self.config, self, downloads_dir=self.store.downloads_dir, metrics=self.metrics, trust=self.trust)
            authority = CandidateAuthority(self.trust, self.config, installed=self.installed_digest, blocked=self.blocked)
            mqtt_serving = MqttServing(
                self.serving, self.mqtt, max_payload_bytes=self.config.max_body_bytes, authorize=authority
            )
            mqtt_serving.register_command("assign", self.mqtt.delivery.on_assign)  # signed assignments (edge.delivery.updater)
            mqtt_serving.attach()
            self.mqtt.delivery.make_room = self._make_room
            self.telemetry = telemetry_for_agent(self)
            self.telemetry.attach(self.mqtt)  # events, too, get sequence numbers and the on-disk spool
            self.telemetry.start()
            self.serving.sales_sink = self.telemetry.actuals  # accepted sales go to the cloud (retraining)
            self.mqtt.start()
        for kind, detail in self._start_notes:  # what start-up decided before events could be sent
            self._note(kind, **detail)
        self._start_notes.clear()
        logger.info(
            "agent started",
            extra={
                "device_id": self.config.device_id,
                "status": self._status,
                "http": self.http_url,
                "broker": self.config.broker,
            },
        )
        release_free_memory()  # what start-up freed (imports, verification, load and warm-up) leaves the RSS

    def stop(self, timeout: float = 10.0) -> None:
        """Publish ``stopping`` and ``offline``, disconnect, stop HTTP, close the model."""
        self._status = "stopping"
        if self.mqtt is not None:
            self.mqtt.publish_state()
            self.mqtt.stop(timeout=timeout / 2)
        if self.telemetry is not None:
            self.serving.sales_sink = None
            self.telemetry.stop()  # what is undelivered stays spooled for the next start
        if self.http is not None:
            self.http.stop(timeout=timeout / 2)
        self.serving.stop()
        if self.ingest is not None:
            self.ingest.close()
            self.ingest = None
        self.field.close()
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

    def security_health(self) -> dict[str, Any]:
        """Extra ``/healthz`` fields (issue 7): the MQTT loop (a dead one is restarted and counted) and trust."""
        out: dict[str, Any] = {}
        if self.trust.roots:  # key lists in use: their version and whether the held one expired
            out["trust"] = {"keylist_version": self.trust.keylist_version, "stale": self.trust.stale()}
        if self.mqtt is not None:
            out["mqtt"] = self.mqtt.health()
        return out

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
            hardware={
                **self.hardware.as_state(),
                **({"variant_choice": self._choice(current.bundle).reason} if current is not None else {}),
            },
            http=self.http_url,
            attributes=self.config.attributes,
            delivery=self.mqtt.delivery.info() if self.mqtt is not None else None,
            trust=self.trust.info(),
            gate=self._last_gate,
        )

    # -- models -----------------------------------------------------------------------------
    def _choice(self, bundle: VerifiedBundle) -> Choice:
        """Variant order and ONNX providers for this device (configuration first, then hardware)."""
        return choose(
            [v.name for v in bundle.manifest.variants],
            self.hardware,
            configured_variants=self.config.variants,
            configured_providers=self.config.providers,
        )

    def _open_predictor(self, bundle: VerifiedBundle) -> Predictor:
        choice = self._choice(bundle)
        return Predictor.from_verified(
            bundle,
            variant=choice.order,
            runtime=self.config.runtime,
            threads=self.config.threads,
            providers=choice.providers or None,
        )

    def _gate(self, predictor: Predictor) -> None:
        """The on-device holdout gate (edge.store.gate); raises GateFailed with the numbers."""
        if self.config.gate == "off":
            return
        result = gate_predictor(predictor, margin=self.config.gate_margin, require=self.config.gate == "require")
        self.metrics.gate_runs.labels(result.result).inc()
        if not result.passed:
            raise GateFailed(result)
        self._step("gate_passed", predictor.version, figures=result.numbers(), **result.figures())

    def _recover(self) -> None:
        """Before serving: finish what a crash interrupted (edge.store.versions.recover), count offline rollbacks."""
        self._no_serve = recover(self.store, self.history)
        if n := self.history.take_unreported_rollbacks():
            self.metrics.model_rollbacks.labels("manual").inc(n)

    def reload(self) -> bool:
        """Serve the version the store's pointer names if it is not the one served (e.g. after
        ``edgeship agent rollback`` while running; ``kill -HUP``). True if the model changed."""
        with self._update_lock:
            self._recover()
            pointer = self.store.active()
            current = self.predictor
            if pointer is None or (current is not None and current.digest == pointer.digest):
                return False
            try:
                predictor = self._open_predictor(verify_unpacked(self.store.version_dir(pointer.version), self.store.trusted))
            except Exception as exc:
                logger.error("reload: version %d does not load, keeping the current model: %s", pointer.version, exc)
                return False
            self._serve(predictor)
        logger.info("reloaded version %d from the store", pointer.version)
        self._step("active", pointer.version, digest=pointer.digest, variant=predictor.variant, runtime=predictor.runtime_name)
        return True

    def rollback(self, to: int | None = None) -> bool:
        """Go back one version (or to ``to``) while serving: the earlier version is loaded and warmed
        beside the current one, the pointer moves atomically, then the predictor is swapped.
        Raises :class:`edge.store.versions.RollbackError` when there is nothing verified to go back to."""
        with self._update_lock, serving_first():
            target = rollback_target(self.store, self.history, to)
            predictor = self._open_predictor(verify_unpacked(self.store.version_dir(target), self.store.trusted))
            try:
                old, new = rollback_store(self.store, self.history, to=target)
            except BaseException:
                predictor.close()
                raise
            self._serve(predictor)
            self.history.take_unreported_rollbacks()
            self.metrics.model_rollbacks.labels("manual").inc()
            self._no_serve.add(old)
        self._step("rolled_back", new, reason=f"from_v{old}")
        return True

    def activate_installed(self, version: int, digest: str) -> bool:
        """A signed rollback command (edge.delivery.updater) names ``version``: go back to it without a download
        if it is installed here with ``digest``. False (nothing changed) when it is not."""
        try:
            if verify_unpacked(self.store.version_dir(version), self.store.trusted).digest != digest:
                return False
            return self.rollback(to=version)
        except (BundleError, RollbackError, OSError) as exc:
            logger.info("v%d is not available locally for a rollback: %s", version, exc)
            return False

    def _serve(self, predictor: Predictor) -> None:
        if self.slot.current is not None:
            self.metrics.model_swaps.inc()
        self.serving.adopt(predictor)  # online lag view re-based on the new bundle, fresh drift window
        self.slot.swap(predictor)
        self.metrics.set_model(predictor.info)
        self._status = "serving"

    def _load_last_good(self) -> None:
        before = self.store.active()
        skip: set[int] = set(self._no_serve)  # rolled-back versions are not served again
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
            except Exception as exc:
                logger.error("installed version %d does not load: %s", version, exc)
                skip.add(version)
            else:
                if before is not None and (before.version, before.digest) != (version, bundle.digest):
                    why = self._why_unverified(before.version)
                    if why is not None and why[0] == "bad_signature":  # its key was revoked: say so, loudly
                        self.metrics.model_rollbacks.labels("revoked").inc()
                        self.metrics.revoked_model_actions.labels("switched").inc()
                        self._start_notes.append(("revoked_model", {
                            "action": "switched", "from_version": before.version, "version": version, "message": why[1]}))
                    else:
                        self.metrics.model_rollbacks.labels("damaged").inc()  # the active one did not verify or load
                self.history.record_activation(version, bundle.digest)
                return
        logger.warning("no model installed yet; serving 503 until one arrives")

    def installed_digest(self, version: int) -> str | None:
        """The digest of installed ``version`` if it verifies with the keys trusted now (installed
        versions passed the gate: a gate failure removes them), else None."""
        try:
            return verify_unpacked(self.store.version_dir(version), self.store.trusted).digest
        except (BundleError, OSError):
            return None

    def blocked(self, version: int, digest: str) -> str | None:
        """Why ``version`` may not serve (rolled back), or None."""
        if version in self._no_serve or self.history.is_rolled_back(digest):
            return "was rolled back and is never served again"
        return None

    def _why_unverified(self, version: int) -> tuple[str, str] | None:
        """None if installed ``version`` verifies with the keys trusted now, else (reason, message)."""
        try:
            verify_unpacked(self.store.version_dir(version), self.store.trusted)
            return None
        except BundleError as exc:
            return exc.reason, str(exc)
        except OSError as exc:
            return "missing_member", str(exc)

    def _note(self, kind: str, **detail: Any) -> None:
        log = logger.error if kind in ("revoked_model", "keylist_stale") else logger.info
        log("%s: %s", kind, detail)
        if self.mqtt is not None:
            self.mqtt.publish_event(kind, **detail)
            self.mqtt.publish_state()

    def recheck_trust(self) -> None:
        """The revocation policy, run whenever the trusted keys change (a new key list).

        A model whose signature no longer verifies (its key was revoked) is never served: the agent
        switches to the newest installed version that still verifies with the current keys (and was
        not rolled back), recorded as a rollback (``rolled_back`` reason ``revoked_key``, metric
        ``edgeship_model_rollbacks_total{reason="revoked"}``) and a ``revoked_model`` event; if none
        verifies it stops serving (503, status ``no_model``, event action ``stopped``) rather than
        serve a model nobody trusted signs. The same rule applies at start-up."""
        with self._update_lock:
            current = self.predictor
            if current is None:
                return
            why = self._why_unverified(current.version)
            if why is None:
                return
            for v in sorted(self.store.versions(), reverse=True):
                if v == current.version or v in self._no_serve:
                    continue
                try:
                    bundle = verify_unpacked(self.store.version_dir(v), self.store.trusted)
                    if self.config.model is not None and bundle.manifest.name != self.config.model:
                        continue
                    predictor = self._open_predictor(bundle)
                except Exception as exc:
                    logger.info("v%d cannot replace the revoked model: %s", v, exc)
                    continue
                self.store.activate(v)
                self.history.record_activation(v, bundle.digest)
                self._serve(predictor)
                self._no_serve.add(current.version)
                self.metrics.model_rollbacks.labels("revoked").inc()
                self.metrics.revoked_model_actions.labels("switched").inc()
                self._note("revoked_model", action="switched", from_version=current.version, version=v, message=why[1])
                self._step("rolled_back", v, reason="revoked_key")
                return
            self.slot.swap(None)
            self.metrics.set_model(None)
            self._status = "no_model"
            self._no_serve.add(current.version)
            self.metrics.revoked_model_actions.labels("stopped").inc()
            self._note("revoked_model", action="stopped", from_version=current.version, message=why[1])

    def should_fetch(self, ann: ModelAnnouncement) -> str | None:
        """None if the announced bundle should be downloaded, else why not."""
        if self.config.model is not None and ann.model != self.config.model:
            return "other_model"
        current = self.predictor
        if current is not None and ann.model != current.name:
            return f"model {current.name} is active"
        verdict = update_verdict(current, ann.model, ann.version, ann.sha256)  # the one rule (edge.store.policy)
        if verdict is not None:
            return verdict.reason
        if ann.sha256 in self._refused:
            return f"refused_before ({self._refused[ann.sha256]})"
        if self.history.is_rolled_back(ann.sha256):
            return "rolled_back"
        return None

    def install_and_activate(
        self,
        bundle_path: str | Path,
        announcement: ModelAnnouncement | None = None,
        *,
        allow_downgrade: bool = False,
        still_wanted: Callable[[], bool] | None = None,
    ) -> bool:
        """Install, verify, load, warm up and activate a bundle file; True if it is now served.

        On any failure the current model keeps serving, the refusal is recorded (metrics, state,
        events) and False is returned. A download under the store's ``downloads/`` is deleted after.
        ``still_wanted`` is asked just before activating: False (a newer signed target, e.g. a rollout's
        rollback command, arrived while this one was installing) refuses it as ``superseded``.
        """
        bundle_path = Path(bundle_path)
        ann = announcement
        version = ann.version if ann is not None else 0
        with self._update_lock, serving_first():  # requests keep the GIL's attention meanwhile
            self._disk_fault, keep_download = None, False
            before = set(self.store.versions())
            bundle: VerifiedBundle | None = None
            predictor: Predictor | None = None
            try:
                bundle = self.store.install(
                    bundle_path,
                    digest=ann.sha256 if ann is not None else None,
                    on_member=lambda _name: crash_point("during_unpack"),
                )
                crash_point("after_unpack")
                version = bundle.manifest.version
                self._check_update(bundle, ann, allow_downgrade)
                self._step("verified", version, digest=bundle.digest, keyid=bundle.keyid)
                t_load = time.perf_counter()
                predictor = self._open_predictor(bundle)  # loaded and warmed up beside the serving model
                self._gate(predictor)
                if still_wanted is not None and not still_wanted():
                    raise BundleError("superseded", f"v{version}: a newer signed target arrived while it was installing")
                crash_point("before_pointer_write")
                self.store.activate(version)
                self.history.record_activation(version, bundle.digest)
                crash_point("after_pointer_write_before_swap")
                self._serve(predictor)
                self.metrics.model_swap_seconds.observe(time.perf_counter() - t_load)
                crash_point("after_swap")
            except Exception as exc:
                if predictor is not None:
                    predictor.close()
                if bundle is not None and version not in before:
                    with contextlib.suppress(OSError, ValueError):
                        self.store.remove(version)
                sha = ann.sha256 if ann is not None else None
                fault = disk_reason(exc)
                if fault is not None:  # the device's disk, not the bundle: keep the download, never refuse
                    keep_download = True
                    self._disk_fault = fault
                    self._step("failed", version, fault, message=f"disk fault while installing: {exc}")
                    return False
                if isinstance(exc, GateFailed):  # not activated; reported with the numbers
                    if sha is not None:
                        self._refused[sha] = exc.reason
                    figures = exc.result.figures()
                    self._step("gate_failed", version, exc.reason, figures=exc.result.numbers(), message=str(exc), **figures)
                    return False
                reason = exc.reason if isinstance(exc, BundleError) else "load_failed"
                if not isinstance(exc, BundleError):
                    logger.exception("activating version %d failed", version)
                self._refuse(version, reason, str(exc), sha)
                return False
            finally:
                if not keep_download and bundle_path.resolve().parent == self.store.downloads_dir.resolve():
                    with contextlib.suppress(OSError):
                        bundle_path.unlink(missing_ok=True)
            try:
                prune_versions(self.store, self.history, self.config.keep_versions)
            except OSError as exc:
                logger.warning("pruning old versions failed: %s", exc)
        release_free_memory()  # the install's and the previous model's freed memory leaves the RSS
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
        # a verified signed rollback (allow_downgrade) may install any version, the active bytes included
        verdict = None if allow_downgrade else update_verdict(self.predictor, m.name, m.version, bundle.digest)
        if verdict is not None:
            raise BundleError(verdict.reason, verdict.message)

    # -- update reporting -------------------------------------------------------------------
    def active_model(self) -> ActiveModel | None:
        """The model served now (edge.delivery.updater.DeliveryHost)."""
        return self.device_state().model

    def report(self, outcome: str, version: int, reason: str | None = None, **detail: Any) -> None:
        """An update step, for events, state and metrics (edge.delivery.updater.DeliveryHost)."""
        self._step(outcome, version, reason, **detail)

    def _step(
        self, outcome: str, version: int, reason: str | None = None, *, figures: dict[str, float] | None = None, **detail: Any
    ) -> None:
        self.metrics.model_updates.labels(outcome).inc()
        self._last_update = UpdateOutcome(version=version, outcome=outcome, reason=reason, figures=figures or {})  # type: ignore[arg-type]
        if outcome in ("gate_passed", "gate_failed"):
            self._last_gate = self._last_update  # kept in the retained state for the fleet view
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

    def on_transfer_complete(self, transfer: Transfer) -> str | None:
        """Install a complete transfer. Returns the disk reason code when a disk fault stopped it (the
        download is kept; edge.delivery.updater retries), else None."""
        ann = transfer.announcement
        self._step("received", ann.version, sha256=ann.sha256, size=ann.size)
        try:
            path = transfer.finish()
        except BundleError as exc:
            transfer.discard()
            self._refuse(ann.version, exc.reason, str(exc), ann.sha256)
            return None
        except OSError as exc:
            fault = disk_reason(exc) or "disk_io"
            self._step("failed", ann.version, fault, message=f"disk fault finishing the download: {exc}")
            return fault
        current = self.predictor
        older = current is not None and current.name == ann.model and ann.version < current.version
        # only a signed rollback command (edge.delivery.updater) sets downgrade
        delivery = self.mqtt.delivery if self.mqtt is not None else None

        def still_wanted() -> bool:
            return delivery is None or not delivery.superseded(transfer.targets)

        if self.install_and_activate(path, ann, allow_downgrade=transfer.downgrade, still_wanted=still_wanted) and transfer.downgrade and older:
            self._step("rolled_back", ann.version, reason="rollback_command")
        return self._disk_fault

    def _make_room(self, needed: int) -> None:
        """Before a download the disk is short of ``needed`` bytes: prune versions beyond keep_versions."""
        if not self._update_lock.acquire(timeout=0):  # an install is running (it prunes when it ends)
            return
        try:
            removed = prune_versions(self.store, self.history, self.config.keep_versions)
        finally:
            self._update_lock.release()
        logger.info("short of %d bytes for a download; pruned versions %s", needed, removed or "none")

    def disk_health(self) -> dict[str, Any]:
        """The state folder's disk as /healthz and telemetry show it: ``state`` ok / disk_full /
        disk_readonly / disk_io, free bytes, and whether telemetry is held in memory for want of disk."""
        from edge.delivery.updater import disk_room  # noqa: PLC0415 (a leaf helper; keeps import order simple)

        try:
            free, readonly = disk_room(self.config.state_dir)
        except OSError:
            free, readonly = None, False
        faults = [
            "disk_readonly" if readonly else None,
            self.mqtt.delivery.disk_fault if self.mqtt is not None else None,
            self.telemetry.spool_fault if self.telemetry is not None else None,
            self._disk_fault,
        ]
        state = next((f for f in faults if f), "ok")
        out: dict[str, Any] = {"state": state, "free_bytes": free}
        if self.telemetry is not None:
            out["telemetry_in_memory"] = self.telemetry.spool.memory_only
        return out

    def health(self) -> dict[str, Any]:
        """What /healthz adds: the disk (:meth:`disk_health`) and whether the clock is believable."""
        clock_ok = self.mqtt.delivery.clock_ok if self.mqtt is not None else True
        return {"disk": self.disk_health(), "clock": "ok" if clock_ok else "behind_signed_time", **self.security_health()}


"""Staged rollouts gated on model health: ``edgeship rollout start | status | abort`` and ``edgeship rollback``.

The controller (``rollout start``, a process that stays up until the rollout ends) does this:

1. **Discover** the fleet from retained state and availability (:class:`cloud.fleet.view.FleetView`);
   eligible devices are online, run the same model (or none) and match every ``--select KEY=VALUE``
   (attributes devices report: ``--attr store_type=A``, plus ``machine``/``system``).
2. **Plan** waves: ``--canary N`` devices first, then ``--waves 10%,50%,100%`` (cumulative shares of
   the eligible devices; each wave adds at least one).
3. **Ship**: the bundle's chunks retained, and a bundle server answers devices' chunk requests.
4. **Per wave**: a signed per-device assignment, retained on ``<device>/set`` (targets naming that
   device, :mod:`models.targets`); then watch each device's events and state: ``downloading``,
   ``received``, ``verified``, ``gate_passed`` / ``gate_failed`` (the on-device holdout gate, with
   its figures), ``active``. The next wave starts only when every device of this one is active
   (and, with ``--require-gate``, passed its gate), after ``--soak`` seconds of healthy telemetry.
5. **Abort** when a criterion hits — always on an install failure (``failed>0``) or a gate failure
   (``gate_failed>0``); and on ``--abort-if`` rules over the gate's figures and the devices'
   telemetry (``nwrmsle>0.6``, ``latency_p99_ms>50``, ``error_rate>0.01``, or relative to the
   device's figure before the rollout: ``latency_p99_ms>1.5x``); on ``--gate-timeout`` without an
   answer; or on ``edgeship rollout abort``. Then every device this rollout reached gets a **signed
   rollback command** to the version it ran before (``downgrade``: activated from the device's own
   store, no download, when it still holds it), and devices of later waves never get anything.
6. **Promote** on success: without ``--select``, the fleet's retained announcement is set to the new
   version, so devices that join later get it too.

Everything the controller knows is written to ``<state-dir>/rollout.json`` (atomically, with a
heartbeat), so ``rollout status`` and ``rollout abort`` work from another process; an abort with no
live controller performs the rollback itself. That includes ``baselines``, each device's telemetry
figures from before it was assigned: a controller killed mid-rollout and started again resumes its
waves and judges relative rules (``latency_p99_ms>1.5x``) against those, not against figures the
devices report on the new version. ``<state-dir>/registry.json`` remembers every bundle
rolled out, so ``edgeship rollback --to VERSION`` can ship one a device no longer holds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import operator
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.fleet.view import FleetView
from cloud.fleet.publish import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_EXPIRES_S,
    PreparedBundle,
    Publisher,
    PublishError,
    check_newer,
    load_keylist,
    read_bundle,
    sign_targets,
)
from models.envelope import Signed
from models.fsutil import atomic_write_bytes
from models.messages import (
    EVENT_KINDS, TRANSIENT_REASONS, UNVERIFIED_REASONS, DeviceState, ModelAnnouncement, TransferProgressKind, utcnow,
)
from models.targets import Targets, announcement_of

__all__ = [
    "AbortRule",
    "Rollout",
    "RolloutError",
    "abort",
    "plan_waves",
    "parse_waves",
    "rollback",
    "status",
    "format_status",
]

logger = logging.getLogger(__name__)

STATE_FILE, REGISTRY_FILE, ABORT_FILE = "rollout.json", "registry.json", "abort.json"
HEARTBEAT_S = 1.0
_ALIVE_S = 10.0
DEFAULT_RULES = ("failed>0", "gate_failed>0")
#: Device failures that say nothing about the bundle (models.messages.TRANSIENT_REASONS: a full or
#: read-only disk, a stalled transfer): the device is unhealthy and retries by itself; never "model bad".
#: A device on its way: the controller's own "assigned", then the device's progress events and update steps
#: (their names come from models.messages, the device's own vocabulary).
_PROGRESS = ("assigned", *get_args(TransferProgressKind), "received", "verified", "gate_passed", "active")
if not set(_PROGRESS[1:]) <= EVENT_KINDS:  # pragma: no cover - a typo here would silently stall rollouts
    raise ImportError(f"rollout progress kinds {set(_PROGRESS[1:]) - EVENT_KINDS} are not device event kinds")


class RolloutError(RuntimeError):
    """A rollout cannot start or continue (bad options, no devices, another rollout running)."""


# -- rules and waves --------------------------------------------------------------------------
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}  # fmt: skip
_RULE = re.compile(r"^\s*([a-z][a-z0-9_.]*)\s*(>=|<=|>|<)\s*([0-9.eE+-]+)\s*(x?)\s*$")


@dataclasses.dataclass(frozen=True)
class AbortRule:
    """``NAME OP VALUE`` (absolute) or ``NAME OP FACTORx`` (relative to the device's figure before the rollout).

    >>> r = AbortRule.parse("latency_p99_ms>1.5x")
    >>> r.breached(31.0, baseline=20.0), r.breached(29.0, baseline=20.0)
    (True, False)
    """

    metric: str
    op: str
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> AbortRule:
        m = _RULE.match(text)
        if not m:
            raise RolloutError(f"--abort-if {text!r}: write NAME>VALUE, NAME<=VALUE or NAME>1.5x (relative)")
        return cls(m[1], m[2], float(m[3]), bool(m[4]))

    def breached(self, value: float | None, baseline: float | None = None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.relative:
            if baseline is None or baseline <= 0:
                return False
            return _OPS[self.op](value, baseline * self.value)
        return _OPS[self.op](value, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}{'x' if self.relative else ''}"


def parse_rules(texts: Sequence[str]) -> list[AbortRule]:
    """The default rules (install and gate failures abort) plus ``texts``; a rule on the same count replaces the default."""
    given = [AbortRule.parse(t) for text in texts for t in text.split(",") if t.strip()]
    names = {r.metric for r in given}
    return [AbortRule.parse(d) for d in DEFAULT_RULES if AbortRule.parse(d).metric not in names] + given


def parse_waves(text: str) -> list[float]:
    """``"10%,50%,100%"`` → ``[0.1, 0.5, 1.0]`` (cumulative shares; the last is made 100%)."""
    out = []
    for part in text.split(","):
        part = part.strip().rstrip("%")
        try:
            share = float(part) / 100
        except ValueError:
            raise RolloutError(f"--waves {text!r}: write shares like 10%,50%,100%") from None
        if not 0 < share <= 1 or (out and share <= out[-1]):
            raise RolloutError(f"--waves {text!r}: shares must grow, each in (0%, 100%]")
        out.append(share)
    if not out:
        raise RolloutError("--waves is empty")
    out[-1] = 1.0
    return out


def plan_waves(devices: Sequence[str], canary: int, shares: Sequence[float]) -> list[list[str]]:
    """Waves over ``devices`` (in order): ``canary`` first, then cumulative ``shares`` of all of them.

    >>> plan_waves(["a", "b", "c"], 1, [1.0])
    [['a'], ['b', 'c']]
    >>> plan_waves([f"d{i}" for i in range(10)], 0, [0.1, 0.5, 1.0])
    [['d0'], ['d1', 'd2', 'd3', 'd4'], ['d5', 'd6', 'd7', 'd8', 'd9']]
    """
    devices = list(devices)
    waves: list[list[str]] = []
    done = 0
    if canary > 0 and devices:
        done = min(canary, len(devices))
        waves.append(devices[:done])
    for share in shares:
        upto = max(done + 1, math.ceil(share * len(devices))) if done < len(devices) else done
        upto = min(upto, len(devices))
        if upto > done:
            waves.append(devices[done:upto])
            done = upto
    return waves


def _numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON object, nested keys joined with ``_``."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_numbers(v, f"{prefix}{k}_" if isinstance(v, dict) else f"{prefix}{k}"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix.rstrip("_")] = float(data)
    return out


# -- state files ------------------------------------------------------------------------------
def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1, default=str) + "\n").encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def status(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The current (or last) rollout's persisted state, with ``controller_alive``."""
    data = _read_json(Path(state_dir) / STATE_FILE)
    if data is None:
        return None
    beat = data.get("heartbeat")
    alive = beat is not None and time.time() - float(beat) < _ALIVE_S and data.get("phase") in ("running", "aborting")
    data["controller_alive"] = bool(alive)
    return data


def format_status(data: dict[str, Any]) -> str:
    lines = [
        f"rollout {data['id']}: {data['model']} v{data['version']} to fleet {data['fleet']} — {data['phase']}"
        + (f" ({data['reason']})" if data.get("reason") else "")
        + ("" if data.get("controller_alive") or data["phase"] not in ("running", "aborting") else " [controller not running]"),
    ]
    for i, wave in enumerate(data["waves"]):
        parts = []
        for d in wave["devices"]:
            rec = data["devices"][d]
            parts.append(f"{d} {rec['status']}" + (f" [{rec['reason']}]" if rec.get("reason") else ""))
        lines.append(f"  wave {i} ({wave['status']}): " + ", ".join(parts))
    return "\n".join(lines)


def _register(state_dir: Path, b: PreparedBundle) -> None:
    reg = _read_json(state_dir / REGISTRY_FILE) or {}
    reg.setdefault(b.model, {})[str(b.version)] = {"path": str(b.path.resolve()), "sha256": b.sha256}
    _atomic_json(state_dir / REGISTRY_FILE, reg)


def _registered(state_dir: Path, model: str, version: int, sha256: str | None = None) -> PreparedBundle | None:
    """The registered bundle for ``model`` v``version`` if its file is still there (and matches ``sha256``)."""
    entry = ((_read_json(state_dir / REGISTRY_FILE) or {}).get(model) or {}).get(str(version))
    if not entry or (sha256 is not None and entry["sha256"] != sha256):
        return None
    try:
        b = read_bundle(entry["path"])
    except (OSError, PublishError):
        return None
    return b if b.sha256 == entry["sha256"] else None


def _rollback_announcement(
    key: Ed25519PrivateKey | str | Path,
    *,
    model: str,
    version: int,
    sha256: str,
    fleet: str,
    bundle: PreparedBundle | None,
    devices: Sequence[str] | None,
    rollout: str | None,
    keys: Signed | None,
    expires_in: float,
) -> ModelAnnouncement:
    """A signed rollback command to ``version``; transfer data only when the bundle is at hand."""
    t, env = sign_targets(
        key, bundle=bundle, model=model, version=version, sha256=sha256, fleet=fleet, devices=devices,
        downgrade=True, rollout=rollout, expires_in=expires_in,
    )  # fmt: skip
    if bundle is not None:
        return announcement_of(t, env, keys)
    return _hint_only(t, env, keys)


def _hint_only(t: Targets, env: Signed, keys: Signed | None) -> ModelAnnouncement:
    """An announcement for targets without transfer data (devices act on the signed targets only;
    these plain fields are placeholders)."""
    return ModelAnnouncement(
        model=t.model, version=t.version, bundle_id=t.sha256[:32], sha256=t.sha256, size=1, chunk_size=1,
        chunk_sha256=[t.sha256], filename=f"{t.model}-v{t.version}.bundle.tar", published_at=t.issued_at,
        targets=env, keys=keys,
    )  # fmt: skip


# -- the controller ---------------------------------------------------------------------------
class Rollout:
    """One staged rollout; :meth:`run` blocks until it succeeded, was rolled back, or failed to start."""

    def __init__(
        self,
        bundle: str | Path,
        broker: str,
        *,
        key: str | Path | Ed25519PrivateKey,
        state_dir: str | Path,
        fleet: str = "default",
        canary: int = 0,
        waves: Sequence[float] = (1.0,),
        select: dict[str, str] | None = None,
        abort_if: Sequence[str] = (),
        gate_timeout: float = 600.0,
        soak: float = 0.0,
        require_gate: bool = False,
        expires_in: float = DEFAULT_EXPIRES_S,
        keylist: str | Path | None = None,
        promote: bool | None = None,
        discover_s: float = 3.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        devices: Sequence[str] | None = None,
        rollback: bool = False,
    ) -> None:
        self.bundle = read_bundle(bundle, chunk_size)
        #: going back to an older version on purpose: no refusal when the fleet announces a newer one,
        #: and the targets are signed as a downgrade
        self.rollback = rollback
        self.broker = broker
        self.key = key
        self.state_dir = Path(state_dir)
        self.fleet = fleet
        self.canary = canary
        self.shares = list(waves)
        self.select = dict(select or {})
        self.rules = parse_rules(abort_if)
        self.gate_timeout = gate_timeout
        self.soak = soak
        self.require_gate = require_gate
        self.expires_in = expires_in
        self.keys = load_keylist(keylist, key)
        self.promote = (not self.select and devices is None) if promote is None else promote
        self.discover_s = discover_s
        self.only_devices = list(devices) if devices is not None else None
        b = self.bundle
        self.id = f"{b.model}-v{b.version}-{utcnow().strftime('%Y%m%dT%H%M%S')}"
        self.lock = threading.RLock()
        self.state: dict[str, Any] = {}
        self.baseline: dict[str, dict[str, float]] = {}
        self.latest: dict[str, dict[str, float]] = {}
        self._last_write = 0.0
        self._view: FleetView | None = None

    # -- persisted state --------------------------------------------------------------------
    def _write(self, force: bool = True) -> None:
        now = time.time()
        if not force and now - self._last_write < HEARTBEAT_S:
            return
        with self.lock:
            self.state["heartbeat"] = now
            self.state["updated_at"] = utcnow().isoformat()
            if "devices" in self.state:  # relative rules need them after a controller restart (see _resume)
                self.state["baselines"] = {d: dict(self.baseline[d]) for d in self.state["devices"] if d in self.baseline}
            _atomic_json(self.state_dir / STATE_FILE, self.state)
        self._last_write = now

    def _log(self, message: str, *args: Any) -> None:
        text = message % args if args else message
        logger.info(text)
        with self.lock:
            self.state.setdefault("log", []).append(f"{utcnow().isoformat(timespec='seconds')} {text}")
            self.state["log"] = self.state["log"][-200:]

    def _device(self, d: str) -> dict[str, Any]:
        return self.state["devices"][d]

    def _set(self, d: str, status: str, reason: str | None = None, **extra: Any) -> None:
        with self.lock:
            rec = self._device(d)
            if rec["status"] == status and not extra and reason == rec.get("reason"):
                return
            rec.update(status=status, reason=reason, updated_at=utcnow().isoformat(), **extra)
        self._log("%s: %s%s", d, status, f" ({reason})" if reason else "")

    # -- watching devices -------------------------------------------------------------------
    def _on_device(self, device: str, leaf: str, payload: Any) -> None:
        with self.lock:
            if device not in self.state.get("devices", {}):
                if leaf == "telemetry":
                    self.baseline[device] = _numbers(payload.get("data", {}))
                return
            rec = self._device(device)
            if leaf == "telemetry":
                numbers = _numbers(payload.get("data", {}))
                if rec["status"] in ("pending",):
                    self.baseline[device] = numbers
                else:
                    self.latest[device] = numbers
                return
            if leaf == "state" and isinstance(payload, DeviceState):
                self._from_state(device, rec, payload)
                return
            if leaf != "events" or not isinstance(payload, dict):
                return
            kind, detail = payload.get("kind"), payload.get("detail") or {}
            version = detail.get("version")
            phase = self.state["phase"]
            if phase == "running" and version == self.bundle.version and rec["status"] not in ("pending", "failed", "gate_failed"):
                if kind in ("gate_passed", "gate_failed"):
                    rec["figures"] = detail.get("figures") or _numbers({k: v for k, v in detail.items() if k != "version"})
                    rec["gate"] = kind
                if kind == "gate_failed":
                    self._set(device, "gate_failed", detail.get("reason") or "gate_failed")
                elif kind in ("refused", "failed"):
                    if kind == "refused" and (
                        detail.get("reason") in UNVERIFIED_REASONS or detail.get("sha256") not in (None, self.bundle.sha256)
                    ):  # a refusal of someone else's (unverifiable) document says nothing about this rollout
                        self._log("%s: refused %s (not this rollout's document; ignored)", device, detail.get("reason"))
                    elif detail.get("reason") in TRANSIENT_REASONS:
                        if rec.get("unhealthy") != detail.get("reason"):
                            rec["unhealthy"] = detail.get("reason")
                            self._log("%s: device unhealthy (%s %s); it retries, waiting", device, kind, detail.get("reason"))
                    elif rec["status"] != "active":
                        self._set(device, "failed", detail.get("reason") or kind)
                elif kind in _PROGRESS and rec["status"] in _PROGRESS:
                    if kind in ("downloaded", "received", "verified", "gate_passed", "active") and rec.pop("unhealthy", None):
                        self._log("%s: healthy again (%s)", device, kind)
                    if _PROGRESS.index(kind) > _PROGRESS.index(rec["status"]):
                        self._set(device, kind)
            elif rec["status"] == "rolling_back":
                prev = rec.get("previous") or {}
                if kind in ("active", "rolled_back") and version == prev.get("version"):
                    self._set(device, "rolled_back")
                elif kind == "refused" and detail.get("reason") == "rollback_unavailable":
                    self._set(device, "rollback_failed", "rollback_unavailable")

    def _from_state(self, device: str, rec: dict[str, Any], s: DeviceState) -> None:
        digest = s.model.digest if s.model else None
        if rec["status"] == "rolling_back":
            prev = rec.get("previous") or {}
            if digest is not None and digest == prev.get("digest"):
                self._set(device, "rolled_back")
            return
        if self.state["phase"] != "running" or rec["status"] in ("pending", "failed", "gate_failed"):
            return
        if s.gate is not None and s.gate.version == self.bundle.version and s.gate.outcome == "gate_failed":
            rec["figures"] = dict(s.gate.figures)
            self._set(device, "gate_failed", s.gate.reason or "gate_failed")
        elif digest == self.bundle.sha256 and rec["status"] != "active":
            if s.gate is not None and s.gate.version == self.bundle.version:
                rec["gate"], rec["figures"] = s.gate.outcome, dict(s.gate.figures)
            self._set(device, "active")

    def _metrics(self, d: str) -> dict[str, float]:
        rec = self._device(d)
        return {**self.latest.get(d, {}), **{k: float(v) for k, v in (rec.get("figures") or {}).items() if isinstance(v, (int, float))}}

    def _breach(self, devices: Sequence[str]) -> str | None:
        """The first abort rule that hits, as a reason; None while healthy."""
        with self.lock:
            recs = {d: self._device(d) for d in devices}
            counts = {
                "failed": sum(r["status"] == "failed" for r in recs.values()),
                "gate_failed": sum(r["status"] == "gate_failed" for r in recs.values()),
            }
            for rule in self.rules:
                if rule.metric in counts:
                    if rule.breached(counts[rule.metric]):
                        bad = [d for d, r in recs.items() if r["status"] == rule.metric]
                        named = ", ".join(f"{d} ({recs[d].get('reason')})" for d in bad)
                        return f"{rule}: {named}"
                    continue
                for d, r in recs.items():
                    if r["status"] in ("pending", "assigned", "failed", "gate_failed"):
                        continue
                    value = self._metrics(d).get(rule.metric)
                    if rule.breached(value, self.baseline.get(d, {}).get(rule.metric)):
                        return f"{rule}: {d} reports {rule.metric}={value:g}"
        return None

    def _abort_requested(self) -> str | None:
        req = _read_json(self.state_dir / ABORT_FILE)
        if req and req.get("id") in (self.id, None):
            (self.state_dir / ABORT_FILE).unlink(missing_ok=True)
            return f"aborted by operator: {req.get('reason') or 'rollout abort'}"
        return None

    # -- running ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        current = status(self.state_dir)
        if current and current.get("controller_alive"):
            raise RolloutError(f"rollout {current['id']} is still running (edgeship rollout abort, or wait)")
        # a controller killed mid-rollout (same bundle): pick its waves up where they stopped
        resume = current if current and current.get("phase") in ("running", "aborting") and current.get("sha256") == self.bundle.sha256 else None
        b = self.bundle
        if resume is None:  # a new rollout: refuse what the fleet already announces (before any state is written)
            with Publisher(self.broker, fleet=self.fleet) as probe:
                check_newer(probe.announced(b.model), b, rollback=self.rollback)
        (self.state_dir / ABORT_FILE).unlink(missing_ok=True)
        _register(self.state_dir, b)
        view = self._view = FleetView(self.broker, self.fleet)
        view.listeners.append(self._on_device)
        view.start()
        pub = Publisher(self.broker, fleet=self.fleet)
        try:
            pub.connect()
            view.wait_quiet(quiet=0.5, at_most=self.discover_s)
            if resume is not None:
                return self._resume(resume, pub)
            return self._run(view, pub)
        finally:
            pub.close()
            view.close()
            self._write()

    def _eligible(self, view: FleetView) -> tuple[list[str], dict[str, str]]:
        skipped: dict[str, str] = {}
        eligible = []
        for d, v in sorted(view.snapshot().items()):
            if self.only_devices is not None and d not in self.only_devices:
                continue
            if v.state is None:
                skipped[d] = "no state"
            elif v.online is False:
                skipped[d] = "offline"
            elif v.state.model is not None and v.state.model.name != self.bundle.model:
                skipped[d] = f"runs {v.state.model.name}"
            elif any(v.attributes().get(k) != val for k, val in self.select.items()):
                skipped[d] = "not selected"
            else:
                eligible.append(d)
        return eligible, skipped

    def _run(self, view: FleetView, pub: Publisher) -> dict[str, Any]:
        b = self.bundle
        eligible, skipped = self._eligible(view)
        snapshot = view.snapshot()
        waves = plan_waves(eligible, self.canary, self.shares)
        self.state = {
            "id": self.id, "model": b.model, "version": b.version, "sha256": b.sha256, "bundle": str(b.path.resolve()),
            "fleet": self.fleet, "broker": self.broker, "phase": "running", "reason": None, "pid": os.getpid(),
            "started_at": utcnow().isoformat(), "select": self.select, "rules": [str(r) for r in self.rules],
            "gate_timeout": self.gate_timeout, "skipped": skipped,
            "waves": [{"devices": w, "status": "pending"} for w in waves],
            "devices": {
                d: {
                    "wave": i, "status": "pending", "reason": None,
                    "previous": ({"version": snapshot[d].version, "digest": snapshot[d].digest} if snapshot[d].version else None),
                }
                for i, w in enumerate(waves) for d in w
            },
        }  # fmt: skip
        if not waves:
            self.state.update(phase="failed", reason=f"no eligible devices (skipped: {skipped or 'none found'})")
            self._write()
            return self.state
        self._log("rollout %s: %d devices in %d waves %s", self.id, len(eligible), len(waves), [len(w) for w in waves])
        self._write()
        return self._waves(pub, 0)

    def _resume(self, saved: dict[str, Any], pub: Publisher) -> dict[str, Any]:
        """Continue the rollout a killed controller saved: its id, plan and device records; waves that
        succeeded stay done, the running one is assigned again (idempotent for devices already on it)."""
        self._restore(saved)
        start = next((i for i, w in enumerate(saved["waves"]) if w["status"] != "succeeded"), len(saved["waves"]))
        self._log("controller restarted: resuming rollout %s at wave %d (phase %s)", self.id, start, saved["phase"])
        # what devices did while no controller watched: their retained state (read during discovery)
        for d, v in (self._view.snapshot() if self._view is not None else {}).items():
            if d in self.state["devices"] and v.state is not None:
                self._on_device(d, "state", v.state)
        self._write()
        if saved["phase"] == "aborting":
            return self._abort(pub, saved.get("reason") or "resumed abort")
        return self._waves(pub, start)

    def _restore(self, saved: dict[str, Any]) -> None:
        """Take over a saved rollout's state and the baselines its relative rules compare with.

        >>> r = Rollout.__new__(Rollout); r.lock, r.baseline = threading.RLock(), {"a": {"x": 9.0}}
        >>> r._restore({"id": "m-v2", "devices": {"a": {"status": "active"}}, "baselines": {"a": {"x": 3.0}}})
        >>> r.baseline
        {'a': {'x': 3.0}}
        """
        saved.pop("controller_alive", None)
        with self.lock:
            self.state, self.id = saved, saved["id"]
            self.state["pid"] = os.getpid()
            # the figures devices reported before they were assigned: telemetry heard during this
            # discovery comes from devices already on the new version and must not replace them
            for d, numbers in (saved.get("baselines") or {}).items():
                rec = saved["devices"].get(d)
                if rec is not None and (rec["status"] != "pending" or d not in self.baseline):
                    self.baseline[d] = {k: float(v) for k, v in numbers.items()}
            for d, rec in saved["devices"].items():
                if rec["status"] != "pending" and d not in (saved.get("baselines") or {}):
                    self.baseline.pop(d, None)  # no figure from before the rollout: relative rules cannot judge it

    def _waves(self, pub: Publisher, start: int) -> dict[str, Any]:
        b = self.bundle
        waves = [w["devices"] for w in self.state["waves"]]
        pub.put_chunks(b)
        pub.retain_versions(b)  # older versions' chunks beyond the newest few are cleared
        pub.serve(b)
        if self.keys is not None:
            pub.publish_keylist(self.keys)
        for i, wave in enumerate(waves[start:], start):
            self.state["waves"][i]["status"] = "running"
            for d in wave:
                if self._device(d)["status"] == "active":
                    continue  # reached before the controller was restarted
                t, env = sign_targets(self.key, bundle=b, fleet=self.fleet, devices=[d], rollout=self.id, expires_in=self.expires_in,
                                      downgrade=self.rollback)  # fmt: skip
                pub.assign(d, announcement_of(t, env, self.keys), rollout=self.id)
                self._set(d, "assigned", assigned_at=utcnow().isoformat())
            pub.flush()
            self._write()
            reason = self._watch_wave(i, wave)
            if reason is not None:
                self.state["waves"][i]["status"] = "failed"
                return self._abort(pub, reason)
            self.state["waves"][i]["status"] = "succeeded"
            self._log("wave %d succeeded", i)
            self._write()
        if self.promote:
            t, env = sign_targets(self.key, bundle=b, fleet=self.fleet, rollout=self.id, expires_in=self.expires_in,
                                  downgrade=self.rollback)  # fmt: skip
            pub.announce(announcement_of(t, env, self.keys))
            self._log("promoted: the fleet announcement is now v%d", b.version)
        self.state.update(phase="succeeded")
        self._write()
        return self.state

    def _watch_wave(self, i: int, wave: list[str]) -> str | None:
        """None when the wave succeeded (after the soak); else why to abort."""
        deadline = time.monotonic() + self.gate_timeout
        healthy_since: float | None = None
        reached = [d for w in self.state["waves"][: i + 1] for d in w["devices"]]
        blind_logged = False
        while True:
            view = self._view
            if view is not None and not view.alive():
                # never act on a dead view: no timeout, no breach, no success while blind
                if not blind_logged:
                    self._log("the fleet view is not receiving (dead loop or no connection): waiting, not acting")
                    blind_logged = True
                view.ensure_alive()
                deadline += 0.05
                healthy_since = None
                time.sleep(0.05)
                continue
            blind_logged = False
            reason = self._abort_requested() or self._breach(reached)
            if reason:
                return reason
            with self.lock:
                done = all(
                    self._device(d)["status"] == "active" and (not self.require_gate or self._device(d).get("gate") == "gate_passed")
                    for d in wave
                )
            now = time.monotonic()
            if done:
                healthy_since = healthy_since or now
                if now - healthy_since >= self.soak:
                    return None
            elif now > deadline:
                with self.lock:
                    late = [f"{d} ({self._device(d)['status']})" for d in wave if self._device(d)["status"] != "active"]
                    unhealthy = [d for d in wave if self._device(d)["status"] != "active" and self._device(d).get("unhealthy")]
                if late and len(unhealthy) == len(late) and len(unhealthy) < len(wave):
                    # only devices with a transient fault of their own (disk full, read-only) are late: the
                    # model is not at fault; they keep their retained assignment and retry by themselves
                    for d in unhealthy:
                        self._set(d, "unhealthy", self._device(d)["unhealthy"])
                    return None
                if late and len(unhealthy) == len(late):
                    why = ", ".join(f"{d} ({self._device(d)['unhealthy']})" for d in unhealthy)
                    return f"no healthy device in wave {i} within {self.gate_timeout:g} s: {why} (device faults, not the model)"
                return f"gate timeout: no success from {', '.join(late)} within {self.gate_timeout:g} s"
            self._write(force=False)
            time.sleep(0.05)

    def _abort(self, pub: Publisher, reason: str) -> dict[str, Any]:
        self.state.update(phase="aborting", reason=reason)
        self._log("ABORT: %s", reason)
        self._write()
        digests = {d: v.digest for d, v in self._view.snapshot().items()} if self._view is not None else {}
        _send_rollbacks(self.state, pub, self.key, self.state_dir, self.keys, self.expires_in, self._set, digests)
        deadline = time.monotonic() + self.gate_timeout
        while time.monotonic() < deadline:
            with self.lock:
                waiting = [d for d, r in self.state["devices"].items() if r["status"] == "rolling_back"]
            if not waiting:
                break
            self._write(force=False)
            time.sleep(0.05)
        with self.lock:
            for d, r in self.state["devices"].items():
                if r["status"] == "rolling_back":
                    self._set(d, "rollback_failed", "no answer")
            bad = [d for d, r in self.state["devices"].items() if r["status"] == "rollback_failed"]
        self.state["phase"] = "rollback_incomplete" if bad else "rolled_back"
        self._write()
        return self.state


def _send_rollbacks(
    state: dict[str, Any],
    pub: Publisher,
    key: Any,
    state_dir: Path,
    keys: Signed | None,
    expires_in: float,
    set_status: Callable[..., None],
    digests: dict[str, str | None],
) -> None:
    """Signed rollback commands to every device the rollout reached (replacing its retained assignment,
    even where it never activated the new version); later waves keep nothing."""
    served: set[str] = set()
    for d, rec in state["devices"].items():
        if rec["status"] == "pending":
            continue  # never assigned: nothing to undo
        prev = rec.get("previous")
        if not prev:
            pub.assign(d, None)  # no earlier version to go back to: clear the assignment
            set_status(d, "kept", "no previous version")
            continue
        bundle = _registered(state_dir, state["model"], prev["version"], prev["digest"])
        if bundle is not None and bundle.bundle_id not in served:
            pub.put_chunks(bundle)
            pub.serve(bundle)
            served.add(bundle.bundle_id)
        ann = _rollback_announcement(
            key, model=state["model"], version=prev["version"], sha256=prev["digest"], fleet=state["fleet"],
            bundle=bundle, devices=[d], rollout=state["id"], keys=keys, expires_in=expires_in,
        )  # fmt: skip
        pub.assign(d, ann, rollout=state["id"])
        set_status(d, "rolled_back" if digests.get(d) == prev["digest"] else "rolling_back")
    pub.flush()


def abort(
    state_dir: str | Path,
    *,
    reason: str = "rollout abort",
    broker: str | None = None,
    key: str | Path | None = None,
    wait: float = 30.0,
) -> dict[str, Any]:
    """Ask the running controller to abort (it rolls back); with no live controller, roll back here
    (needs ``broker`` and ``key``). Returns the state after."""
    state_dir = Path(state_dir)
    current = status(state_dir)
    if current is None:
        raise RolloutError(f"no rollout in {state_dir}")
    if current.get("controller_alive"):
        _atomic_json(state_dir / ABORT_FILE, {"id": current["id"], "reason": reason, "at": utcnow().isoformat()})
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            now = status(state_dir) or current
            if now["phase"] not in ("running", "aborting"):
                return now
            time.sleep(0.2)
        return status(state_dir) or current
    if current["phase"] not in ("running", "aborting", "succeeded"):
        return current
    if broker is None or key is None:
        raise RolloutError("the controller is not running: give --broker and --key to roll back from here")
    state = dict(current)
    state.update(phase="aborting", reason=f"aborted by operator: {reason}")

    def set_status(d: str, s: str, r: str | None = None, **extra: Any) -> None:
        state["devices"][d].update(status=s, reason=r, updated_at=utcnow().isoformat(), **extra)

    with FleetView(broker, state["fleet"]) as view:
        view.wait_quiet(quiet=0.4, at_most=3.0)
        digests = {d: v.digest for d, v in view.snapshot().items()}
    with Publisher(broker, fleet=state["fleet"]).connect() as pub:
        _send_rollbacks(state, pub, key, state_dir, load_keylist(None, key), DEFAULT_EXPIRES_S, set_status, digests)
        # the devices answer on their own; the state records the commands sent
    state["phase"] = "rolled_back"
    state.pop("controller_alive", None)
    _atomic_json(state_dir / STATE_FILE, state)
    return state


def rollback(
    broker: str,
    *,
    to: int,
    key: str | Path,
    fleet: str = "default",
    model: str | None = None,
    bundle: str | Path | None = None,
    devices: Sequence[str] | None = None,
    state_dir: str | Path | None = None,
    expires_in: float = DEFAULT_EXPIRES_S,
    keylist: str | Path | None = None,
) -> ModelAnnouncement:
    """``edgeship rollback --to VERSION``: a signed rollback command to every device of ``fleet`` (the
    fleet's announcement) or to ``devices`` (per-device assignments). The bundle comes from ``bundle``
    or the rollout registry; without it, devices that still hold the version roll back locally and the
    others refuse (``rollback_unavailable``)."""
    b = read_bundle(bundle) if bundle is not None else None
    if b is None and state_dir is not None:
        reg = _read_json(Path(state_dir) / REGISTRY_FILE) or {}
        names = [model] if model else list(reg)
        for name in names:
            if str(to) in (reg.get(name) or {}):
                b = _registered(Path(state_dir), name, to)
                model = name
                break
    if b is None:
        raise RolloutError(f"no bundle for version {to}: give --bundle (or roll it out once with --state-dir)")
    if b.version != to:
        raise RolloutError(f"{b.path.name} is version {b.version}, not {to}")
    keys = load_keylist(keylist, key)
    with Publisher(broker, fleet=fleet).connect() as pub:
        pub.put_chunks(b)
        if keys is not None:
            pub.publish_keylist(keys)
        if devices:
            ann = None
            for d in devices:
                ann = _rollback_announcement(
                    key, model=b.model, version=b.version, sha256=b.sha256, fleet=fleet, bundle=b, devices=[d],
                    rollout=None, keys=keys, expires_in=expires_in,
                )  # fmt: skip
                pub.assign(d, ann)
            pub.flush()
            assert ann is not None
            return ann
        ann = _rollback_announcement(
            key, model=b.model, version=b.version, sha256=b.sha256, fleet=fleet, bundle=b, devices=None,
            rollout=None, keys=keys, expires_in=expires_in,
        )  # fmt: skip
        pub.announce(ann)
        return ann

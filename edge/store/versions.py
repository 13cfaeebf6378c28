"""Version history, crash recovery, history-aware pruning and rollback for the model store.

:mod:`edge.store.model_store` keeps verified version folders and the atomic ``active.json`` pointer. This module
adds ``<state>/history.json`` (written atomically, under ``<state>/history.lock``)::

    {"activations": [{"version": 1, "digest": "…", "at": "…"}, {"version": 2, …}],
     "rolled_back": [{"version": 3, "digest": "…", "to": 2, "at": "…", "reported": false}]}

- **activations**: every version the agent made active, oldest first (the active one last). Only a
  version that was loaded, warmed up and passed the on-device gate is ever activated.
- **rolled_back**: versions taken back by a rollback. The agent does not fetch them again (their
  announcement may still be retained on the broker) until something newer comes.

Crash safety (the kill -9 matrix, ``tests/integration/test_crash_matrix.py``): every step of an
update either leaves ``active.json`` on the old version or moves it, in one rename, to a version
that is fully verified and gated. :func:`recover` runs at start-up before anything is served and
tidies what a crash can leave: it finishes an interrupted rollback, removes version folders of
interrupted installs (unpacked but never activated: they were never gated), and brings the history
in line with the pointer. Temp folders of an interrupted unpack or prune start with ``.`` and are
removed by :meth:`edge.store.model_store.ModelStore.clean_stray`.

Rollback goes back one version, offline, on the store (``edgeship agent rollback --state-dir DIR
--trust PUBKEY``): the previous activated version that still verifies becomes active by the same
atomic pointer write; a running agent picks it up on restart (or at once through
:meth:`edge.agent.Agent.rollback`).

>>> # h = VersionHistory(state_dir); h.record_activation(3, digest); rollback(store, h) -> (3, 2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge.store.crash import crash_point
from models.fsutil import atomic_write_bytes
from edge.store.model_store import ModelStore
from models.bundle import BundleError, verify_unpacked

__all__ = ["VersionHistory", "RollbackError", "recover", "prune", "rollback", "HISTORY_FILE"]

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
_LOCK_FILE = "history.lock"
_MAX_ENTRIES = 200  # the file stays small on a device that updates for years


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


class RollbackError(RuntimeError):
    """There is nothing verified to go back to (or the store has no active version)."""


@dataclasses.dataclass
class _Data:
    activations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    rolled_back: list[dict[str, Any]] = dataclasses.field(default_factory=list)


class VersionHistory:
    """``<state_dir>/history.json``. Every change is read-modify-write under an exclusive file lock,
    so the agent and ``edgeship agent rollback`` never lose each other's writes."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self.path = self.root / HISTORY_FILE
        self.lock_path = self.root / _LOCK_FILE

    # -- reading ----------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.path.exists()

    def _read(self) -> _Data:
        try:
            raw = json.loads(self.path.read_bytes())
            return _Data(
                activations=[
                    {"version": int(a["version"]), "digest": str(a["digest"]), "at": str(a.get("at", ""))}
                    for a in raw.get("activations", [])
                ],
                rolled_back=[
                    {
                        "version": int(r["version"]),
                        "digest": str(r["digest"]),
                        "to": int(r["to"]),
                        "at": str(r.get("at", "")),
                        "reported": bool(r.get("reported", False)),
                    }
                    for r in raw.get("rolled_back", [])
                ],
            )
        except FileNotFoundError:
            return _Data()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.error("%s is unreadable, starting a new history: %s", self.path, exc)
            return _Data()

    def activations(self) -> list[dict[str, Any]]:
        """Activated versions, oldest first: ``{"version", "digest", "at"}``."""
        return self._read().activations

    def rolled_back(self) -> list[dict[str, Any]]:
        """Rolled-back versions: ``{"version", "digest", "to", "at", "reported"}``."""
        return self._read().rolled_back

    def is_rolled_back(self, digest: str) -> bool:
        return any(r["digest"] == digest for r in self._read().rolled_back)

    # -- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _edit(self) -> Iterator[_Data]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self._read()
                yield data
                data.activations = data.activations[-_MAX_ENTRIES:]
                data.rolled_back = data.rolled_back[-_MAX_ENTRIES:]
                body = {"activations": data.activations, "rolled_back": data.rolled_back}
                atomic_write_bytes(self.path, json.dumps(body, indent=1).encode() + b"\n")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def record_activation(self, version: int, digest: str) -> None:
        """``version`` became active (after its pointer write); it is no longer rolled back."""
        current = self._read()
        last = current.activations[-1] if current.activations else None
        unchanged = last is not None and (last["version"], last["digest"]) == (version, digest)
        if unchanged and self.exists and all(r["digest"] != digest for r in current.rolled_back):
            return
        with self._edit() as data:
            last = data.activations[-1] if data.activations else None
            if last is None or (last["version"], last["digest"]) != (version, digest):
                data.activations.append({"version": int(version), "digest": digest, "at": _now()})
            data.rolled_back = [r for r in data.rolled_back if r["digest"] != digest]

    def take_unreported_rollbacks(self) -> int:
        """How many rollbacks no agent has counted yet (``edgeship_model_rollbacks_total``); marks them."""
        if not any(not r["reported"] for r in self.rolled_back()):
            return 0
        with self._edit() as data:
            n = sum(not r["reported"] for r in data.rolled_back)
            for r in data.rolled_back:
                r["reported"] = True
        return n

    def ensure(self) -> None:
        """Create the file if it does not exist yet (marks the store as managed by this history)."""
        if not self.exists:
            with self._edit():
                pass


# -- start-up recovery -------------------------------------------------------------------------
def _remove_version_dir(store: ModelStore, version: int) -> None:
    """Delete a version folder so that a crash midway never leaves a half folder under its number:
    rename it to a ``.``-name first (atomic), then delete (strays are removed at start-up)."""
    src = store.version_dir(version)
    if not src.exists():
        return
    trash = store.models_dir / f".removed-{version}-{os.getpid()}"
    os.rename(src, trash)
    crash_point("during_prune")
    shutil.rmtree(trash, ignore_errors=True)


def recover(store: ModelStore, history: VersionHistory) -> set[int]:
    """At start-up, before serving: finish what a crash interrupted. Returns versions not to serve
    (rolled back). Steps:

    1. an interrupted rollback (the pointer names a rolled-back digest) is completed: the pointer
       moves to the last activation that verifies;
    2. version folders of interrupted installs — not activated, not rolled back, and newer than the
       active version (or any, when none is active) — are removed: they were never gated. Only done
       once the store has a history (older stores keep every folder);
    3. the active version is recorded as the last activation if the crash came between the pointer
       write and the history write.
    """
    store.clean_stray()
    for stray in history.root.glob(f".{HISTORY_FILE}.*"):  # a history write cut short
        stray.unlink(missing_ok=True)
    managed = history.exists
    rolled = {r["digest"]: r["version"] for r in history.rolled_back()}
    acts = history.activations()
    pointer = store.active()
    if pointer is not None and pointer.digest in rolled:
        for a in reversed(acts):
            if a["digest"] in rolled or a["version"] == pointer.version:
                continue
            try:
                bundle = verify_unpacked(store.version_dir(a["version"]), store.trusted)
            except BundleError:
                continue
            if bundle.digest == a["digest"]:
                logger.warning("completing the interrupted rollback of v%d to v%d", pointer.version, a["version"])
                pointer = store.activate(a["version"])
                break
    if managed:
        activated = {a["version"] for a in acts} | set(rolled.values())
        for v in store.versions():
            if v not in activated and (pointer is None or v > pointer.version):
                logger.warning("removing version %d: an install that was interrupted before activation", v)
                _remove_version_dir(store, v)
    if pointer is not None and (not acts or (acts[-1]["version"], acts[-1]["digest"]) != (pointer.version, pointer.digest)):
        if pointer.digest not in rolled:
            history.record_activation(pointer.version, pointer.digest)
    history.ensure()
    return set(rolled.values())


def prune(store: ModelStore, history: VersionHistory, keep: int) -> list[int]:
    """Keep the active version and the last ``keep`` activated versions (the ones a rollback can go
    back to); delete every other version folder, rolled-back ones included. Returns the removed."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    pointer = store.active()
    keep_set = {pointer.version} if pointer is not None else set()
    for a in reversed(history.activations()):
        if len(keep_set) >= keep and a["version"] not in keep_set:
            break
        keep_set.add(a["version"])
    removed = [v for v in store.versions() if v not in keep_set]
    for v in removed:
        _remove_version_dir(store, v)
        logger.info("pruned version %d", v)
    store.clean_stray()
    return removed


# -- rollback -----------------------------------------------------------------------------------
def _verified(store: ModelStore, version: int, digest: str | None = None) -> bool:
    try:
        bundle = verify_unpacked(store.version_dir(version), store.trusted)
    except BundleError as exc:
        logger.warning("version %d cannot be rolled back to: %s", version, exc)
        return False
    return bundle.manifest.version == version and (digest is None or bundle.digest == digest)


def rollback_target(store: ModelStore, history: VersionHistory, to: int | None = None) -> int:
    """The version a rollback would activate (:class:`RollbackError` if none)."""
    pointer = store.active()
    if pointer is None:
        raise RollbackError("no version is active; there is nothing to roll back from")
    if to is not None:
        if to == pointer.version:
            raise RollbackError(f"version {to} is already active")
        if to not in store.versions() or not _verified(store, to):
            raise RollbackError(f"version {to} is not installed or does not verify")
        return to
    rolled = {r["digest"] for r in history.rolled_back()}
    seen: set[int] = {pointer.version}
    for a in reversed(history.activations()):
        v = a["version"]
        if v in seen or a["digest"] in rolled:
            continue
        seen.add(v)
        if v in store.versions() and _verified(store, v, a["digest"]):
            return v
    raise RollbackError(
        f"no earlier activated version is installed and verified (active v{pointer.version}; installed {store.versions()})"
    )


def rollback(store: ModelStore, history: VersionHistory, to: int | None = None) -> tuple[int, int]:
    """Go back one version (or to ``to``): returns ``(from_version, to_version)``.

    The intent is written to the history first (the version leaving is marked rolled back), then
    the pointer moves atomically; a crash in between is completed by :func:`recover`.
    """
    target = rollback_target(store, history, to)
    pointer = store.active()
    assert pointer is not None
    with history._edit() as data:
        data.rolled_back = [r for r in data.rolled_back if r["digest"] != pointer.digest]
        data.rolled_back.append(
            {"version": pointer.version, "digest": pointer.digest, "to": target, "at": _now(), "reported": False}
        )
        last = max((i for i, a in enumerate(data.activations) if a["version"] == target), default=None)
        if last is None:
            digest = (store.version_dir(target) / "bundle.sha256").read_text().strip()
            data.activations.append({"version": target, "digest": digest, "at": _now()})
        else:
            data.activations = data.activations[: last + 1]
    crash_point("during_rollback")
    store.activate(target)
    logger.warning("rolled back from version %d to %d", pointer.version, target)
    return pointer.version, target

"""What a device trusts: pinned signing keys (``--trust``) and signing keys named by a root-signed
key list (``--trust-root``), minus every revoked key.

The newest verified key list is kept on disk (``<state>/trust/keylist.json``, written atomically)
so the device keeps trusting rotated keys across restarts; a list older than the one held is
refused (``keylist_rollback``), so a replayed list cannot un-revoke a key. ``keys`` is a live list:
the model store holds the same object, so a rotation applies at once to bundle verification.

>>> # trust = TrustStore("/var/lib/edgeship", pinned=[], roots=["/etc/edgeship/root.pub"])
>>> # trust.update(announcement.keys)   # True when the key list changed
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.fsutil import atomic_write_bytes
from models.envelope import Signed
from models.keys import KeyList, KeyListError, verify_keylist
from models.signing import key_id, load_public_key

__all__ = ["TrustStore"]

logger = logging.getLogger(__name__)

KeySpec = str | os.PathLike[str] | Ed25519PublicKey


def _load(keys: Sequence[KeySpec]) -> list[Ed25519PublicKey]:
    return [k if isinstance(k, Ed25519PublicKey) else load_public_key(k) for k in keys]


class TrustStore:
    """The device's trusted signing keys; thread-safe."""

    def __init__(self, state_dir: str | os.PathLike[str], *, pinned: Sequence[KeySpec] = (), roots: Sequence[KeySpec] = ()) -> None:
        self.pinned = _load(pinned)
        self.roots = _load(roots)
        self.path = Path(state_dir) / "trust" / "keylist.json"
        self.keylist: KeyList | None = None
        self.envelope: Signed | None = None
        self.keys: list[Ed25519PublicKey] = []  # live: shared with the model store
        self._lock = threading.Lock()
        if self.roots and self.path.exists():
            try:
                env = Signed.model_validate_json(self.path.read_bytes())
                # an expired list on disk still names the keys last trusted; only new lists must be current
                self.keylist = verify_keylist(env, self.roots, now=dt.datetime.min.replace(tzinfo=dt.timezone.utc))
                self.envelope = env
            except (OSError, ValueError, KeyListError) as exc:
                logger.error("stored key list is unusable, ignoring it: %s", exc)
        self._recompute()

    def _recompute(self) -> None:
        revoked = set(self.keylist.revoked) if self.keylist else set()
        keys = [k for k in self.pinned if key_id(k) not in revoked]
        if self.keylist is not None:
            keys += [k for k in self.keylist.public_keys() if key_id(k) not in {key_id(p) for p in keys}]
        self.keys[:] = keys

    @property
    def keylist_version(self) -> int | None:
        return self.keylist.version if self.keylist else None

    def update(self, envelope: Signed) -> bool:
        """Take a newer root-signed key list. True if it changed what is trusted, False if it is the one
        held; raises :class:`KeyListError` when refused (no root configured, bad signature, expired,
        older than the one held, or the same version with other content)."""
        if not self.roots:
            raise KeyListError("no_root", "this device has no root key (--trust-root): key lists are ignored")
        keylist = verify_keylist(envelope, self.roots)
        with self._lock:
            held = self.keylist
            if held is not None:
                if keylist.version < held.version:
                    raise KeyListError(
                        "keylist_rollback", f"key list v{keylist.version} is older than the v{held.version} held"
                    )
                if keylist.version == held.version:
                    if keylist.document() != held.document():
                        raise KeyListError(
                            "keylist_conflict", f"key list v{keylist.version} differs from the one held with that version"
                        )
                    return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, envelope.model_dump_json().encode())
            self.keylist, self.envelope = keylist, envelope
            self._recompute()
        logger.info(
            "key list v%d: trusting %s, revoked %s",
            keylist.version,
            [key_id(k) for k in self.keys],
            keylist.revoked,
            extra={"keylist_version": keylist.version},
        )
        return True

    def stale(self, now: dt.datetime | None = None) -> bool:
        """True when the held key list has expired: the device keeps serving what it has but refuses
        new updates (``keylist_expired``) until a current list arrives."""
        kl = self.keylist
        now = now or dt.datetime.now(dt.timezone.utc)
        return bool(kl is not None and kl.expires_at is not None and kl.expires_at <= now)

    def is_revoked(self, keyid: str) -> bool:
        return bool(self.keylist and keyid in self.keylist.revoked)

    def info(self) -> dict[str, Any]:
        """For the retained DeviceState."""
        return {
            "keylist_version": self.keylist_version,
            "keys": [key_id(k) for k in self.keys],
            "revoked": list(self.keylist.revoked) if self.keylist else [],
            "roots": [key_id(k) for k in self.roots],
            "expires_at": self.keylist.expires_at.isoformat() if self.keylist and self.keylist.expires_at else None,
            "stale": self.stale(),
        }

    def __repr__(self) -> str:
        return f"<TrustStore keys={json.dumps([key_id(k) for k in self.keys])} keylist=v{self.keylist_version}>"

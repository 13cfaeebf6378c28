"""The key hierarchy: a ROOT key signs the list of model-signing keys; devices trust the root.

Devices are flashed with the root public key only (``edgeship agent --trust-root root.pub``). The
signing keys that may sign bundles and delivery metadata come from a :class:`KeyList` signed by the
root, with a version number that only goes up. It travels retained on ``<fleet>/trust/keylist``
and inside every announcement, so rotating a signing key (add the new one, sign with it) and
revoking a compromised one (a newer list without it, naming it in ``revoked``) reach every device
without reflashing. A device keeps the newest list it verified and refuses an older one (a replayed
list cannot un-revoke a key).

The root key signs nothing but key lists and lives offline (``edgeship keys init-root``,
``edgeship keys sign``, ``edgeship keys revoke``: :mod:`cloud.fleet.root`).

>>> import datetime as dt
>>> from models.envelope import sign_document
>>> from models.signing import generate_keypair
>>> root, root_pub = generate_keypair()
>>> signing, signing_pub = generate_keypair()
>>> kl = KeyList(version=1, issued_at=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), keys=[KeyEntry.of(signing_pub)])
>>> verify_keylist(sign_document(kl.document(), root), [root_pub]).version
1
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AwareDatetime, Field, ValidationError

from models.strict import Strict

from models.envelope import MalformedDocument, Signed, verify_document
from models.signing import SignatureError, key_id

__all__ = ["KeyEntry", "KeyList", "KeyListError", "verify_keylist", "public_from_b64", "public_to_b64"]

_KEYID = r"^[0-9a-f]{16}$"


class KeyListError(Exception):
    """A key list is refused. ``reason``: ``bad_signature``, ``malformed``, ``expired``,
    ``keylist_rollback`` (older than the one held) or ``keylist_conflict`` (same version, other content)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def public_to_b64(public: Ed25519PublicKey) -> str:
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def public_from_b64(value: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(value, validate=True))


_Strict = Strict  # the contract's one strict base (models.strict)


class KeyEntry(_Strict):
    keyid: str = Field(pattern=_KEYID, description="First 16 hex of sha256(raw public key).")
    public: str = Field(max_length=64, description="Base64 of the raw 32-byte Ed25519 public key.")
    name: str | None = Field(default=None, max_length=100, description="Who holds it (e.g. ci-2024).")
    roles: list[Literal["targets"]] = Field(default=["targets"], description="What it may sign: bundles and targets.")

    @classmethod
    def of(cls, public: Ed25519PublicKey, name: str | None = None) -> KeyEntry:
        return cls(keyid=key_id(public), public=public_to_b64(public), name=name)

    def public_key(self) -> Ed25519PublicKey:
        key = public_from_b64(self.public)
        if key_id(key) != self.keyid:
            raise ValueError(f"key list entry {self.keyid}: the public key does not match its key id")
        return key


class KeyList(_Strict):
    """The root-signed list of model-signing keys."""

    type: Literal["keylist"] = "keylist"
    schema_version: Literal[1] = 1
    version: int = Field(ge=1, description="Only goes up; a device refuses a lower one than it holds.")
    issued_at: AwareDatetime
    expires_at: AwareDatetime | None = Field(default=None, description="After this the list is refused; None = never.")
    keys: list[KeyEntry] = Field(default_factory=list, max_length=64)
    revoked: list[str] = Field(default_factory=list, max_length=1024, description="Key ids never to trust again.")

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def public_keys(self) -> list[Ed25519PublicKey]:
        """The signing keys it trusts (revoked ones left out)."""
        revoked = set(self.revoked)
        return [k.public_key() for k in self.keys if k.keyid not in revoked]


def verify_keylist(
    envelope: Signed, roots: Iterable[Ed25519PublicKey], *, now: dt.datetime | None = None
) -> KeyList:
    """The :class:`KeyList` in ``envelope`` if a root key signed it and it has not expired."""
    try:
        doc, _ = verify_document(envelope, roots)
    except MalformedDocument as exc:
        raise KeyListError("malformed", f"key list: {exc}") from exc
    except SignatureError as exc:
        raise KeyListError("bad_signature", f"key list: {exc}") from exc
    try:
        keylist = KeyList.model_validate(doc)
        for entry in keylist.keys:
            entry.public_key()
    except (ValidationError, ValueError) as exc:
        raise KeyListError("malformed", f"key list does not match the schema: {str(exc).splitlines()[0]}") from exc
    now = now or dt.datetime.now(dt.timezone.utc)
    if keylist.expires_at is not None and keylist.expires_at <= now:
        raise KeyListError("expired", f"key list v{keylist.version} expired at {keylist.expires_at.isoformat()}")
    return keylist

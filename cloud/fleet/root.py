"""The root key and the key list it signs (``edgeship keys init-root | sign | revoke | publish``).

The root key stays offline; it signs only :class:`models.keys.KeyList` documents. The list lives in
one file (``keylist.json``, a signed envelope) next to the signing key by default, where
``edgeship publish`` and ``edgeship rollout`` pick it up and ship it inside every announcement::

    edgeship keys init-root --out keys/                 # keys/root.key (0600), keys/root.pub -> devices
    edgeship keys init --out keys/                      # keys/signing.key, keys/signing.pub
    edgeship keys sign --root keys/root.key --signing keys/signing.pub     # keys/keylist.json v1
    edgeship keys init --out keys2/ && edgeship keys sign --root keys/root.key --signing keys2/signing.pub \\
        --keylist keys/keylist.json                     # rotation: v2 trusts both
    edgeship keys revoke KEYID --root keys/root.key --keylist keys/keylist.json   # v3: KEYID never again
    edgeship keys publish --keylist keys/keylist.json --broker mqtts://…           # retained, every device

>>> # init_root("keys/"); add_signing_key("keys/keylist.json", "keys/root.key", "keys/signing.pub")
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.envelope import Signed, sign_document
from models.fsutil import atomic_write_bytes
from models.keys import KeyEntry, KeyList, KeyListError, verify_keylist
from models.messages import utcnow
from models.signing import key_id, load_private_key, load_public_key, write_keypair

__all__ = ["DEFAULT_KEYLIST_EXPIRES_S", "init_root", "read_keylist", "add_signing_key", "revoke_signing_key"]

#: Key lists expire by default (re-sign before then: ``edgeship keys sign`` with the same key): a device
#: whose list expired keeps serving but refuses updates and says so (``keylist_stale``), so a
#: withheld revocation cannot be hidden for ever.
DEFAULT_KEYLIST_EXPIRES_S = 180 * 24 * 3600


def init_root(out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``root.key`` (PKCS#8 PEM, mode 0600; keep it offline) and ``root.pub`` (flash it on devices)."""
    return write_keypair(out_dir, name="root", overwrite=overwrite)


def read_keylist(path: str | os.PathLike[str], root: Ed25519PrivateKey) -> KeyList | None:
    """The key list at ``path`` (None if there is none); it must verify under ``root``."""
    path = Path(path)
    if not path.exists():
        return None
    env = Signed.model_validate_json(path.read_bytes())
    return verify_keylist(env, [root.public_key()], now=dt.datetime.min.replace(tzinfo=dt.timezone.utc))


def _write(path: Path, keylist: KeyList, root: Ed25519PrivateKey) -> Signed:
    env = sign_document(keylist.document(), root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, env.model_dump_json(indent=1).encode() + b"\n", mode=0o644)
    return env


def _next(old: KeyList | None, expires_in: float | None, **changes: object) -> KeyList:
    now = utcnow()
    fields = old.model_dump() if old else {"keys": [], "revoked": []}
    fields.update(changes)
    fields.update(
        version=(old.version + 1) if old else 1,
        issued_at=now,
        expires_at=now + dt.timedelta(seconds=expires_in if expires_in else DEFAULT_KEYLIST_EXPIRES_S),
    )
    return KeyList.model_validate(fields)


def add_signing_key(
    keylist_path: str | os.PathLike[str],
    root_key: str | os.PathLike[str],
    signing_pub: str | os.PathLike[str],
    *,
    name: str | None = None,
    expires_in: float | None = None,
) -> KeyList:
    """Trust ``signing_pub`` (a new list version, signed by the root). A revoked key is never re-added."""
    root = load_private_key(root_key)
    old = read_keylist(keylist_path, root)
    public = load_public_key(signing_pub)
    kid = key_id(public)
    if old is not None and kid in old.revoked:
        raise KeyListError("revoked", f"key {kid} was revoked; generate a new signing key")
    keys = [k for k in (old.keys if old else []) if k.keyid != kid] + [KeyEntry.of(public, name)]
    new = _next(old, expires_in, keys=[k.model_dump() for k in keys])
    _write(Path(keylist_path), new, root)
    return new


def revoke_signing_key(
    keylist_path: str | os.PathLike[str],
    root_key: str | os.PathLike[str],
    key: str,
    *,
    expires_in: float | None = None,
) -> KeyList:
    """Revoke ``key`` (a key id, or a public key file): a new list version without it, naming it in ``revoked``."""
    root = load_private_key(root_key)
    old = read_keylist(keylist_path, root)
    if old is None:
        raise FileNotFoundError(f"{keylist_path}: no key list to revoke from")
    kid = key_id(load_public_key(key)) if Path(key).is_file() else key
    if len(kid) != 16 or any(c not in "0123456789abcdef" for c in kid):
        raise ValueError(f"{key!r} is neither a public key file nor a 16-hex key id")
    keys = [k.model_dump() for k in old.keys if k.keyid != kid]
    revoked = sorted(set(old.revoked) | {kid})
    new = _next(old, expires_in, keys=keys, revoked=revoked)
    _write(Path(keylist_path), new, root)
    return new

"""Ed25519 keys and signatures (``cryptography``).

>>> from models.signing import generate_keypair, sign, verify, key_id
>>> private, public = generate_keypair()
>>> verify(b"payload", sign(b"payload", private), [public])  # returns the key id that matched
... # doctest: +ELLIPSIS
'...'
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SignatureEnvelope",
    "SignatureError",
    "generate_keypair",
    "key_id",
    "sign",
    "verify",
    "load_private_key",
    "load_public_key",
    "write_keypair",
]


class SignatureError(Exception):
    """A signature is missing, malformed, by an unknown key, or does not match."""


class SignatureEnvelope(BaseModel):
    """``signature.json`` in a bundle: who signed the manifest bytes, and the signature."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str = Field(default="ed25519", pattern="^ed25519$")
    keyid: str = Field(pattern=r"^[0-9a-f]{16}$", description="First 16 hex of sha256(raw public key).")
    signature: str = Field(description="Base64 of the 64-byte Ed25519 signature.")


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(payload: bytes, private: Ed25519PrivateKey) -> SignatureEnvelope:
    return SignatureEnvelope(
        keyid=key_id(private.public_key()), signature=base64.b64encode(private.sign(payload)).decode()
    )


def verify(payload: bytes, envelope: SignatureEnvelope, trusted: Iterable[Ed25519PublicKey]) -> str:
    """Check ``envelope`` over ``payload`` against the trusted keys; return the key id or raise."""
    keys = {key_id(k): k for k in trusted}
    key = keys.get(envelope.keyid)
    if key is None:
        raise SignatureError(f"signed by key {envelope.keyid}, which this device does not trust")
    try:
        raw = base64.b64decode(envelope.signature, validate=True)
        key.verify(raw, payload)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"signature by key {envelope.keyid} does not match the manifest") from exc
    return envelope.keyid


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def write_keypair(
    out_dir: str | os.PathLike[str], *, name: str = "signing", overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``<name>.key`` (PKCS#8 PEM, mode 0600) and ``<name>.pub`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    if not overwrite and (key_path.exists() or pub_path.exists()):
        raise FileExistsError(f"{key_path} or {pub_path} exists; refusing to overwrite a {name} key")
    private, public = generate_keypair()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_path, pub_path

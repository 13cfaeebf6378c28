"""Signed JSON documents (TUF-style): ``{"signed": {...}, "signatures": [{"keyid", "sig"}]}``.

The signature is Ed25519 over the canonical JSON of ``signed`` (sorted keys, no spaces), so the
document can travel inside any other message and be re-serialised without breaking it. Used for
the delivery metadata (:mod:`models.targets`) and the signing-key list (:mod:`models.keys`).

>>> from models.signing import generate_keypair
>>> private, public = generate_keypair()
>>> env = sign_document({"type": "example", "n": 1}, private)
>>> verify_document(env, [public])[0]
{'type': 'example', 'n': 1}
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from models.canonical import canonical_json
from models.signing import SignatureError, key_id

__all__ = ["DocSignature", "MalformedDocument", "Signed", "canonical", "sign_document", "verify_document"]


class MalformedDocument(SignatureError):
    """The signed part cannot be canonicalised (NaN, Infinity, a value JSON cannot hold): it was
    never signed by anyone, so it is refused before any key is tried (reason ``malformed``)."""


canonical = canonical_json  # one rule for everything hashed or signed (models.manifest.canonical_json)


class DocSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keyid: str = Field(pattern=r"^[0-9a-f]{16}$", description="First 16 hex of sha256(raw public key).")
    sig: str = Field(max_length=200, description="Base64 of the 64-byte Ed25519 signature over canonical(signed).")


class Signed(BaseModel):
    """A signed document; ``signed`` is what was signed, as a plain JSON object."""

    model_config = ConfigDict(extra="forbid")

    signed: dict[str, Any] = Field(description="The document (JSON object) the signatures cover.")
    signatures: list[DocSignature] = Field(min_length=1, max_length=8, description="One or more signatures.")


def sign_document(document: dict[str, Any], *keys: Ed25519PrivateKey) -> Signed:
    """Sign ``document`` (a JSON-able dict) with each key."""
    if not keys:
        raise ValueError("sign_document needs at least one key")
    payload = canonical(document)
    sigs = [DocSignature(keyid=key_id(k.public_key()), sig=base64.b64encode(k.sign(payload)).decode()) for k in keys]
    return Signed(signed=json.loads(payload), signatures=sigs)


def verify_document(envelope: Signed, trusted: Iterable[Ed25519PublicKey]) -> tuple[dict[str, Any], str]:
    """Return ``(document, keyid)`` if any signature is by a trusted key and matches; else raise
    :class:`models.signing.SignatureError` naming what was wrong."""
    keys = {key_id(k): k for k in trusted}
    try:
        payload = canonical(envelope.signed)
    except (ValueError, TypeError, RecursionError) as exc:  # NaN / Infinity / too deep: never signed
        raise MalformedDocument(f"signed part is not canonical JSON: {exc}") from None
    unknown = []
    for s in envelope.signatures:
        key = keys.get(s.keyid)
        if key is None:
            unknown.append(s.keyid)
            continue
        try:
            key.verify(base64.b64decode(s.sig, validate=True), payload)
        except (InvalidSignature, ValueError):
            raise SignatureError(f"signature by key {s.keyid} does not match the document") from None
        return envelope.signed, s.keyid
    raise SignatureError(f"signed by key(s) {', '.join(unknown)}, which this device does not trust")

"""Signed delivery metadata ("targets", after TUF): what a device may install, where, and until when.

Signed by a model-signing key at publishing time (the bundle itself was signed when it was made),
carried in every announcement and per-device assignment. A device acts only on what it says:

- **version, model, bundle sha256, size, chunk size and the sha256 of every chunk** — so chunks or
  files of two versions can never be combined (mix-and-match), and a transfer never takes more bytes
  than declared (endless data);
- **fleet, devices, hardware, attributes** — a device outside them refuses (wrong software);
- **issued_at / expires_at** — an expired document is refused and reported (indefinite freeze); a
  device also ignores a document issued before the newest it acted on (replay);
- **downgrade** — only a signed rollback command may install an older version (rollback attack).

>>> import datetime as dt
>>> from models.envelope import sign_document
>>> from models.signing import generate_keypair
>>> key, pub = generate_keypair()
>>> now = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
>>> t = Targets(model="m", version=2, sha256="ab" * 32, fleet="default", issued_at=now,
...             expires_at=now + dt.timedelta(days=1))
>>> verify_targets(sign_document(t.document(), key), [pub], now=now).version
2
>>> verify_targets(sign_document(t.document(), key), [pub], now=now + dt.timedelta(days=2))
Traceback (most recent call last):
...
models.targets.TargetsError: targets for m v2 expired at 2024-01-02T00:00:00+00:00
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AwareDatetime, Field, ValidationError

from models.strict import Strict

from models.envelope import MalformedDocument, Signed, verify_document
from models.messages import Identifier, ModelAnnouncement, Sha256Hex
from models.signing import SignatureError

__all__ = ["MAX_CLOCK_SKEW", "CandidateOrder", "verify_candidate", "BundleRef", "Targets", "TargetsError", "verify_targets", "applicability", "announcement_of"]


class TargetsError(Exception):
    """Delivery metadata refused. ``reason``: ``unsigned``, ``bad_signature``, ``malformed``, ``expired``, ``future``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_Strict = Strict  # the contract's one strict base (models.strict)


class BundleRef(_Strict):
    """How to fetch and check the bundle's bytes."""

    bundle_id: Identifier = Field(description="Transfer id: the first 32 hex digits of sha256.")
    size: int = Field(gt=0, le=2**31, description="Exact size in bytes: a transfer never takes more.")
    chunk_size: int = Field(gt=0, le=16 * 2**20)
    chunk_sha256: list[Sha256Hex] = Field(min_length=1, description="sha256 of every chunk, in order.")
    filename: str = Field(max_length=200, pattern=r"^[A-Za-z0-9._-]+$")


class Targets(_Strict):
    """The signed document (``type: targets``)."""

    type: Literal["targets"] = "targets"
    schema_version: Literal[1] = 1
    model: Identifier
    version: int = Field(ge=1)
    sha256: Sha256Hex = Field(description="sha256 of the whole bundle file (binds manifest, members and version).")
    bundle: BundleRef | None = Field(
        default=None, description="Transfer data; None only in a rollback to a version devices still hold."
    )
    fleet: Identifier = Field(description="The fleet it is for.")
    devices: list[Identifier] | None = Field(default=None, max_length=10000, description="Only these devices; None = all.")
    hardware: list[str] | None = Field(
        default=None, max_length=32, description="Hardware it is built for (platform machine or the device's "
        "'hardware' attribute, e.g. aarch64, rpi4); None = any."
    )
    attributes: dict[str, str] = Field(default_factory=dict, description="Devices must report these attributes.")
    downgrade: bool = Field(default=False, description="A signed rollback command: install even if older.")
    rollout: str | None = Field(default=None, max_length=64, description="Rollout id (reporting only).")
    issued_at: AwareDatetime
    expires_at: AwareDatetime

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def consistent(self) -> str | None:
        """None, or what is inconsistent in the transfer data."""
        b = self.bundle
        if b is None:
            return None
        if b.bundle_id != self.sha256[:32]:
            return "bundle_id is not the first 32 hex digits of sha256"
        if -(-b.size // b.chunk_size) != len(b.chunk_sha256):
            return f"{b.size} bytes in chunks of {b.chunk_size} make {-(-b.size // b.chunk_size)} chunks, " \
                f"{len(b.chunk_sha256)} hashes listed"
        return None


#: How far in the future a document's ``issued_at`` may be (signer and device clocks differ a little).
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)


def verify_targets(
    envelope: Signed | None,
    trusted: Iterable[Ed25519PublicKey],
    *,
    now: dt.datetime | None = None,
    max_skew: dt.timedelta = MAX_CLOCK_SKEW,
) -> Targets:
    """The :class:`Targets` in ``envelope`` if a trusted signing key signed it, it is consistent, it
    has not expired and it is not dated in the future beyond ``max_skew`` (reason ``future``: one
    document dated 2090 must not outrank every later one); else :class:`TargetsError`."""
    if envelope is None:
        raise TargetsError("unsigned", "announcement carries no signed targets document")
    try:
        doc, _ = verify_document(envelope, trusted)
    except MalformedDocument as exc:
        raise TargetsError("malformed", f"targets: {exc}") from exc
    except SignatureError as exc:
        raise TargetsError("bad_signature", f"targets: {exc}") from exc
    try:
        t = Targets.model_validate(doc)
    except ValidationError as exc:
        raise TargetsError("malformed", f"targets do not match the schema: {str(exc).splitlines()[0]}") from exc
    problem = t.consistent()
    if problem:
        raise TargetsError("malformed", f"targets for {t.model} v{t.version}: {problem}")
    now = now or dt.datetime.now(dt.timezone.utc)
    if t.expires_at <= now:
        raise TargetsError("expired", f"targets for {t.model} v{t.version} expired at {t.expires_at.isoformat()}")
    if t.issued_at > now + max_skew:
        raise TargetsError(
            "future", f"targets for {t.model} v{t.version} are issued {t.issued_at.isoformat()}, after this device's "
            f"clock ({now.isoformat()}) plus {int(max_skew.total_seconds())} s"
        )
    return t


def applicability(
    t: Targets, *, fleet: str, device_id: str, hardware: Iterable[str], attributes: Mapping[str, str]
) -> tuple[str, str] | None:
    """None if ``t`` is meant for this device, else ``(reason, message)``: ``wrong_fleet``,
    ``wrong_device``, ``wrong_hardware`` or ``not_selected``."""
    if t.fleet != fleet:
        return "wrong_fleet", f"{t.model} v{t.version} is for fleet {t.fleet}, this device is in {fleet}"
    if t.devices is not None and device_id not in t.devices:
        return "wrong_device", f"{t.model} v{t.version} names other devices"
    have = {h for h in hardware if h}
    if t.hardware is not None and not have & set(t.hardware):
        return "wrong_hardware", f"{t.model} v{t.version} is for {sorted(t.hardware)}, this device is {sorted(have)}"
    for k, v in t.attributes.items():
        if attributes.get(k) != v:
            return "not_selected", f"{t.model} v{t.version} is for {k}={v}, this device has {k}={attributes.get(k)}"
    return None


def announcement_of(t: Targets, envelope: Signed, keys: Signed | None = None) -> ModelAnnouncement:
    """The announcement carrying ``envelope``; its plain fields are copied from the signed ones.
    On a device the result of this on a *verified* document is what the transfer uses."""
    if t.bundle is None:
        raise ValueError(f"targets for {t.model} v{t.version} carry no transfer data")
    b = t.bundle
    return ModelAnnouncement(
        model=t.model,
        version=t.version,
        bundle_id=b.bundle_id,
        sha256=t.sha256,
        size=b.size,
        chunk_size=b.chunk_size,
        chunk_sha256=list(b.chunk_sha256),
        filename=b.filename,
        published_at=t.issued_at,
        targets=envelope,
        keys=keys,
    )


class CandidateOrder(_Strict):
    """A signed ``candidate`` command (``type: candidate``): run installed ``version`` (with bundle
    digest ``sha256``) beside the live model on the named ``devices`` of ``fleet``; ``version`` None
    unloads. Signed by a model-signing key like targets: whatever changes what serves predictions is."""

    type: Literal["candidate"] = "candidate"
    schema_version: Literal[1] = 1
    model: Identifier
    version: int | None = Field(default=None, ge=1, description="Installed version to load; None = unload.")
    sha256: Sha256Hex | None = Field(default=None, description="The installed bundle's sha256 (required with version).")
    fleet: Identifier
    devices: list[Identifier] = Field(min_length=1, max_length=10000, description="The devices it is for (never all).")
    mode: Literal["shadow", "ab"] = "shadow"
    share: float = Field(default=1.0, ge=0.0, le=1.0)
    issued_at: AwareDatetime
    expires_at: AwareDatetime

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def verify_candidate(
    envelope: Signed | None, trusted: Iterable[Ed25519PublicKey], *, now: dt.datetime | None = None,
    max_skew: dt.timedelta = MAX_CLOCK_SKEW,
) -> CandidateOrder:
    """The :class:`CandidateOrder` in ``envelope`` if a trusted key signed it and it is current; else
    :class:`TargetsError` (``unsigned``, ``bad_signature``, ``malformed``, ``expired``, ``future``)."""
    if envelope is None:
        raise TargetsError("unsigned", "candidate command carries no signed order")
    try:
        doc, _ = verify_document(envelope, trusted)
    except MalformedDocument as exc:
        raise TargetsError("malformed", f"candidate: {exc}") from exc
    except SignatureError as exc:
        raise TargetsError("bad_signature", f"candidate: {exc}") from exc
    try:
        order = CandidateOrder.model_validate(doc)
    except ValidationError as exc:
        raise TargetsError("malformed", f"candidate order does not match the schema: {str(exc).splitlines()[0]}") from exc
    if order.version is not None and order.sha256 is None:
        raise TargetsError("malformed", "candidate order names a version without its sha256")
    now = now or dt.datetime.now(dt.timezone.utc)
    if order.expires_at <= now:
        raise TargetsError("expired", f"candidate order expired at {order.expires_at.isoformat()}")
    if order.issued_at > now + max_skew:
        raise TargetsError("future", f"candidate order is issued {order.issued_at.isoformat()}, in the future")
    return order

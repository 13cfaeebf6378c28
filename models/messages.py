"""Payloads exchanged over MQTT, declared once and versioned (``schema_version``).

The core protocol is MQTT 3.1.1: correlation ids and expiry travel in the payload, never in MQTT 5
properties, so the same messages work on Mosquitto, EMQX, HiveMQ and the demo's embedded broker.
"""

from __future__ import annotations

import datetime as dt
import errno
from typing import Annotated, Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from models.envelope import Signed

__all__ = [
    "Sha256Hex",
    "Identifier",
    "ModelAnnouncement",
    "ActiveModel",
    "UpdateOutcome",
    "DeviceState",
    "DeviceEvent",
    "DeviceCommand",
    "ChunkRequest",
    "UpdateOutcomeKind",
    "TransferProgressKind",
    "OtherEventKind",
    "EVENT_KINDS",
    "TransientReason",
    "TRANSIENT_REASONS",
    "DISK_REASONS",
    "UnverifiedReason",
    "UNVERIFIED_REASONS",
    "disk_reason",
    "utcnow",
]

# Every time in a message must carry a time zone (AwareDatetime): a naive one is refused at parse,
# never compared with an aware one later (attack: one device's naive timestamp killed the fleet view).

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,64}$")]


#: The steps of a model update a device reports, in ``UpdateOutcome.outcome`` and as events of that kind.
UpdateOutcomeKind = Literal["received", "verified", "gate_passed", "gate_failed", "active", "rolled_back", "refused", "failed"]
#: Transfer progress before an outcome (``edge.delivery.updater``); a rollout reads them as progress too.
TransferProgressKind = Literal["downloading", "downloaded"]
#: Every other event a device sends on ``<device>/events`` (the vocabulary the cloud understands).
OtherEventKind = Literal[
    "candidate",  # shadow / A-B candidate loaded, refused or dropped (edge.serving.mqtt)
    "clock_wrong",  # the clock is behind the newest signed time the device acted on
    "disk_recovered",  # a disk fault cleared (edge.delivery.updater)
    "transfer_stalled",  # chunks stopped arriving (asked again; a broker without persistence?)
    "keylist", "keylist_refused", "keylist_stale",  # the root-signed key list changed / was refused / expired
    "revoked_model",  # the served model's signing key was revoked (the agent's revocation policy)
    "telemetry_lost",  # messages held in memory during a disk fault were lost at a restart
    "sensor_reading",  # a reading from a serial device (firmware_bridge)
    "sales",  # actual sales the device learned (SalesActuals), for the fleet's retraining
]
EVENT_KINDS: frozenset[str] = frozenset(get_args(UpdateOutcomeKind) + get_args(TransferProgressKind) + get_args(OtherEventKind))

#: Failure reasons that say the *device* is unhealthy for now (its disk, its link, its broker), not
#: that the bundle is bad. A device never remembers them against the bundle's sha256 (it retries
#: by itself), and a rollout controller waits for such a device instead of counting it as a
#: refusal of the model. ``disk_full`` (ENOSPC/EDQUOT, or too little free space for the bundle,
#: unpacking room and the reserve), ``disk_readonly`` (EROFS: an SD card the kernel remounted
#: read-only), ``disk_io`` (EIO and other I/O errors); ``disk`` is the code of older agents.
TransientReason = Literal["stalled", "endless_data", "disk_full", "disk_readonly", "disk_io", "disk"]
TRANSIENT_REASONS: frozenset[str] = frozenset(get_args(TransientReason))
DISK_REASONS: frozenset[str] = frozenset({"disk_full", "disk_readonly", "disk_io", "disk"})
#: Refusals of documents that did not verify (issue 7): anyone who can publish can cause them, so they
#: never count as a device failure (a rollout ignores them).
UnverifiedReason = Literal["unsigned", "bad_signature", "malformed", "future"]
UNVERIFIED_REASONS: frozenset[str] = frozenset(get_args(UnverifiedReason))

_ERRNO_REASON = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "disk_readonly"}


def disk_reason(exc: BaseException) -> str | None:
    """The disk reason code of an ``OSError`` (``disk_full``, ``disk_readonly``, ``disk_io``), else None.

    >>> disk_reason(OSError(errno.ENOSPC, "No space left on device")), disk_reason(OSError(errno.EROFS, "ro"))
    ('disk_full', 'disk_readonly')
    >>> disk_reason(OSError(errno.EIO, "I/O error")), disk_reason(ValueError("x")), disk_reason(FileNotFoundError())
    ('disk_io', None, None)
    """
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    if exc.errno in _ERRNO_REASON:
        return _ERRNO_REASON[exc.errno]
    if exc.errno in (errno.EIO, errno.ENXIO, errno.ENODEV, errno.EUCLEAN if hasattr(errno, "EUCLEAN") else errno.EIO):
        return "disk_io"
    return None


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelAnnouncement(_Message):
    """Retained on ``models/<model>/announce``: the version every device of the fleet should run.

    The plain fields are hints; what a device acts on is ``targets``, delivery metadata signed by a
    model-signing key (:mod:`models.targets`: fleet, hardware, version, expiry, bundle size and
    every chunk hash), and ``keys``, the root-signed list of signing keys (:mod:`models.keys`).
    The same message, naming one device, is a per-device assignment on ``<device>/set``.
    """

    schema_version: Literal[1] = 1
    model: Identifier = Field(description="Model name, as in the bundle's manifest.")
    version: int = Field(ge=1, description="Model version in the bundle's manifest.")
    bundle_id: Identifier = Field(description="Transfer id: the first 32 hex digits of the bundle's sha256.")
    sha256: Sha256Hex = Field(description="sha256 of the whole bundle file.")
    size: int = Field(gt=0, le=2**31, description="Size of the bundle in bytes.")
    chunk_size: int = Field(gt=0, le=16 * 2**20, description="Bytes per chunk (the last may be shorter).")
    chunk_sha256: list[Sha256Hex] = Field(min_length=1, description="sha256 of every chunk, in order.")
    filename: str = Field(max_length=200, pattern=r"^[A-Za-z0-9._-]+$", description="Bundle file name.")
    published_at: AwareDatetime = Field(default_factory=utcnow, description="When it was published (UTC).")
    targets: Signed | None = Field(
        default=None, description="Signed delivery metadata (models.targets.Targets); devices refuse an announcement without it."
    )
    keys: Signed | None = Field(
        default=None, description="Root-signed signing-key list (models.keys.KeyList) current at publishing time."
    )


class DeviceCommand(_Message):
    """Retained on ``<device>/set``: a command to one device, sent by the cloud identity only.

    ``assign``: run the signed target in ``announcement`` (a rollout wave or a rollback). An empty
    retained payload clears the command.
    """

    schema_version: Literal[1] = 1
    command: Literal["assign"] = Field(description="What to do.")
    announcement: ModelAnnouncement | None = Field(default=None, description="For assign: the signed target.")
    rollout: str | None = Field(default=None, max_length=64, description="Rollout id, for reporting.")
    issued_at: AwareDatetime = Field(default_factory=utcnow)


class ChunkRequest(_Message):
    """On ``<device>/fetch``: a device asks for chunks it is waiting for (the bundle server re-publishes
    them retained). Sent only when a retained chunk did not arrive in time (the broker lost it)."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    bundle_id: Identifier
    ranges: list[tuple[int, int]] = Field(
        min_length=1, max_length=64, description="Half-open [start, end) chunk index ranges still missing."
    )
    chunk_size: int | None = Field(
        default=None,
        gt=0,
        le=16 * 2**20,
        description="The chunking of the signed announcement the device follows (a bundle server re-chunks to "
        "it, so publisher, server and rollout need no agreed --chunk-size); None: the server's own.",
    )
    at: AwareDatetime = Field(default_factory=utcnow)


class ActiveModel(_Message):
    name: str
    version: int
    digest: Sha256Hex = Field(description="sha256 of the bundle file this model came from.")
    variant: str = Field(description="Which variant of the bundle is served, e.g. tflite-int8.")
    runtime: str = Field(description="Runtime plugin serving it, e.g. litert.")
    providers: list[str] = Field(
        default_factory=list,
        description="Execution providers it runs on, e.g. [CUDAExecutionProvider, CPUExecutionProvider]; "
        "empty for the runtime's own CPU kernels (LiteRT).",
    )


class UpdateOutcome(_Message):
    version: int
    outcome: UpdateOutcomeKind
    reason: str | None = None
    figures: dict[str, float] = Field(
        default_factory=dict, description="Numbers behind the outcome, e.g. the on-device gate's nwrmsle and p99_abs_diff."
    )
    at: AwareDatetime = Field(default_factory=utcnow)


class DeviceState(_Message):
    """Retained on ``<device>/state``."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    fleet: Identifier
    status: Literal["starting", "serving", "no_model", "stopping"]
    model: ActiveModel | None = None
    last_update: UpdateOutcome | None = None
    runtimes: dict[str, str] = Field(default_factory=dict, description="Runtime plugin -> 'ok' or why not.")
    hardware: dict[str, str] = Field(default_factory=dict)
    http: str | None = Field(default=None, description="Where the device serves HTTP, if it does.")
    attributes: dict[str, str] = Field(
        default_factory=dict, description="Operator-set attributes rollouts select on (store_type, cluster, hardware…)."
    )
    delivery: dict[str, Any] | None = Field(
        default=None, description="Transfer in progress or last target: version, bundle_id, chunks have/total, rollout."
    )
    gate: UpdateOutcome | None = Field(
        default=None, description="The last on-device gate result (gate_passed / gate_failed, with its figures)."
    )
    trust: dict[str, Any] | None = Field(
        default=None, description="Trust state: root-signed key list version, trusted signing key ids."
    )
    updated_at: AwareDatetime = Field(default_factory=utcnow)


class DeviceEvent(_Message):
    """One event on ``<device>/events`` (update steps, refusals, errors)."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    kind: str = Field(max_length=64)
    at: AwareDatetime = Field(default_factory=utcnow)
    detail: dict[str, Any] = Field(default_factory=dict)
    seq: int | None = Field(
        default=None, ge=1, description="Per-device sequence number shared with telemetry (edge.monitoring.telemetry)."
    )

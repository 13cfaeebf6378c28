"""Payloads exchanged over MQTT, declared once and versioned (``schema_version``).

The core protocol is MQTT 3.1.1: correlation ids and expiry travel in the payload, never in MQTT 5
properties, so the same messages work on Mosquitto, EMQX, HiveMQ and the demo's embedded broker.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "Sha256Hex",
    "Identifier",
    "ModelAnnouncement",
    "ActiveModel",
    "UpdateOutcome",
    "DeviceState",
    "DeviceEvent",
    "utcnow",
]

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,64}$")]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelAnnouncement(_Message):
    """Retained on ``models/<model>/announce``: the version every device of the fleet should run.

    It is not signed (the bundle inside is); its hashes only let a device check what it received
    before it opens the bundle.
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
    published_at: dt.datetime = Field(default_factory=utcnow, description="When it was published (UTC).")


class ActiveModel(_Message):
    name: str
    version: int
    digest: Sha256Hex = Field(description="sha256 of the bundle file this model came from.")
    variant: str = Field(description="Which variant of the bundle is served, e.g. tflite-int8.")
    runtime: str = Field(description="Runtime plugin serving it, e.g. litert.")


class UpdateOutcome(_Message):
    version: int
    outcome: Literal["received", "verified", "active", "refused", "failed"]
    reason: str | None = None
    at: dt.datetime = Field(default_factory=utcnow)


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
    updated_at: dt.datetime = Field(default_factory=utcnow)


class DeviceEvent(_Message):
    """One event on ``<device>/events`` (update steps, refusals, errors)."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    kind: str = Field(max_length=64)
    at: dt.datetime = Field(default_factory=utcnow)
    detail: dict[str, Any] = Field(default_factory=dict)

"""Every MQTT topic edgeship uses, built and parsed here and nowhere else.

Layout (Home Assistant / zigbee2mqtt style)::

    <prefix>/<fleet>/<device>/availability      retained, "online" / "offline" (last will)
    <prefix>/<fleet>/<device>/state             retained JSON DeviceState
    <prefix>/<fleet>/<device>/set               commands to the device
    <prefix>/<fleet>/<device>/request/<name>    requests, answered on .../response/<name>
    <prefix>/<fleet>/<device>/events            JSON DeviceEvent stream
    <prefix>/<fleet>/<device>/telemetry         JSON TelemetryRecord stream (seq shared with events)
    <prefix>/<fleet>/models/<model>/announce    retained ModelAnnouncement (desired version)
    <prefix>/<fleet>/bundles/<bundle>/chunk/<i> retained bundle bytes, chunk i
    <prefix>/<fleet>/<device>/fetch             ChunkRequest: chunks a device waits for (bundle server)
    <prefix>/<fleet>/trust/keylist              retained root-signed signing-key list

>>> availability("default", "store-1")
'edgeship/default/store-1/availability'
>>> parse_chunk_topic(bundle_chunk("default", "ab12", 3))
('default', 'ab12', 3)
"""

from __future__ import annotations

import re

__all__ = [
    "PREFIX",
    "model_retained",
    "ID_PATTERN",
    "validate_id",
    "availability",
    "state",
    "command",
    "request",
    "response",
    "events",
    "telemetry",
    "feedback",
    "model_announce",
    "bundle_chunk",
    "bundle_chunks",
    "parse_chunk_topic",
    "device_wildcard",
    "fetch",
    "keylist",
    "probe",
]

PREFIX = "edgeship"
ID_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
_RESERVED = {"models", "bundles", "trust"}


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid fleet/device/model id (``[a-z0-9_-]{1,64}``), else raise."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ValueError(f"{what} {value!r} must match [a-z0-9_-]{{1,64}}")
    return value


def _device_base(fleet: str, device: str, prefix: str) -> str:
    validate_id(fleet, "fleet")
    validate_id(device, "device id")
    if device in _RESERVED:
        raise ValueError(f"device id {device!r} is reserved")
    return f"{prefix}/{fleet}/{device}"


def availability(fleet: str, device: str, prefix: str = PREFIX) -> str:
    return f"{_device_base(fleet, device, prefix)}/availability"


def state(fleet: str, device: str, prefix: str = PREFIX) -> str:
    return f"{_device_base(fleet, device, prefix)}/state"


def command(fleet: str, device: str, prefix: str = PREFIX) -> str:
    return f"{_device_base(fleet, device, prefix)}/set"


def request(fleet: str, device: str, name: str, prefix: str = PREFIX) -> str:
    return f"{_device_base(fleet, device, prefix)}/request/{validate_id(name, 'request name')}"


def response(fleet: str, device: str, name: str, prefix: str = PREFIX) -> str:
    return f"{_device_base(fleet, device, prefix)}/response/{validate_id(name, 'request name')}"


def events(fleet: str, device: str, prefix: str = PREFIX) -> str:
    return f"{_device_base(fleet, device, prefix)}/events"


def telemetry(fleet: str, device: str, prefix: str = PREFIX) -> str:
    """Periodic ``TelemetryRecord`` stream (not retained; sequence numbers shared with ``events``)."""
    return f"{_device_base(fleet, device, prefix)}/telemetry"


def feedback(fleet: str, device: str, prefix: str = PREFIX) -> str:
    """Staff feedback records (``models.feedback.FeedbackRecord``), spooled with their own sequence."""
    return f"{_device_base(fleet, device, prefix)}/feedback"


def device_wildcard(fleet: str, leaf: str, prefix: str = PREFIX) -> str:
    """Subscription filter for one leaf of every device, e.g. ``edgeship/default/+/state``."""
    return f"{prefix}/{validate_id(fleet, 'fleet')}/+/{leaf}"


def model_retained(fleet: str, model: str, prefix: str = PREFIX) -> str:
    """Retained index of the versions whose chunks the broker keeps for ``model`` (the cloud's
    bookkeeping for clearing older ones; devices never read it)."""
    return f"{prefix}/{validate_id(fleet, 'fleet')}/models/{validate_id(model, 'model name')}/retained"


def model_announce(fleet: str, model: str | None, prefix: str = PREFIX) -> str:
    """One model's announcement topic; with ``model=None`` the filter for every model's."""
    name = "+" if model is None else validate_id(model, "model name")
    return f"{prefix}/{validate_id(fleet, 'fleet')}/models/{name}/announce"


def bundle_chunk(fleet: str, bundle_id: str, index: int, prefix: str = PREFIX) -> str:
    if index < 0:
        raise ValueError("chunk index must be >= 0")
    return f"{bundle_chunks(fleet, bundle_id, prefix)[:-1]}{index}"


def bundle_chunks(fleet: str, bundle_id: str | None, prefix: str = PREFIX) -> str:
    """Subscription filter for every chunk of one bundle (``bundle_id=None``: of every bundle)."""
    bundle = "+" if bundle_id is None else validate_id(bundle_id, "bundle id")
    return f"{prefix}/{validate_id(fleet, 'fleet')}/bundles/{bundle}/chunk/+"


def fetch(fleet: str, device: str, prefix: str = PREFIX) -> str:
    """Where a device asks for chunks it waits for (``ChunkRequest``); the bundle server listens."""
    return f"{_device_base(fleet, device, prefix)}/fetch"


def probe(fleet: str, nonce: str, prefix: str = PREFIX) -> str:
    """A cloud client's own marker topic (never retained): a message published here after subscribing
    arrives after every retained message the subscription brought (the broker queues in order), so
    reading "what is retained on X" has a definite end instead of a guessed wait."""
    return f"{prefix}/{validate_id(fleet, 'fleet')}/cloud/probe/{validate_id(nonce, 'nonce')}"


def keylist(fleet: str, prefix: str = PREFIX) -> str:
    """Retained root-signed list of model-signing keys (:mod:`models.keys`)."""
    return f"{prefix}/{validate_id(fleet, 'fleet')}/trust/keylist"


def parse_chunk_topic(topic: str, prefix: str = PREFIX) -> tuple[str, str, int]:
    """``(fleet, bundle_id, index)`` of a chunk topic; ValueError if it is not one."""
    parts = topic.split("/")
    if len(parts) != 6 or parts[0] != prefix or parts[2] != "bundles" or parts[4] != "chunk":
        raise ValueError(f"not a chunk topic: {topic!r}")
    if not parts[5].isdigit():
        raise ValueError(f"chunk index must be a non-negative integer in {topic!r}")
    return validate_id(parts[1], "fleet"), validate_id(parts[3], "bundle id"), int(parts[5])

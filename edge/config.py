"""The agent's one root configuration (pydantic v2): device settings, never secrets.

Broker credentials come from the environment (``EDGESHIP_MQTT_USERNAME`` / ``_PASSWORD``, see
:mod:`models.broker`); model-version settings (contract, horizon, batch limit) come from the bundle.

>>> cfg = AgentConfig(device_id="store-1", state_dir="/var/lib/edgeship", trust=["/etc/edgeship/signing.pub"],
...                   http="[::1]:0", broker="mqtt://127.0.0.1:1883")
>>> cfg.http_address, cfg.broker_url.port
(('::1', 0), 1883)
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models import topics
from models.broker import BrokerURL
from models.topics import ID_PATTERN

__all__ = ["AgentConfig", "parse_host_port"]

_ID = ID_PATTERN.pattern
_VARIANT = r"^(tflite|onnx)-(fp32|fp16|dynamic|int8)$"
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%a-zA-Z]+)\]|(?P<host>[A-Za-z0-9.\-_]+)):(?P<port>\d{1,5})$")


def parse_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``"[::1]:0"`` → ``("::1", 0)`` (0 = any free port)."""
    m = _HOST_PORT.match(value)
    if not m:
        raise ValueError(f"{value!r} must be HOST:PORT (IPv6 as [ADDR]:PORT)")
    port = int(m["port"])
    if port > 65535:
        raise ValueError(f"{value!r}: port must be 0-65535")
    return (m["v6"] or m["host"]), port


class AgentConfig(BaseModel):
    """Settings of one agent process (one device)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(pattern=_ID, description="This device's id in topics and metrics, [a-z0-9_-]{1,64}.")
    fleet: str = Field(default="default", pattern=_ID, description="Fleet the device belongs to (topic level).")
    broker: str | None = Field(
        default=None,
        description="MQTT broker as mqtt://HOST:PORT or mqtts://HOST:PORT; None = no updates, serve only. "
        "Credentials only from EDGESHIP_MQTT_USERNAME / EDGESHIP_MQTT_PASSWORD.",
    )
    state_dir: Path = Field(description="Folder for model versions, the active pointer and downloads.")
    trust: list[Path] = Field(min_length=1, description="Public keys (PEM) whose signatures on bundles are trusted.")
    http: str | None = Field(
        default=None, description="Serve HTTP on HOST:PORT ([::1]:8080 for IPv6; port 0 = any free port); None = off."
    )
    model: str | None = Field(
        default=None, pattern=_ID, description="Accept only this model name's announcements; None = any model."
    )
    variants: list[str] | None = Field(
        default=None, description="Variant preference order (e.g. tflite-int8 onnx-fp32); None = the bundle's order."
    )
    runtime: str | None = Field(
        default=None,
        description="Force one runtime plugin for every variant (e.g. 'fake' in tests); None = by variant.",
    )
    threads: int = Field(default=1, ge=1, le=64, description="Threads each inference runtime may use.")
    keep_versions: int = Field(default=3, ge=1, le=100, description="Installed model versions kept on disk.")
    chunk_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds without a new chunk before a transfer is re-requested."
    )
    transfer_retries: int = Field(
        default=3, ge=0, description="Re-requests (re-subscriptions) of a stalled transfer before it is abandoned."
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest HTTP request body accepted (413 beyond)."
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval in seconds.")
    reconnect_min_s: float = Field(default=1.0, gt=0, description="First MQTT reconnect delay (doubles each try).")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="Longest MQTT reconnect delay.")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str | None) -> str | None:
        if value is not None:
            BrokerURL.parse(value)
        return value

    @field_validator("http")
    @classmethod
    def _check_http(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: list[str] | None) -> list[str] | None:
        for v in value or ():
            if not re.match(_VARIANT, v):
                raise ValueError(f"variant {v!r} must look like tflite-int8 or onnx-fp32")
        return value

    @field_validator("runtime")
    @classmethod
    def _check_runtime(cls, value: str | None) -> str | None:
        from edge.runtimes import REGISTRY

        if value is not None and value not in REGISTRY:
            raise ValueError(f"runtime {value!r} is not one of {sorted(REGISTRY)}")
        return value

    @field_validator("device_id")
    @classmethod
    def _check_device(cls, value: str) -> str:
        topics.availability("default", value)  # raises for reserved ids ("models", "bundles")
        return value

    @property
    def broker_url(self) -> BrokerURL | None:
        return BrokerURL.parse(self.broker) if self.broker else None

    @property
    def http_address(self) -> tuple[str, int] | None:
        return parse_host_port(self.http) if self.http else None

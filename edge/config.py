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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.serving.batching import BatchingConfig
from edge.monitoring.drift import DriftConfig
from edge.serving.online_state import OnlineStateConfig
from edge.monitoring.predlog import PredLogConfig
from edge.serving.shadow import CandidateConfig
from edge.monitoring.telemetry import TelemetryConfig
from models import topics
from models.broker import BrokerURL
from models.topics import ID_PATTERN
from models.variants import spec

__all__ = ["AgentConfig", "parse_host_port", "parse_option", "with_options"]

_ID = ID_PATTERN.pattern
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%a-zA-Z]+)\]|(?P<host>[A-Za-z0-9.\-_]+)):(?P<port>\d{1,5})$")


def parse_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` → ``("127.0.0.1", 8080)``; ``"[::1]:0"`` → ``("::1", 0)`` (0 = any free port);
    a bare port listens on loopback only: ``"8080"`` → ``("127.0.0.1", 8080)``."""
    if value.isdigit():
        value = f"127.0.0.1:{value}"
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
    trust: list[Path] = Field(
        default_factory=list,
        description="Model-signing public keys (PEM) trusted as they are (pinned); at least one of trust / trust_root.",
    )
    trust_root: list[Path] = Field(
        default_factory=list,
        description="Root public keys (PEM): signing keys are trusted when a root-signed key list names them.",
    )
    attributes: dict[str, str] = Field(
        default_factory=dict, description="Attributes reported in state for rollout selection, e.g. store_type=A."
    )
    transfer_window: int = Field(
        default=8, ge=1, le=256, description="Chunks requested at once (bounded in-flight) while receiving a bundle."
    )
    transfer_max_bps: int | None = Field(
        default=None, ge=1024, description="Cap on bundle download speed in bytes/s (metered uplinks); None = none."
    )
    http: str | None = Field(
        default=None, description="Serve HTTP on HOST:PORT ([::1]:8080 for IPv6; port 0 = any free port); None = off."
    )
    http_token_file: Path | None = Field(
        default=None,
        description="File whose first line is the bearer token HTTP writes (POST /v1/sales) need; else "
        "EDGESHIP_HTTP_TOKEN; with neither, writes are accepted from loopback clients only (edge.serving.auth).",
    )
    http_auth_reads: bool = Field(
        default=False, description="Require the bearer token for reading routes too (/v1/predict, /healthz, /metrics)."
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
    providers: list[str] | None = Field(
        default=None,
        description="ONNX Runtime execution providers in preference order (tensorrt, cuda, cpu or ORT names); "
        "those this device lacks are skipped, CPU closes the list; None = TensorRT, CUDA, CPU as available.",
    )
    gate: str = Field(
        default="require",
        pattern=r"^(require|if_present|off)$",
        description="On-device holdout gate before activation: require (a bundle without reference numbers "
        "fails), if_present (such a bundle is activated ungated), off.",
    )
    gate_margin: float = Field(
        default=0.02, ge=0, le=1, description="Relative NWRMSLE increase over the manifest's holdout figure the gate allows."
    )
    keep_versions: int = Field(default=3, ge=1, le=100, description="Installed model versions kept on disk.")
    chunk_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds without a new chunk before a transfer is re-requested."
    )
    transfer_retries: int = Field(
        default=3, ge=0, description="Re-requests (re-subscriptions) of a stalled transfer before it is abandoned."
    )
    disk_reserve_bytes: int = Field(
        default=16 << 20,
        ge=0,
        description="Free space a download must leave on the state folder's disk (beyond the bundle and room to "
        "unpack it); below it the transfer waits with reason disk_full.",
    )
    disk_retry_min_s: float = Field(
        default=1.0, gt=0, description="First wait before retrying a transfer or install a disk fault stopped."
    )
    disk_retry_max_s: float = Field(
        default=60.0, gt=0, description="Longest wait between retries after a disk fault (the wait doubles up to it)."
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Largest HTTP request body accepted (413 beyond)."
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval in seconds.")
    reconnect_min_s: float = Field(default=1.0, gt=0, description="First MQTT reconnect delay (doubles each try).")
    reconnect_max_s: float = Field(default=60.0, gt=0, description="Longest MQTT reconnect delay.")
    # -- serving extras (each section is defined beside the code it configures) -----------------
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig, description="Adaptive micro-batching of concurrent requests (edge.serving.batching)."
    )
    candidate: CandidateConfig = Field(
        default_factory=CandidateConfig, description="Shadow / A-B candidate model at start-up (edge.serving.shadow)."
    )
    online_state: OnlineStateConfig = Field(
        default_factory=OnlineStateConfig, description="Lag windows kept current from reported sales (edge.serving.online_state)."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Per-feature PSI drift (edge.monitoring.drift).")
    predlog: PredLogConfig = Field(
        default_factory=PredLogConfig, description="Sampled log of inputs and predictions (edge.monitoring.predlog)."
    )
    telemetry: TelemetryConfig = Field(
        default_factory=TelemetryConfig, description="Sequenced, spooled telemetry and events (edge.monitoring.telemetry)."
    )

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
            spec(v)  # ValueError naming the allowed variants (models.variants)
        return value

    @field_validator("providers")
    @classmethod
    def _check_providers(cls, value: list[str] | None) -> list[str] | None:
        from edge.runtimes.onnx import canonical_provider

        return [canonical_provider(p) for p in value] if value is not None else None

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

    @field_validator("attributes", mode="before")
    @classmethod
    def _attribute_pairs(cls, value: object) -> object:
        """``["store_type=A", "cluster=13"]`` (the agent's ``--attr`` options) → a dict."""
        if isinstance(value, (list, tuple)):
            pairs = {}
            for item in value:
                key, sep, val = str(item).partition("=")
                if not sep:
                    raise ValueError(f"attribute {item!r} must be KEY=VALUE")
                pairs[key.strip()] = val.strip()
            return pairs
        return value

    @field_validator("attributes")
    @classmethod
    def _check_attributes(cls, value: dict[str, str]) -> dict[str, str]:
        for k, v in value.items():
            if not ID_PATTERN.match(k) or not (0 < len(v) <= 64):
                raise ValueError(f"attribute {k}={v!r}: key must match [a-z0-9_-]{{1,64}}, value 1-64 characters")
        return value

    @model_validator(mode="after")
    def _check_trust(self) -> AgentConfig:
        if not self.trust and not self.trust_root:
            raise ValueError("trust: give at least one trusted signing key (--trust) or root key (--trust-root)")
        return self

    @property
    def broker_url(self) -> BrokerURL | None:
        return BrokerURL.parse(self.broker) if self.broker else None

    @property
    def http_address(self) -> tuple[str, int] | None:
        return parse_host_port(self.http) if self.http else None


def parse_option(text: str) -> tuple[tuple[str, ...], object]:
    """``"batching.max_wait_ms=2"`` → ``(("batching", "max_wait_ms"), 2)``: a nested setting from the
    command line (``--option``); the value is read as JSON, else kept as text.

    >>> parse_option("candidate.mode=ab"), parse_option("telemetry.interval_s=30")
    ((('candidate', 'mode'), 'ab'), (('telemetry', 'interval_s'), 30))
    """
    import json

    key, sep, raw = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(re.fullmatch(r"[a-z_][a-z0-9_]*", p) for p in path):
        raise ValueError(f"{text!r} must look like section.field=value, e.g. batching.max_wait_ms=2")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return path, value


def with_options(fields: dict, options: list[tuple[tuple[str, ...], object]]) -> dict:
    """``fields`` with each ``(path, value)`` of :func:`parse_option` set (nested dicts created)."""
    for path, value in options:
        node = fields
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{'.'.join(path)}: {part} is not a section")
        node[path[-1]] = value
    return fields

"""Test helpers for delivery: keys, signed announcements, a cloud-side watcher, in-process agents.

Everything talks to a real Mosquitto (``tests/conftest.py``) on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloud.fleet.publish import Publisher, read_bundle, sign_targets
from edge.agent import Agent
from edge.config import AgentConfig
from models import topics
from models.broker import BrokerURL, new_client
from models.envelope import Signed
from models.messages import DeviceState, ModelAnnouncement
from models.signing import generate_keypair
from models.targets import announcement_of
from tests.conftest import wait_for  # noqa: F401  (re-exported for the delivery tests)

__all__ = ["KeyPair", "keypair", "Watcher", "ship", "assign", "start_agent", "wait_for", "events_of"]


@dataclasses.dataclass
class KeyPair:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    key_path: Path
    pub_path: Path


def keypair(folder: Path, name: str = "signing") -> KeyPair:
    private, public = generate_keypair()
    folder.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    key_path.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub_path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public, key_path, pub_path)


class Watcher:
    """The cloud side's eyes: every device's events and state in a fleet, as they arrive."""

    def __init__(self, broker: str, fleet: str = "default") -> None:
        url = BrokerURL.parse(broker)
        self.fleet = fleet
        self.lock = threading.Lock()
        self.events: list[tuple[str, dict]] = []
        self.states: dict[str, DeviceState] = {}
        self.raw: dict[str, list[bytes]] = {}
        self.client = new_client(f"test-watcher-{id(self)}", url)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(topics.device_wildcard(fleet, leaf), 1) for leaf in ("events", "state", "fetch", "availability")]
        )  # again after every reconnect
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        ready.wait(5)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        device, leaf = msg.topic.split("/")[2:4]
        with self.lock:
            self.raw.setdefault(msg.topic, []).append(msg.payload)
            if leaf == "events":
                self.events.append((device, json.loads(msg.payload)))
            elif leaf == "state" and msg.payload:
                self.states[device] = DeviceState.model_validate_json(msg.payload)

    def of(self, device: str, kind: str | None = None, **detail: Any) -> list[dict]:
        with self.lock:
            return [
                e for d, e in self.events
                if d == device and (kind is None or e["kind"] == kind)
                and all(e["detail"].get(k) == v for k, v in detail.items())
            ]  # fmt: skip

    def wait(self, device: str, kind: str, timeout: float = 15.0, **detail: Any) -> dict:
        return wait_for(lambda: self.of(device, kind, **detail), f"{kind} {detail} from {device}", timeout)[-1]

    def fetch_requests(self, device: str) -> int:
        with self.lock:
            return len(self.raw.get(topics.fetch(self.fleet, device), []))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def signed_announcement(
    bundle: Path, key: Any, *, fleet: str = "default", keys: Signed | None = None, chunk_size: int = 4096, **targets: Any
) -> tuple[ModelAnnouncement, Any]:
    b = read_bundle(bundle, chunk_size)
    t, env = sign_targets(key, bundle=b, fleet=fleet, **targets)
    return announcement_of(t, env, keys), b


def ship(
    pub: Publisher,
    bundle: Path,
    key: Any,
    *,
    chunks: bool = True,
    keys: Signed | None = None,
    chunk_size: int = 4096,
    **targets: Any,
) -> ModelAnnouncement:
    """Retained chunks + the signed fleet announcement (``edgeship publish`` with small chunks)."""
    ann, b = signed_announcement(bundle, key, fleet=pub.fleet, keys=keys, chunk_size=chunk_size, **targets)
    if chunks:
        pub.put_chunks(b)
    pub.announce(ann)
    return ann


def assign(pub: Publisher, device: str, bundle: Path, key: Any, *, chunk_size: int = 4096, **targets: Any) -> ModelAnnouncement:
    ann, b = signed_announcement(bundle, key, fleet=pub.fleet, devices=[device], chunk_size=chunk_size, **targets)
    pub.put_chunks(b)
    pub.assign(device, ann)
    pub.flush()
    return ann


def start_agent(tmp: Path, broker: str, device: str = "store-1", **fields: Any) -> Agent:
    base: dict[str, Any] = {
        "device_id": device,
        "state_dir": tmp / device,
        "broker": broker,
        "runtime": "fake",
        "chunk_timeout_s": 1.0,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1.0,
    }
    agent = Agent(AgentConfig(**{**base, **fields})).start()
    assert agent.mqtt is not None and agent.mqtt.wait_connected(10)
    return agent


def events_of(agent: Agent) -> dict[str, int]:
    return dict(agent.mqtt.delivery.stats) if agent.mqtt else {}


def past(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)

"""Broker addresses and paho clients configured the one way edgeship uses them.

MQTT 3.1.1 (``MQTTv311``) with paho's ``CallbackAPIVersion.VERSION2``; credentials come from the
environment (``EDGESHIP_MQTT_USERNAME`` / ``EDGESHIP_MQTT_PASSWORD``), never from the command line.
Credentials over plain ``mqtt://`` need ``EDGESHIP_MQTT_ALLOW_PLAIN=1``; with ``mqtts://`` the fleet CA
(``EDGESHIP_MQTT_CA`` or :data:`DEFAULT_CA`) is the trust, the system store only with
``EDGESHIP_MQTT_SYSTEM_CA=1``. A callback that raises never ends the network loop.

>>> BrokerURL.parse("mqtt://127.0.0.1:1883")
BrokerURL(scheme='mqtt', host='127.0.0.1', port=1883)
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

__all__ = ["connect_and_wait", "BrokerURL", "DEFAULT_CA", "new_client"]

#: Where the fleet CA (``ca.pem`` from ``edgeship provision``) is looked for when EDGESHIP_MQTT_CA is unset:
#: with TLS the fleet CA is the default trust, never the system store unless EDGESHIP_MQTT_SYSTEM_CA=1.
DEFAULT_CA = "/etc/edgeship/ca.pem"


@dataclasses.dataclass(frozen=True)
class BrokerURL:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r}: host is missing")
        if parts.username or parts.password:
            raise ValueError(
                f"broker URL {url!r}: put credentials in EDGESHIP_MQTT_USERNAME / EDGESHIP_MQTT_PASSWORD, not the URL"
            )
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise ValueError(f"broker URL {url!r}: port must be a number 1-65535") from exc
        return cls(parts.scheme, parts.hostname, port)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def new_client(client_id: str, url: BrokerURL, *, clean_session: bool = True, protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    """A paho client for ``url``: MQTT 3.1.1, VERSION2 callbacks, TLS and credentials if configured.

    Connect it yourself (after ``will_set``) with ``client.connect(url.host, url.port)``.
    ``protocol=mqtt.MQTTv5`` only for v5-only extras (the fleet ingest's shared subscriptions).
    """
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=clean_session if protocol != mqtt.MQTTv5 else None,
    )
    # No payload may kill the network thread: an exception in any callback is logged by paho and the
    # loop goes on (attack: one retained NaN document stopped updates for a whole fleet).
    client.suppress_exceptions = True
    user = os.environ.get("EDGESHIP_MQTT_USERNAME")
    if user:
        if not url.tls and os.environ.get("EDGESHIP_MQTT_ALLOW_PLAIN") != "1":
            raise ValueError(
                f"broker {url}: credentials would travel in clear text over mqtt://; use mqtts:// "
                "(or set EDGESHIP_MQTT_ALLOW_PLAIN=1 to opt in, e.g. on a loopback-only broker)"
            )
        client.username_pw_set(user, os.environ.get("EDGESHIP_MQTT_PASSWORD"))
    if url.tls:
        ca = os.environ.get("EDGESHIP_MQTT_CA") or (DEFAULT_CA if Path(DEFAULT_CA).exists() else None)
        if ca is None and os.environ.get("EDGESHIP_MQTT_SYSTEM_CA") != "1":
            raise ValueError(
                f"broker {url}: no fleet CA: set EDGESHIP_MQTT_CA to the ca.pem from edgeship provision (or install "
                f"it as {DEFAULT_CA}); EDGESHIP_MQTT_SYSTEM_CA=1 trusts the system's CA store instead"
            )
        client.tls_set(
            ca_certs=ca,
            certfile=os.environ.get("EDGESHIP_MQTT_CERT") or None,
            keyfile=os.environ.get("EDGESHIP_MQTT_KEY") or None,
        )

    def _nodelay(_client: mqtt.Client, _userdata: object, sock: socket.socket) -> None:
        # Neither paho nor Mosquitto sets TCP_NODELAY: without it small acks wait ~40 ms.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    client.on_socket_open = _nodelay
    return client


def connect_and_wait(
    client: mqtt.Client, url: BrokerURL, connected: threading.Event, *, timeout: float = 15.0,
    keepalive: int = 30, refused: Callable[[], str | None] = lambda: None,
) -> None:
    """Connect ``client`` (blocking), start its network loop and wait for ``connected`` (set by its
    ``on_connect``). Raises :class:`ConnectionError` naming the broker and why; the loop is stopped then.

    The cloud's short-lived clients (publisher, fleet view, rollout controller) use this; the agent's
    long-lived link connects with ``connect_async`` and reconnects on its own.
    """
    try:
        client.connect(url.host, url.port, keepalive=keepalive)
    except OSError as exc:
        raise ConnectionError(f"cannot reach broker {url}: {exc}") from exc
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise ConnectionError(f"broker {url} did not accept the connection within {timeout:.0f} s ({refused() or 'timeout'})")

"""The shipped Mosquitto configuration keeps retained messages (chunks, announcements) across a
restart when the broker runs as its own user, and the README's install step is what makes it work:
with the database folder owned by root, the same configuration loses them (issue 15, point 5)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

from models.broker import BrokerURL, new_client
from tests.conftest import Mosquitto, require, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TOPIC = "default/bundles/ab12/chunk/0"


def persistence_lines(location: Path) -> str:
    """The persistence section of deploy/mosquitto/mosquitto.conf, pointed at ``location``."""
    text = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    section = re.search(r"# begin persistence\n(.*?)# end persistence", text, re.S)
    assert section, "deploy/mosquitto/mosquitto.conf lost its persistence section"
    return re.sub(r"(?m)^persistence_location .*$", f"persistence_location {location}/", section.group(1))


def retained(url: str) -> bytes | None:
    got: list[bytes] = []
    done = threading.Event()
    c = new_client("persistence-probe", BrokerURL.parse(url))
    c.on_connect = lambda cl, *a: cl.subscribe(TOPIC, 1)
    c.on_subscribe = lambda *a: threading.Timer(0.5, done.set).start()  # retained ones come right after SUBACK

    def on_message(_c, _u, msg):
        got.append(msg.payload)
        done.set()

    c.on_message = on_message
    u = BrokerURL.parse(url)
    c.connect(u.host, u.port)
    c.loop_start()
    done.wait(5)
    c.disconnect()
    c.loop_stop()
    return got[0] if got else None


def publish_retained(url: str, payload: bytes) -> None:
    c = new_client("persistence-pub", BrokerURL.parse(url))
    u = BrokerURL.parse(url)
    c.connect(u.host, u.port)
    c.loop_start()
    c.publish(TOPIC, payload, qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@pytest.fixture()
def workdir():
    require(os.geteuid() == 0, "starting Mosquitto as root so it drops to its own user needs root")
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        require(False, "no mosquitto user (apt-get install mosquitto)")
    d = Path(tempfile.mkdtemp(prefix="edgeship-mq-", dir="/tmp"))  # not under pytest's 0700 tmp: the user must reach it
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _broker(workdir: Path, owner: str) -> Mosquitto:
    db = workdir / "db"
    db.mkdir(mode=0o750)
    if owner == "mosquitto":  # README: install -d -o mosquitto -g mosquitto -m 0750 /var/lib/mosquitto
        pw = pwd.getpwnam("mosquitto")
        os.chown(db, pw.pw_uid, pw.pw_gid)
    return Mosquitto(workdir, extra=persistence_lines(db).replace("persistence false\n", ""))


@pytest.mark.parametrize("owner, survives", [("mosquitto", True), ("root", False)])
def test_retained_chunks_survive_a_restart_under_the_brokers_own_user(workdir, owner, survives):
    broker = _broker(workdir, owner)
    broker.conf.write_text(broker.conf.read_text().replace("persistence false\n", ""))
    broker.start()
    try:
        publish_retained(broker.url, b"chunk-bytes")
        assert retained(broker.url) == b"chunk-bytes"
        broker.stop()  # SIGTERM: a clean stop saves the database
        broker.start()
        assert (retained(broker.url) == b"chunk-bytes") is survives, (workdir / "mosquitto.log").read_text()[-1500:]
        if survives:
            assert (workdir / "db" / "mosquitto.db").exists()
        else:
            wait_for(lambda: "Permission denied" in (workdir / "mosquitto.log").read_text() or None, "save error logged", 5)
    finally:
        broker.stop()

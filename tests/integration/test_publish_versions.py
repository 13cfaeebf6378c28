"""`publish` and `rollout start` against a REAL Mosquitto refuse a bundle the fleet's retained
announcement already covers (same or higher version, or the same version with another digest),
unless told it is a rollback; nothing is sent when refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cloud.fleet.publish import NotNewerError, Publisher, publish, read_bundle
from cloud.fleet.rollout import Rollout
from models import topics
from tests.bundle_kit import build_bundle
from tests.delivery_kit import keypair

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODEL = "favorita-demand"


def _announced(url: str, fleet: str = "default"):
    with Publisher(url, fleet=fleet) as pub:
        return pub.announced(MODEL)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeship", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_publish_and_rollout_refuse_what_the_fleet_already_announces(tmp_path, mosquitto):
    k = keypair(tmp_path / "keys")
    v1, _ = build_bundle(tmp_path / "a" / f"{MODEL}-v1.bundle.tar", k.private, version=1)
    v2, _ = build_bundle(tmp_path / "a" / f"{MODEL}-v2.bundle.tar", k.private, version=2)
    # another training run that also called itself v2 (as two --out folders used to): another digest
    other_v2, _ = build_bundle(tmp_path / "b" / f"{MODEL}-v2.bundle.tar", k.private, version=2, horizon_days=20)
    assert read_bundle(other_v2).sha256 != read_bundle(v2).sha256
    url = mosquitto.url

    publish(v2, url, key=k.key_path, progress=False)
    assert _announced(url).version == 2

    with pytest.raises(NotNewerError, match="announces favorita-demand v2, above this bundle's v1"):
        publish(v1, url, key=k.key_path, progress=False)
    with pytest.raises(NotNewerError, match="with another digest"):
        publish(other_v2, url, key=k.key_path, progress=False)
    with pytest.raises(NotNewerError, match="this very bundle"):
        publish(v2, url, key=k.key_path, progress=False)
    ann = _announced(url)
    assert ann.version == 2 and ann.sha256 == read_bundle(v2).sha256  # nothing was replaced
    with Publisher(url) as pub:  # and no chunk of the refused bundles went out
        assert pub.retained(topics.bundle_chunk("default", read_bundle(other_v2).bundle_id, 0), wait=1.0) is None

    # the CLI says why and exits non-zero
    out = _cli("publish", str(v1), "--broker", url, "--key", str(k.key_path), "--no-progress")
    assert out.returncode == 2 and "above this bundle's v1" in out.stderr and "--rollback" in out.stderr, out.stderr

    # rollout start refuses too, before writing any rollout state
    state = tmp_path / "ctl"
    with pytest.raises(NotNewerError, match="above this bundle's v1"):
        Rollout(v1, url, key=k.key_path, state_dir=state, discover_s=0.5).run()
    assert not (state / "rollout.json").exists()
    out = _cli("rollout", "start", str(other_v2), "--broker", url, "--key", str(k.key_path), "--state-dir", str(state),
               "--discover", "0.5")  # fmt: skip
    assert out.returncode == 2 and "with another digest" in out.stderr, out.stderr

    # told it is a rollback: the rollout passes the check (and finds no devices here), publish goes ahead
    result = Rollout(v1, url, key=k.key_path, state_dir=state, discover_s=0.5, rollback=True).run()
    assert result["phase"] == "failed" and "no eligible devices" in result["reason"]
    out = _cli("publish", str(v1), "--broker", url, "--key", str(k.key_path), "--no-progress", "--rollback")
    assert out.returncode == 0, out.stderr
    ann = _announced(url)
    assert ann.version == 1 and ann.targets is not None and ann.targets.signed["downgrade"] is True

    # and a newer version is simply published
    v3, _ = build_bundle(tmp_path / "a" / f"{MODEL}-v3.bundle.tar", k.private, version=3)
    assert publish(v3, url, key=k.key_path, progress=False).version == 3

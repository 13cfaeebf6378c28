"""TUF's attacks on a software updater, one test (at least) each, against real agents over a REAL
Mosquitto (tests/conftest.py): arbitrary installation, rollback, indefinite freeze, endless data,
mix-and-match, slow retrieval, key compromise (rotation and revocation through a root key), and
wrong software (fleet, device, hardware)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from cloud.fleet.publish import Publisher, read_bundle, sign_targets
from cloud.fleet.root import add_signing_key, init_root, revoke_signing_key
from tests.bundle_kit import build_bundle, sample_state
from edge.delivery.transfer import ChunkError, Transfer
from models import topics
from models.envelope import Signed, sign_document
from models.keys import KeyListError
from models.targets import TargetsError, announcement_of, verify_targets
from tests.delivery_kit import Watcher, assign, keypair, past, ship, signed_announcement, start_agent, wait_for

MODEL = "favorita-demand"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Two signing keys (trusted, stranger) and signed bundles v1..v4 (v4 signed by the stranger)."""
    d = tmp_path_factory.mktemp("kit")
    trusted, stranger = keypair(d / "trusted"), keypair(d / "stranger")
    bundles = {
        v: build_bundle(d / f"{MODEL}-v{v}.bundle.tar", trusted.private, version=v, state=sample_state(seed=v))[0]
        for v in (1, 2, 3)
    }  # every member differs between versions
    bundles[4] = build_bundle(d / f"{MODEL}-v4.bundle.tar", stranger.private, version=4)[0]
    return {"trusted": trusted, "stranger": stranger, "bundles": bundles, "dir": d}


@pytest.fixture()
def cloud(mosquitto):
    pub = Publisher(mosquitto.url).connect()
    watcher = Watcher(mosquitto.url)
    yield pub, watcher
    pub.close()
    watcher.close()


def _version(agent) -> int | None:
    p = agent.predictor
    return p.version if p is not None else None


# -- arbitrary installation -------------------------------------------------------------------
def test_arbitrary_installation_unsigned_untrusted_or_forged_is_refused(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        b1 = kit["bundles"][1]
        # 1. no signed targets at all
        unsigned, _ = announcement_of_unsigned(b1)
        pub.put_chunks(read_bundle(b1, 4096))
        pub.announce(unsigned)
        assert watch.wait("store-1", "refused", reason="unsigned")["detail"]["version"] == 1
        # 2. targets signed by a key the device does not trust
        ship(pub, b1, kit["stranger"].private)
        assert "does not trust" in watch.wait("store-1", "refused", reason="bad_signature")["detail"]["message"]
        # 3. trusted targets, but a forged field (downgrade flag flipped after signing)
        ann = ship(pub, b1, kit["trusted"].private, chunks=False)
        forged = ann.model_copy(update={"targets": Signed(signed={**ann.targets.signed, "version": 2},
                                                           signatures=ann.targets.signatures)})  # fmt: skip
        with pytest.raises(TargetsError) as info:
            verify_targets(forged.targets, [kit["trusted"].public])
        assert info.value.reason == "bad_signature"
        wait_for(lambda: _version(agent) == 1, "v1 installed through properly signed targets")
        # 4. trusted targets naming a bundle whose manifest a stranger signed: refused when installed
        ship(pub, kit["bundles"][4], kit["trusted"].private)
        refused = watch.wait("store-1", "refused", version=4)
        assert refused["detail"]["reason"] == "bad_signature"
        assert _version(agent) == 1 and 4 not in agent.store.versions()
    finally:
        agent.stop()


def announcement_of_unsigned(bundle: Path):
    from cloud.fleet.publish import announcement_for

    return announcement_for(bundle, 4096)


# -- rollback ---------------------------------------------------------------------------------
def test_rollback_refused_unless_a_signed_rollback_command_names_it(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        ship(pub, kit["bundles"][2], key)
        wait_for(lambda: _version(agent) == 2, "v2 active")
        ship(pub, kit["bundles"][1], key)  # older, validly signed, no rollback command
        refused = watch.wait("store-1", "refused", version=1)
        assert refused["detail"]["reason"] == "rollback"
        assert _version(agent) == 2 and 1 not in agent.store.versions()
        # the signed rollback command (downgrade=True, per device): v1 is fetched and activated
        assign(pub, "store-1", kit["bundles"][1], key, downgrade=True)
        wait_for(lambda: _version(agent) == 1, "rolled back to v1")
        watch.wait("store-1", "rolled_back", version=1)
        # ... and rolling forward again, then back to v1 held on the device: no download
        assign(pub, "store-1", kit["bundles"][3], key)
        wait_for(lambda: _version(agent) == 3, "v3 active")
        chunks_before = agent.mqtt.delivery.stats["chunks"]
        assign(pub, "store-1", kit["bundles"][1], key, downgrade=True)
        wait_for(lambda: _version(agent) == 1, "rolled back to the installed v1")
        assert agent.mqtt.delivery.stats["chunks"] == chunks_before
    finally:
        agent.stop()


# -- indefinite freeze ------------------------------------------------------------------------
def test_freeze_expired_metadata_is_refused_and_reported_and_replays_are_ignored(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        b2 = read_bundle(kit["bundles"][2], 4096)
        t, env = sign_targets(key, bundle=b2, expires_in=60, now=past(120))  # expired a minute ago
        pub.put_chunks(b2)
        pub.announce(announcement_of(t, env))
        refused = watch.wait("store-1", "refused", reason="expired")
        assert refused["detail"]["version"] == 2 and "expired at" in refused["detail"]["message"]
        assert agent.device_state().last_update.reason == "expired" and _version(agent) is None
        # a signed rollback command to v2 captured now (an attacker keeps it for later) ...
        captured, _ = signed_announcement(kit["bundles"][2], key, devices=["store-1"], downgrade=True, now=past(30))
        # fresh metadata for the same bundle is accepted (the refusal was about the metadata)
        newer = ship(pub, kit["bundles"][3], key)
        wait_for(lambda: _version(agent) == 3, "v3 active")
        # ... replayed after v3 (issued later) was acted on: ignored, not acted on. Only the replay
        # check stops it: the command itself is validly signed, current and names this device.
        assert captured.targets is not None
        assert dt.datetime.fromisoformat(captured.targets.signed["issued_at"]) < dt.datetime.fromisoformat(
            newer.targets.signed["issued_at"])
        pub.put_chunks(b2)
        pub.assign("store-1", captured)
        pub.flush()
        with pytest.raises(AssertionError):
            watch.wait("store-1", "downloading", timeout=2.0, version=2)
        assert _version(agent) == 3
    finally:
        agent.stop()
    # the CLI flag: edgeship publish --expires-in
    from edgeship.commands.args import seconds as _seconds

    assert _seconds("15m") == 900 and _seconds("2d") == 172800


# -- endless data -----------------------------------------------------------------------------
def test_endless_data_more_bytes_than_declared_abort_the_transfer(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    data = kit["bundles"][2].read_bytes()
    t = Transfer(announcement_of(*sign_targets(key, bundle=read_bundle(kit["bundles"][2], 4096))), tmp_path / "t")
    with pytest.raises(ChunkError) as info:
        t.add_chunk(0, data[:4096] + b"x" * 10)
    assert info.value.reason == "too_large" and t.received == 0
    assert t.part_path.stat().st_size == len(data)  # nothing beyond the declared size, ever
    t.discard()

    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        ann = ship(pub, kit["bundles"][2], key, chunks=False)
        b = read_bundle(kit["bundles"][2], 4096)
        pub.put_chunks(b, range(1, len(b.chunk_sha256)))
        pub.send(topics.bundle_chunk("default", b.bundle_id, 0), b.chunk(0) + b"\0" * 1_000_000)  # 1 MB "chunk"
        pub.flush()
        failed = watch.wait("store-1", "failed", reason="endless_data")
        assert failed["detail"]["version"] == 2 and _version(agent) is None
        assert "more than the declared" in failed["detail"]["message"]
        # the honest chunk arrives later: the transfer resumes (after its back-off) and completes
        pub.put_chunks(b, [0])
        wait_for(lambda: _version(agent) == 2, "v2 active after the honest chunk", timeout=20)
        assert ann.size == len(b.data)
    finally:
        agent.stop()


def test_endless_data_a_stream_of_junk_chunks_of_the_declared_size_hits_the_byte_budget(tmp_path, kit, mosquitto, cloud):
    """Each junk chunk has the declared length (no ``too_large``) and a wrong hash: only the byte
    budget (2 x the bundle + a few windows) ends the transfer."""
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path], chunk_timeout_s=30)
    try:
        b = read_bundle(kit["bundles"][2], 4096)
        ship(pub, kit["bundles"][2], key, chunks=False)
        watch.wait("store-1", "downloading", version=2)
        junk = b"\0" * 4096
        topic = topics.bundle_chunk("default", b.bundle_id, 0)
        budget = 2 * len(b.data) + 4 * 8 * 4096
        for _ in range(budget // 4096 + 8):
            pub.send(topic, junk, retain=False)
        pub.flush()
        failed = watch.wait("store-1", "failed", reason="endless_data", timeout=30)
        assert "bytes offered" in failed["detail"]["message"] and _version(agent) is None
    finally:
        agent.stop()


# -- mix-and-match ----------------------------------------------------------------------------
def test_mix_and_match_chunks_or_members_of_two_versions_never_combine(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path])
    try:
        # members: v2's signed manifest with v3's state member, shipped under targets signed for exactly
        # those bytes (an insider's mix): the bundle's own signed manifest refuses it at install
        mixed = tmp_path / f"{MODEL}-v2.bundle.tar"
        _swap_member(kit["bundles"][2], kit["bundles"][3], "state.npz", mixed)
        assign(pub, "store-1", mixed, key)
        assert watch.wait("store-1", "refused", version=2)["detail"]["reason"] in ("hash_mismatch", "size_mismatch")
        assert _version(agent) is None and agent.store.versions() == []
        b2, b3 = read_bundle(kit["bundles"][2], 4096), read_bundle(kit["bundles"][3], 4096)
        # chunks: v2's bytes published on v3's chunk topics are rejected by v3's signed chunk hashes
        ship(pub, kit["bundles"][3], key, chunks=False)
        for i in range(len(b3.chunk_sha256)):
            pub.send(topics.bundle_chunk("default", b3.bundle_id, i), b2.chunk(i) if i < len(b2.chunk_sha256) else b"z")
        pub.flush()
        wait_for(lambda: agent.metrics.bad_chunks._value.get() >= 1, "mixed chunks rejected")
        assert _version(agent) is None
        pub.put_chunks(b3)  # the real ones: completes
        wait_for(lambda: _version(agent) == 3, "v3 active from its own chunks only")
        # plain hint fields of the announcement cannot redirect the device: it acts on the signed targets
        ann = ship(pub, kit["bundles"][1], key, chunks=False).model_copy(update={"version": 9, "sha256": "0" * 64})
        assert verify_targets(ann.targets, [kit["trusted"].public]).version == 1
        assert _version(agent) == 3
    finally:
        agent.stop()


def _swap_member(src: Path, other: Path, member: str, dst: Path) -> None:
    with tarfile.open(other) as tar:
        replacement = tar.extractfile(member).read()
    assert replacement != _member(src, member)
    out = io.BytesIO()
    with tarfile.open(src) as tin, tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tout:
        for info in tin:
            data = tin.extractfile(info).read()
            if info.name == member:
                data = replacement
                info = tarfile.TarInfo(member)
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    dst.write_bytes(out.getvalue())


def _member(path: Path, member: str) -> bytes:
    with tarfile.open(path) as tar:
        return tar.extractfile(member).read()


# -- slow retrieval ---------------------------------------------------------------------------
def test_slow_retrieval_a_stalled_transfer_times_out_asks_and_resumes(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path], chunk_timeout_s=0.5, transfer_retries=1)
    try:
        b = read_bundle(kit["bundles"][1], 4096)
        n = len(b.chunk_sha256)
        pub.put_chunks(b, range(n - 2))  # the last two chunks never arrive (an attacker holding them back)
        ship(pub, kit["bundles"][1], key, chunks=False)
        wait_for(lambda: watch.fetch_requests("store-1") >= 1, "a chunk request after the stall")
        failed = watch.wait("store-1", "failed", reason="stalled", timeout=10)
        assert "2 of" in failed["detail"]["message"]
        part = agent.store.downloads_dir / f"{b.bundle_id}.part"
        assert part.exists()  # kept for a resume
        pub.serve(b)  # a bundle server answers the next chunk requests
        wait_for(lambda: _version(agent) == 1, "resumed and completed", timeout=20)
        downloaded = watch.wait("store-1", "downloaded", version=1)
        assert downloaded["detail"]["fetched_chunks"] == 2 and downloaded["detail"]["resumed_chunks"] == n - 2
        wait_for(lambda: pub.answered_chunks >= 2, "the server's count of re-published chunks")
    finally:
        agent.stop()


# -- key compromise ---------------------------------------------------------------------------
def test_key_compromise_root_signed_rotation_and_revocation_without_reflashing(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    keys = tmp_path / "keys"
    root_key, root_pub = init_root(keys)
    k1, k2 = keypair(keys, "k1"), keypair(keys, "k2")
    keylist = keys / "keylist.json"
    bundles = {v: build_bundle(tmp_path / f"{MODEL}-v{v}.bundle.tar", k.private, version=v)[0]
               for v, k in ((1, k1), (2, k1), (3, k2))}  # fmt: skip
    add_signing_key(keylist, root_key, k1.pub_path, name="ci-2024")
    v1_list = Signed.model_validate_json(keylist.read_bytes())
    # the device is flashed with the ROOT public key only
    agent = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub])
    try:
        ship(pub, bundles[1], k1.private, keys=v1_list)
        wait_for(lambda: _version(agent) == 1, "v1 (signed by k1, trusted through the root) active")
        # rotation: k2 added (v2 of the list), then k1 revoked (v3) because it leaked
        add_signing_key(keylist, root_key, k2.pub_path, name="ci-2025")
        v2_list = Signed.model_validate_json(keylist.read_bytes())
        revoke_signing_key(keylist, root_key, k1.pub_path)
        v3_list = Signed.model_validate_json(keylist.read_bytes())
        pub.publish_keylist(v3_list)
        watch.wait("store-1", "keylist", version=3)
        assert agent.trust.info()["revoked"] and agent.trust.keylist_version == 3
        # the attacker holding k1 signs v2: refused (targets and bundle both by a revoked key)
        ship(pub, bundles[2], k1.private, keys=v1_list)
        watch.wait("store-1", "refused", reason="bad_signature", version=2)
        # ... and cannot un-revoke k1 by replaying an older list
        watch.wait("store-1", "keylist_refused", reason="keylist_rollback")
        # a list signed by anyone but the root is refused
        forged = sign_document({**v2_list.signed, "version": 9}, k2.private)
        pub.publish_keylist(forged)
        watch.wait("store-1", "keylist_refused", reason="bad_signature")
        # the new key works
        ship(pub, bundles[3], k2.private, keys=v3_list)
        wait_for(lambda: _version(agent) == 3, "v3 (signed by k2) active")
    finally:
        agent.stop()
    # after a restart the device still trusts k2 only (the list is kept on disk), still without reflashing
    again = start_agent(tmp_path, mosquitto.url, trust_root=[root_pub])
    try:
        assert again.trust.keylist_version == 3 and _version(again) == 3
        from models.signing import key_id

        assert again.trust.info()["keys"] == [key_id(k2.public)]
    finally:
        again.stop()
    # a pinned key (--trust) that the root's list revokes is not trusted either
    from edge.delivery.trust import TrustStore

    ts = TrustStore(tmp_path / "pinned", pinned=[k1.pub_path], roots=[root_pub])
    assert ts.update(v3_list) and [key_id(k) for k in ts.keys] == [key_id(k2.public)]
    with pytest.raises(KeyListError):
        ts.update(v2_list)


# -- wrong software ---------------------------------------------------------------------------
def test_wrong_software_other_fleet_device_or_hardware_is_refused(tmp_path, kit, mosquitto, cloud):
    pub, watch = cloud
    key = kit["trusted"].private
    agent = start_agent(tmp_path, mosquitto.url, trust=[kit["trusted"].pub_path], attributes={"hardware": "rpi4"})
    try:
        b1 = read_bundle(kit["bundles"][1], 4096)
        pub.put_chunks(b1)
        # signed for fleet "lab" but put on this fleet's topic
        t, env = sign_targets(key, bundle=b1, fleet="lab")
        pub.announce(announcement_of(t, env))
        assert watch.wait("store-1", "refused", reason="wrong_fleet")["detail"]["version"] == 1
        # for other hardware
        ship(pub, kit["bundles"][1], key, hardware=["jetson-orin", "aarch64-jetson"])
        assert "rpi4" in watch.wait("store-1", "refused", reason="wrong_hardware")["detail"]["message"]
        # an assignment that names another device, replayed on this device's command topic
        t, env = sign_targets(key, bundle=b1, devices=["store-2"])
        pub.assign("store-1", announcement_of(t, env))
        pub.flush()
        watch.wait("store-1", "refused", reason="wrong_device")
        assert _version(agent) is None
        # the right hardware goes through
        ship(pub, kit["bundles"][1], key, hardware=["rpi4"])
        wait_for(lambda: _version(agent) == 1, "v1 for rpi4 active")
    finally:
        agent.stop()


def test_targets_and_keylist_documents_unit():
    from models.keys import KeyEntry, KeyList, verify_keylist
    from models.signing import generate_keypair

    key, pub = generate_keypair()
    root, root_pub = generate_keypair()
    now = dt.datetime.now(dt.timezone.utc)
    kl = KeyList(version=1, issued_at=now, expires_at=now - dt.timedelta(seconds=1), keys=[KeyEntry.of(pub)])
    with pytest.raises(KeyListError) as info:
        verify_keylist(sign_document(kl.document(), root), [root_pub])
    assert info.value.reason == "expired"
    doc = {"type": "targets", "model": "m", "version": 1, "sha256": hashlib.sha256(b"x").hexdigest(), "fleet": "default",
           "issued_at": now.isoformat(), "expires_at": (now + dt.timedelta(hours=1)).isoformat(),
           "bundle": {"bundle_id": "0" * 32, "size": 10, "chunk_size": 4, "chunk_sha256": ["0" * 64] * 3, "filename": "m.tar"}}  # fmt: skip
    with pytest.raises(TargetsError) as info:
        verify_targets(sign_document(doc, key), [pub])  # bundle_id is not the sha256's prefix
    assert info.value.reason == "malformed"
    assert json.loads(json.dumps(sign_document({"a": 1}, key).model_dump()))["signatures"][0]["keyid"]

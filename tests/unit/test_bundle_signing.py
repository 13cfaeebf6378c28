"""Bundles: signed when made, refused by every check when anything about them is off."""

import datetime as dt
import io
import json
import tarfile

import pytest

from cloud.training.bundle import write_bundle
from models.bundle import BundleError, read_manifest, unpack_bundle, verify_unpacked
from models.contract import CAT_FEATURES, CONTRACT_VERSION, LAG_WINDOW_DAYS, NUM_FEATURES
from models.signing import SignatureError, generate_keypair, key_id, load_private_key, load_public_key, sign, verify, write_keypair


def manifest_fields(version=1):
    return {
        "name": "favorita-demand",
        "version": version,
        "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).isoformat(),
        "lineage": {
            "dataset_version": "a" * 64,
            "train_window": ("2016-01-01", "2017-07-31"),
            "validation_window": ("2017-08-01", "2017-08-15"),
            "code_revision": "test",
        },
        "parameters": {},
        "metrics": {"keras": {"nwrmsle": 0.5, "r2": 0.4}},
        "variants": [
            {"name": "tflite-fp32", "runtime": "litert", "file": "models/tflite-fp32.tflite", "precision": "fp32", "size_bytes": 4, "metrics": {}}
        ],
        "contract": {
            "version": CONTRACT_VERSION,
            "cat_features": list(CAT_FEATURES),
            "num_features": list(NUM_FEATURES),
            "lag_window_days": LAG_WINDOW_DAYS,
            "state_end_date": "2017-08-15",
            "max_batch": 256,
            "horizon_days": 60,
        },
    }


MEMBERS = {"models/tflite-fp32.tflite": b"abcd", "tables.json": b"{}", "state.npz": b"state", "holdout.npz": b"h", "reference_stats.json": b"{}"}


@pytest.fixture()
def keys():
    return generate_keypair()


@pytest.fixture()
def bundle(tmp_path, keys):
    path, _ = write_bundle(tmp_path / "b.bundle.tar", manifest_fields(), MEMBERS, keys[0])
    return path


def _rewrite(src, dst, mutate):
    """Copy a tar member by member, letting ``mutate(name, data)`` change or drop data, or add members."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w:") as tout:
        for info in tin:
            data = tin.extractfile(info).read()
            for name, payload in mutate(info.name, data):
                new = tarfile.TarInfo(name)
                new.size = len(payload)
                tout.addfile(new, io.BytesIO(payload))
    return dst


def test_good_bundle_unpacks_and_reverifies(tmp_path, bundle, keys):
    vb = unpack_bundle(bundle, tmp_path / "store" / "1", [keys[1]])
    assert vb.manifest.version == 1 and vb.keyid == key_id(keys[1])
    assert (vb.directory / "models/tflite-fp32.tflite").read_bytes() == b"abcd"
    assert verify_unpacked(vb.directory, [keys[1]]).digest == vb.digest
    assert read_manifest(bundle, [keys[1]]).name == "favorita-demand"


def test_untrusted_key_is_refused(tmp_path, bundle):
    _, other = generate_keypair()
    with pytest.raises(BundleError) as info:
        unpack_bundle(bundle, tmp_path / "d", [other])
    assert info.value.reason == "bad_signature" and not (tmp_path / "d").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b.bundle.tar"]  # no temp folder left behind


@pytest.mark.parametrize(
    "name,reason",
    [("models/tflite-fp32.tflite", "hash_mismatch"), ("manifest.json", "bad_signature"), ("tables.json", "hash_mismatch")],
)
def test_any_flipped_byte_is_refused(tmp_path, bundle, keys, name, reason):
    def flip(n, data):
        if n == name:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        yield n, data

    bad = _rewrite(bundle, tmp_path / "bad.tar", flip)
    with pytest.raises(BundleError) as info:
        unpack_bundle(bad, tmp_path / "d", [keys[1]])
    assert info.value.reason == reason and not (tmp_path / "d").exists()


def test_flipped_byte_anywhere_in_the_file_is_refused(tmp_path, bundle, keys):
    raw = bytearray(bundle.read_bytes())
    refused = 0
    for offset in range(0, len(raw), max(1, len(raw) // 40)):
        mutated = bytearray(raw)
        mutated[offset] ^= 0x20
        path = tmp_path / f"m{offset}.tar"
        path.write_bytes(bytes(mutated))
        try:
            unpack_bundle(path, tmp_path / f"d{offset}", [keys[1]])
        except (BundleError, tarfile.TarError):
            refused += 1
        else:  # a flip in tar padding or header slack may change nothing we read: content must be intact
            assert (tmp_path / f"d{offset}" / "models/tflite-fp32.tflite").read_bytes() == b"abcd"
    assert refused > 0


def test_unlisted_member_is_refused(tmp_path, bundle, keys):
    def add(n, data):
        yield n, data
        if n == "reference_stats.json":
            yield "models/extra.tflite", b"evil"

    with pytest.raises(BundleError) as info:
        unpack_bundle(_rewrite(bundle, tmp_path / "x.tar", add), tmp_path / "d", [keys[1]])
    assert info.value.reason == "unlisted_member"


def test_missing_member_is_refused(tmp_path, bundle, keys):
    def drop(n, data):
        if n != "state.npz":
            yield n, data

    with pytest.raises(BundleError) as info:
        unpack_bundle(_rewrite(bundle, tmp_path / "x.tar", drop), tmp_path / "d", [keys[1]])
    assert info.value.reason == "missing_member"


def test_path_traversal_is_refused(tmp_path, bundle, keys):
    def evil(n, data):
        yield ("../escape.txt" if n == "tables.json" else n), data

    with pytest.raises(BundleError) as info:
        unpack_bundle(_rewrite(bundle, tmp_path / "x.tar", evil), tmp_path / "d", [keys[1]])
    assert info.value.reason == "bad_member" and not (tmp_path / "escape.txt").exists()


def test_mixing_members_of_two_signed_versions_is_refused(tmp_path, keys):
    v1, _ = write_bundle(tmp_path / "v1.tar", manifest_fields(1), MEMBERS, keys[0])
    v2, _ = write_bundle(tmp_path / "v2.tar", manifest_fields(2), {**MEMBERS, "tables.json": b'{"v":2}'}, keys[0])
    with tarfile.open(v2) as t2:
        tables_v2 = t2.extractfile("tables.json").read()

    def mix(n, data):
        yield n, (tables_v2 if n == "tables.json" else data)

    with pytest.raises(BundleError) as info:
        unpack_bundle(_rewrite(v1, tmp_path / "mix.tar", mix), tmp_path / "d", [keys[1]])
    assert info.value.reason == "size_mismatch"


def test_tampered_unpacked_folder_fails_reverification(tmp_path, bundle, keys):
    vb = unpack_bundle(bundle, tmp_path / "m", [keys[1]])
    (vb.directory / "models/tflite-fp32.tflite").write_bytes(b"abce")
    with pytest.raises(BundleError) as info:
        verify_unpacked(vb.directory, [keys[1]])
    assert info.value.reason == "hash_mismatch"


def test_contract_version_mismatch_is_refused(tmp_path, keys):
    fields = manifest_fields()
    fields["contract"]["version"] = CONTRACT_VERSION + 1
    path, _ = write_bundle(tmp_path / "c.tar", fields, MEMBERS, keys[0])
    with pytest.raises(BundleError) as info:
        unpack_bundle(path, tmp_path / "d", [keys[1]])
    assert info.value.reason == "contract_mismatch"


def test_keys_init_writes_a_usable_pair(tmp_path):
    key_path, pub_path = write_keypair(tmp_path)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    env = sign(b"x", load_private_key(key_path))
    assert verify(b"x", env, [load_public_key(pub_path)]) == env.keyid
    with pytest.raises(SignatureError):
        verify(b"y", env, [load_public_key(pub_path)])
    with pytest.raises(FileExistsError):
        write_keypair(tmp_path)


def test_manifest_is_canonical_json(tmp_path, bundle):
    with tarfile.open(bundle) as tar:
        raw = tar.extractfile("manifest.json").read()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 100])
def test_garbage_is_a_bad_archive(tmp_path, keys, content):
    path = tmp_path / "garbage.tar"
    path.write_bytes(content)
    for call in (lambda: read_manifest(path, [keys[1]]), lambda: unpack_bundle(path, tmp_path / "d", [keys[1]])):
        with pytest.raises(BundleError) as info:
            call()
        assert info.value.reason in ("bad_archive", "bad_member")


def test_truncated_bundle_is_a_bad_archive(tmp_path, bundle, keys):
    raw = bundle.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2 + 100])
    with pytest.raises(BundleError) as info:
        unpack_bundle(cut, tmp_path / "d", [keys[1]])
    assert info.value.reason in ("bad_archive", "missing_member") and not (tmp_path / "d").exists()

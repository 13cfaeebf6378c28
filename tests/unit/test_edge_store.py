"""Model store: install with full verification, atomic activation, fallback, pruning."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from edge.store.model_store import ActivePointer, ModelStore
from tests.bundle_kit import build_bundle, flip_member_byte
from models.bundle import BundleError, sha256_file
from models.signing import generate_keypair


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    """Signed bundles v1..v4 of one model."""
    out = tmp_path_factory.mktemp("bundles")
    return {v: build_bundle(out / f"m-v{v}.bundle.tar", keys[0], version=v)[0] for v in (1, 2, 3, 4)}


@pytest.fixture()
def store(tmp_path, keys):
    return ModelStore(tmp_path / "state", [keys[1]])


def leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.models_dir.iterdir())




def test_install_activate_and_pointer(store, bundles):
    vb = store.install(bundles[1], digest=sha256_file(bundles[1]))
    assert vb.manifest.version == 1 and vb.directory == store.models_dir / "1"
    assert store.active() is None
    pointer = store.activate(1)
    assert pointer == store.active() == ActivePointer(1, sha256_file(bundles[1]))
    on_disk = json.loads(store.pointer_path.read_text())
    assert on_disk["version"] == 1 and on_disk["digest"] == vb.digest
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temp file left
    # Installing the same bytes again reuses the folder.
    assert store.install(bundles[1]).directory == vb.directory
    with pytest.raises(FileNotFoundError):
        store.activate(7)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("flip", "hash_mismatch"),
        ("untrusted", "bad_signature"),
        ("extra", "unlisted_member"),
        ("garbage", "bad_archive"),
        ("digest", "hash_mismatch"),
    ],
)
def test_tampered_bundles_are_refused_and_leave_nothing(tmp_path, store, bundles, keys, kind, reason):
    digest = None
    if kind == "flip":
        path = flip_member_byte(bundles[2], tmp_path / "bad.tar", "models/tflite-fp32.tflite")
    elif kind == "untrusted":
        path, _ = build_bundle(tmp_path / "bad.tar", generate_keypair()[0], version=2)
    elif kind == "extra":
        path = tmp_path / "bad.tar"
        path.write_bytes(bundles[2].read_bytes())
        with tarfile.open(path, "a") as tar:
            info = tarfile.TarInfo("extra.sh")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"hi\n"))
    elif kind == "garbage":
        path = tmp_path / "bad.tar"
        path.write_bytes(b"\x00not a tar" * 100)
    else:
        path, digest = bundles[2], "0" * 64
    with pytest.raises(BundleError) as info:
        store.install(path, digest=digest)
    assert info.value.reason == reason
    assert leftovers(store) == []
    assert store.active() is None


def test_broken_reinstall_is_repaired(store, bundles):
    store.install(bundles[1])
    (store.models_dir / "1" / "state.npz").write_bytes(b"rot")
    vb = store.install(bundles[1])
    assert sha256_file(vb.path("state.npz")) == vb.manifest.files["state.npz"].sha256


def test_active_version_is_never_replaced_by_other_bytes(tmp_path, store, bundles, keys):
    store.install(bundles[1])
    store.activate(1)
    other, _ = build_bundle(tmp_path / "other-v1.tar", keys[0], version=1, max_batch=3)
    with pytest.raises(BundleError) as info:
        store.install(other)
    assert info.value.reason == "version_conflict"
    assert store.install(bundles[1]).digest == sha256_file(bundles[1])


def test_load_last_good_falls_back_when_active_is_corrupted(store, bundles):
    for v in (1, 2, 3):
        store.install(bundles[v])
    store.activate(3)
    assert store.load_last_good().manifest.version == 3
    (store.models_dir / "3" / "models" / "tflite-fp32.tflite").write_bytes(b"corrupt")
    vb = store.load_last_good()
    assert vb is not None and vb.manifest.version == 2
    assert store.active() == ActivePointer(2, vb.digest)  # repointed
    assert store.load_last_good(skip={2}).manifest.version == 1


def test_load_last_good_without_pointer_or_models(store, bundles):
    assert store.load_last_good() is None
    store.install(bundles[1])
    store.install(bundles[2])
    store.pointer_path.write_text("{not json")
    assert store.load_last_good().manifest.version == 2
    assert store.active().version == 2


def test_stray_temp_dirs_are_cleaned(store, bundles):
    store.install(bundles[1])
    (store.models_dir / ".2.abc123").mkdir()
    (store.models_dir / ".2.abc123" / "half").write_bytes(b"x")
    (store.root / ".active.json.tmp1").write_bytes(b"x")
    store.load_last_good()
    assert leftovers(store) == ["1"]
    assert not (store.root / ".active.json.tmp1").exists()


def test_prune_keeps_newest_and_active(store, bundles):
    for v in (1, 2, 3, 4):
        store.install(bundles[v])
    store.activate(1)
    assert store.prune(2) == [2]
    assert store.versions() == [1, 3, 4]
    with pytest.raises(ValueError):
        store.remove(1)
    store.remove(3)
    assert store.versions() == [1, 4]


def test_pointer_write_is_atomic(store, bundles, monkeypatch):
    store.install(bundles[1])
    store.install(bundles[2])
    store.activate(1)
    before = store.pointer_path.read_bytes()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.activate(2)
    assert store.pointer_path.read_bytes() == before
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]

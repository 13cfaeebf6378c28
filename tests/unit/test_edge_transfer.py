"""Bundle reassembly from chunks: any order, duplicates, bad chunks, resume, whole-file hash."""

from __future__ import annotations

import hashlib
import random

import pytest

from edge.delivery.transfer import ChunkError, Transfer
from models.bundle import BundleError
from models.messages import ModelAnnouncement

CHUNK = 1000


def announcement(data: bytes, chunk_size: int = CHUNK, *, sha256: str | None = None) -> ModelAnnouncement:
    digest = hashlib.sha256(data).hexdigest()
    return ModelAnnouncement(
        model="favorita-demand",
        version=2,
        bundle_id=digest[:32],
        sha256=sha256 or digest,
        size=len(data),
        chunk_size=chunk_size,
        chunk_sha256=[hashlib.sha256(data[i : i + chunk_size]).hexdigest() for i in range(0, len(data), chunk_size)],
        filename="favorita-demand-v2.bundle.tar",
    )


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.fixture()
def data() -> bytes:
    return random.Random(1).randbytes(10 * CHUNK + 377)  # last chunk shorter


def test_random_order_with_duplicates(tmp_path, data):
    t = Transfer(announcement(data), tmp_path)
    parts = chunks(data)
    assert t.chunks == 11 and t.part_path.stat().st_size == len(data)  # preallocated
    order = list(range(len(parts))) * 2
    random.Random(7).shuffle(order)
    stored = [i for i in order if t.add_chunk(i, parts[i])]
    assert sorted(stored) == list(range(11))  # each stored once
    assert t.complete and t.missing() == [] and t.bytes_received == len(data)
    path = t.finish()
    assert path == tmp_path / f"{t.bundle_id}.tar" and path.read_bytes() == data
    assert not t.part_path.exists() and not t.bitmap_path.exists()


def test_bad_chunk_rejected_then_accepted(tmp_path, data):
    t = Transfer(announcement(data), tmp_path)
    parts = chunks(data)
    bad = bytes([parts[3][0] ^ 1]) + parts[3][1:]
    with pytest.raises(ChunkError) as info:
        t.add_chunk(3, bad)
    assert info.value.reason == "bad_hash" and t.bad_chunks == 1
    assert 3 in t.missing()
    for i, p in enumerate(parts):
        t.add_chunk(i, p)
    assert t.complete and t.finish().read_bytes() == data


def test_out_of_range_and_wrong_size_rejected(tmp_path, data):
    t = Transfer(announcement(data), tmp_path)
    parts = chunks(data)
    for index, payload, reason in [
        (11, parts[0], "out_of_range"),
        (-1, parts[0], "out_of_range"),
        (0, parts[0][:-1], "bad_size"),
        (10, parts[0], "too_large"),  # the last chunk is shorter: more bytes than declared
    ]:
        with pytest.raises(ChunkError) as info:
            t.add_chunk(index, payload)
        assert info.value.reason == reason
    assert t.received == 0


def test_wrong_total_hash_fails_and_discards(tmp_path, data):
    t = Transfer(announcement(data, sha256="ab" * 32), tmp_path)
    for i, p in enumerate(chunks(data)):
        t.add_chunk(i, p)
    with pytest.raises(BundleError) as info:
        t.finish()
    assert info.value.reason == "hash_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_incomplete_finish_refused(tmp_path, data):
    t = Transfer(announcement(data), tmp_path)
    with pytest.raises(BundleError) as info:
        t.finish()
    assert info.value.reason == "incomplete"


def test_resume_reverifies_the_part_file(tmp_path, data):
    ann, parts = announcement(data), chunks(data)
    t = Transfer(ann, tmp_path)
    for i in (0, 1, 2, 5):
        t.add_chunk(i, parts[i])
    t.close()
    with open(t.part_path, "r+b") as fh:  # damage chunk 5 on disk
        fh.seek(5 * CHUNK)
        fh.write(b"\x00" * 10)
    again = Transfer(ann, tmp_path)
    assert again.missing() == [3, 4, 5, 6, 7, 8, 9, 10]
    for i in again.missing():
        assert again.add_chunk(i, parts[i])
    assert again.finish().read_bytes() == data


def test_inconsistent_announcement_rejected(tmp_path, data):
    ann = announcement(data)
    broken = ann.model_copy(update={"chunk_sha256": ann.chunk_sha256[:-1]})
    with pytest.raises(ValueError):
        Transfer(broken, tmp_path)

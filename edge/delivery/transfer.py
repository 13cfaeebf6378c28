"""Reassembling a bundle from hashed chunks, in any order, surviving duplicates and bad chunks.

The announcement (:class:`models.messages.ModelAnnouncement`, built by :mod:`edge.delivery.updater` from the
*signed* targets document only) carries the bundle's size, chunk size and the sha256 of every chunk
and of the whole file; nothing is trusted before it matches. A chunk longer than declared is refused
with reason ``too_large`` (the caller aborts the transfer: endless data); nothing is ever written
past the declared size. Chunks are written at their offset into a preallocated
``<bundle_id>.part`` and a bitmap of received chunks is kept beside it (``<bundle_id>.chunks.json``,
rewritten at most every :attr:`Transfer.SAVE_EVERY_S` and on close), so an interrupted transfer can
resume: on reopening, the chunks the bitmap claims are re-hashed from the part file, and only those
that still match count as received (which is why the bitmap needs no fsync). A complete download
(``<bundle_id>.tar``, whole-file sha256 checked) left by a crash or by a full disk during
unpacking is reused as it is: nothing is fetched again.

>>> import hashlib, tempfile
>>> from models.messages import ModelAnnouncement
>>> data = b"0123456789"
>>> ann = ModelAnnouncement(model="m", version=1, bundle_id="ab12", sha256=hashlib.sha256(data).hexdigest(),
...     size=10, chunk_size=4, filename="m-v1.bundle.tar",
...     chunk_sha256=[hashlib.sha256(data[i:i + 4]).hexdigest() for i in range(0, 10, 4)])
>>> t = Transfer(ann, tempfile.mkdtemp())
>>> [t.add_chunk(i, data[i * 4:i * 4 + 4]) for i in (2, 0, 1, 1)]
[True, True, True, False]
>>> t.complete, t.finish().read_bytes()
(True, b'0123456789')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from edge.store import crash
from models.fsutil import atomic_write_bytes
from models.bundle import BundleError, sha256_file
from models.messages import ModelAnnouncement

__all__ = ["ChunkError", "Transfer"]

logger = logging.getLogger(__name__)


class ChunkError(ValueError):
    """A chunk was rejected. ``reason``: ``out_of_range``, ``bad_size`` (short), ``too_large`` or ``bad_hash``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Transfer:
    """One bundle being received. Not thread-safe: feed it from one thread (or under a lock)."""

    #: The bitmap is written at most this often (and on close): a crash re-fetches at most that much.
    SAVE_EVERY_S = 0.25

    def __init__(self, announcement: ModelAnnouncement, downloads_dir: str | os.PathLike[str]) -> None:
        a = announcement
        n = -(-a.size // a.chunk_size)
        if n != len(a.chunk_sha256):
            raise ValueError(f"announcement lists {len(a.chunk_sha256)} chunk hashes, {a.size} bytes make {n} chunks")
        self.announcement = a
        self.dir = Path(downloads_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.part_path = self.dir / f"{a.bundle_id}.part"
        self.bitmap_path = self.dir / f"{a.bundle_id}.chunks.json"
        self.tar_path = self.dir / f"{a.bundle_id}.tar"
        self.chunks = n
        self.bad_chunks = 0
        self.bytes_received = 0  # stored in this session (good, new chunks)
        self.bytes_offered = 0  # every chunk payload byte seen in this session (duplicates, bad ones too)
        self.resumed_chunks = 0  # chunks already on disk when this transfer was opened
        self.downgrade = False  # set by edge.delivery.updater: a signed rollback command allows an older version
        self.targets: object | None = None  # the verified models.targets.Targets this transfer serves
        self._received = bytearray(n)
        self._fd: int | None = None
        self._dirty = False
        self._saved_at = 0.0
        self._open()

    # -- state ------------------------------------------------------------------------------
    @property
    def bundle_id(self) -> str:
        return self.announcement.bundle_id

    @property
    def received(self) -> int:
        return sum(self._received)

    @property
    def complete(self) -> bool:
        return all(self._received)

    def has(self, index: int) -> bool:
        """Whether chunk ``index`` is stored (and verified)."""
        return bool(self._received[index])

    def missing(self) -> list[int]:
        """Indexes of the chunks not received yet."""
        return [i for i, got in enumerate(self._received) if not got]

    def chunk_len(self, index: int) -> int:
        """Declared length of chunk ``index``."""
        return self._chunk_len(index)

    def _chunk_len(self, index: int) -> int:
        a = self.announcement
        return min(a.chunk_size, a.size - index * a.chunk_size)

    # -- files ------------------------------------------------------------------------------
    def _open(self) -> None:
        if self.tar_path.exists() and sha256_file(self.tar_path) == self.announcement.sha256:
            # a complete, hash-checked download a crash (or a full disk during unpacking) left behind
            self._received = bytearray(b"\x01" * self.chunks)
            self.resumed_chunks = self.chunks
            self.part_path.unlink(missing_ok=True)
            self.bitmap_path.unlink(missing_ok=True)
            logger.info("reusing the complete download %s", self.tar_path.name)
            return
        resumed = self.part_path.exists() and self._load_bitmap()
        self._fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o644)
        if not resumed:
            os.ftruncate(self._fd, 0)
            self._received = bytearray(self.chunks)
        os.ftruncate(self._fd, self.announcement.size)
        if not resumed:
            try:
                os.posix_fallocate(self._fd, 0, self.announcement.size)  # fail early if the disk is full
            except (AttributeError, OSError) as exc:
                if getattr(exc, "errno", None) == 28:  # ENOSPC
                    raise
        else:
            self._reverify()
            self.resumed_chunks = self.received
            logger.info("resuming transfer %s: %d/%d chunks", self.bundle_id, self.received, self.chunks)

    def _load_bitmap(self) -> bool:
        try:
            data = json.loads(self.bitmap_path.read_bytes())
        except (OSError, ValueError):
            return False
        a = self.announcement
        if (data.get("sha256"), data.get("size"), data.get("chunk_size")) != (a.sha256, a.size, a.chunk_size):
            return False
        received = bytes.fromhex(data.get("received", ""))
        if len(received) != self.chunks:
            return False
        self._received = bytearray(1 if b else 0 for b in received)
        return True

    def _reverify(self) -> None:
        assert self._fd is not None
        for i, got in enumerate(self._received):
            if got:
                offset = i * self.announcement.chunk_size
                data = os.pread(self._fd, self._chunk_len(i), offset)
                self._received[i] = hashlib.sha256(data).hexdigest() == self.announcement.chunk_sha256[i]

    def _save_bitmap(self) -> None:
        self._dirty, self._saved_at = False, time.monotonic()
        a = self.announcement
        payload = {"sha256": a.sha256, "size": a.size, "chunk_size": a.chunk_size, "received": self._received.hex()}
        atomic_write_bytes(self.bitmap_path, json.dumps(payload).encode(), durable=False)

    # -- receiving --------------------------------------------------------------------------
    def add_chunk(self, index: int, payload: bytes) -> bool:
        """Store chunk ``index``: True if stored now, False if it was already there.

        Raises :class:`ChunkError` if the index is out of range, the size is wrong, or its sha256
        does not match the announcement (counted in :attr:`bad_chunks`; it may arrive again).
        """
        if self._fd is None:
            raise ValueError(f"transfer {self.bundle_id} is closed")
        if not 0 <= index < self.chunks:
            raise ChunkError("out_of_range", f"chunk {index} of a {self.chunks}-chunk bundle")
        expected = self._chunk_len(index)
        self.bytes_offered += len(payload)
        if len(payload) > expected:
            raise ChunkError("too_large", f"chunk {index} is {len(payload)} bytes, more than the declared {expected}")
        if len(payload) != expected:
            raise ChunkError("bad_size", f"chunk {index} is {len(payload)} bytes, expected {expected}")
        if self._received[index]:
            return False
        if hashlib.sha256(payload).hexdigest() != self.announcement.chunk_sha256[index]:
            self.bad_chunks += 1
            raise ChunkError("bad_hash", f"chunk {index} does not match its announced sha256")
        os.pwrite(self._fd, payload, index * self.announcement.chunk_size)
        self._received[index] = 1
        self.bytes_received += len(payload)
        now = time.monotonic()
        self._dirty = True
        if now - self._saved_at >= self.SAVE_EVERY_S:  # a crash loses at most this much progress
            self._save_bitmap()
        if crash.armed():
            crash.crash_point(f"after_chunk_{self.received}")
        return True

    def finish(self) -> Path:
        """Check the whole file's sha256 and rename it to ``<bundle_id>.tar``; return that path.

        Raises :class:`BundleError` (``incomplete`` or ``hash_mismatch``; the download is discarded
        on a mismatch).
        """
        if not self.complete:
            raise BundleError("incomplete", f"transfer {self.bundle_id} lacks chunks {self.missing()[:10]}")
        if self._fd is None and not self.part_path.exists() and self.tar_path.exists():
            return self.tar_path  # reused from disk: checked when this transfer was opened
        if self._fd is not None:
            os.fsync(self._fd)
        self.close()
        digest = sha256_file(self.part_path)
        if digest != self.announcement.sha256:
            self.discard()
            raise BundleError("hash_mismatch", f"bundle sha256 is {digest}, announced {self.announcement.sha256}")
        os.replace(self.part_path, self.tar_path)
        self.bitmap_path.unlink(missing_ok=True)
        crash.crash_point("after_download")
        return self.tar_path

    def close(self) -> None:
        """Stop receiving; the part file and bitmap stay for a later resume."""
        if self._dirty and self._fd is not None:
            self._save_bitmap()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close and delete every file of this transfer."""
        self.close()
        for p in (self.part_path, self.bitmap_path, self.tar_path):
            p.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"<Transfer {self.bundle_id} {self.received}/{self.chunks} chunks>"

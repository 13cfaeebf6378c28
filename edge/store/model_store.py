"""The on-device model store: one verified, unpacked folder per version and an atomic pointer.

Layout under the agent's state folder::

    models/<version>/     an unpacked bundle, verified by models.bundle (manifest, signature, members)
    active.json           {"version": 3, "digest": "<sha256 of the bundle file>"}, replaced atomically
    downloads/            partial and finished transfers (edge.delivery.transfer)

Typical use (one writer: the agent's update worker)::

    store = ModelStore("/var/lib/edgeship", trusted=[public_key])
    bundle = store.load_last_good()            # at start-up: the active version, or the newest good one
    new = store.install("downloads/ab12.tar", digest=announced_sha256)   # full verification
    store.activate(new.manifest.version)       # after the new model is loaded and warmed up
    store.prune(keep=3)

The store is not thread-safe: call it from one thread at a time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.fsutil import atomic_write_bytes
from models.bundle import BundleError, VerifiedBundle, read_manifest, sha256_file, unpack_bundle, verify_unpacked

__all__ = ["ActivePointer", "ModelStore"]

logger = logging.getLogger(__name__)

_DIGEST_FILE = "bundle.sha256"  # written by models.bundle.unpack_bundle


@dataclasses.dataclass(frozen=True)
class ActivePointer:
    """Contents of ``active.json``."""

    version: int
    digest: str


class ModelStore:
    """Versioned model folders under ``<state_dir>/models`` and the ``active.json`` pointer."""

    def __init__(self, state_dir: str | os.PathLike[str], trusted: Sequence[Ed25519PublicKey]) -> None:
        self.root = Path(state_dir)
        self.models_dir = self.root / "models"
        self.downloads_dir = self.root / "downloads"
        self.pointer_path = self.root / "active.json"
        # A list is kept, not copied: the agent's trust store (models.keys.TrustStore) updates it in
        # place when a root-signed key list adds or revokes signing keys (it may start empty).
        self.trusted = trusted if isinstance(trusted, list) else list(trusted)
        for d in (self.root, self.models_dir, self.downloads_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- reading ----------------------------------------------------------------------------
    def version_dir(self, version: int) -> Path:
        return self.models_dir / str(int(version))

    def versions(self) -> list[int]:
        """Installed version numbers (folders), oldest first; temp folders are not versions."""
        return sorted(int(p.name) for p in self.models_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def active(self) -> ActivePointer | None:
        """The pointer, or None if there is none (or it is unreadable, which is logged)."""
        try:
            data = json.loads(self.pointer_path.read_bytes())
            return ActivePointer(version=int(data["version"]), digest=str(data["digest"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("active.json is unreadable, ignoring it: %s", exc)
            return None

    def _digest_of(self, version: int) -> str | None:
        try:
            return (self.version_dir(version) / _DIGEST_FILE).read_text().strip()
        except OSError:
            return None

    # -- writing ----------------------------------------------------------------------------
    def install(
        self,
        bundle_path: str | os.PathLike[str],
        digest: str | None = None,
        *,
        on_member: Callable[[str], None] | None = None,
    ) -> VerifiedBundle:
        """Verify ``bundle_path`` completely (signature, every member, nothing extra; its sha256 if
        ``digest`` is given) and unpack it into ``models/<version>``. Raises :class:`BundleError`
        and leaves nothing behind when any check fails.

        An existing folder for the version is reused if it holds the same digest and verifies;
        otherwise it is replaced, except the active version's folder with another digest
        (``version_conflict``: a version number is never reused for other bytes).
        """
        bundle_path = Path(bundle_path)
        manifest = read_manifest(bundle_path, self.trusted)
        dest = self.version_dir(manifest.version)
        if dest.exists():
            file_digest = digest or sha256_file(bundle_path)
            same = self._digest_of(manifest.version) == file_digest
            if same:
                try:
                    bundle = verify_unpacked(dest, self.trusted)
                    logger.info("version %d is already installed; reusing it", manifest.version)
                    return bundle
                except BundleError as exc:
                    logger.warning("installed version %d is damaged (%s); unpacking it again", manifest.version, exc)
            active = self.active()
            if not same and active is not None and active.version == manifest.version:
                raise BundleError(
                    "version_conflict",
                    f"version {manifest.version} is active with another digest; a version is never replaced",
                )
            self.discard_dir(dest)
        return unpack_bundle(bundle_path, dest, self.trusted, digest=digest, on_member=on_member)

    def activate(self, version: int) -> ActivePointer:
        """Point ``active.json`` at an installed version (atomic: temp file, fsync, rename, fsync dir)."""
        digest = self._digest_of(version)
        if digest is None:
            raise FileNotFoundError(f"version {version} is not installed in {self.models_dir}")
        pointer = ActivePointer(version=int(version), digest=digest)
        payload = {**dataclasses.asdict(pointer), "activated_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        atomic_write_bytes(self.pointer_path, json.dumps(payload, indent=1).encode() + b"\n")
        logger.info("activated version %d", version, extra={"digest": digest})
        return pointer

    def load_last_good(self, *, skip: Iterable[int] = ()) -> VerifiedBundle | None:
        """At start-up: re-verify the active version; if it is broken (or missing), fall back to the
        newest other version that verifies and repoint ``active.json`` at it. None if none does.
        ``skip`` excludes versions (e.g. one that verified but would not load)."""
        self.clean_stray()
        skip = set(skip)
        pointer = self.active()
        order = [pointer.version] if pointer is not None and pointer.version not in skip else []
        order += [v for v in reversed(self.versions()) if v not in order and v not in skip]
        for version in order:
            try:
                bundle = verify_unpacked(self.version_dir(version), self.trusted)
                if bundle.manifest.version != version:
                    raise BundleError("bad_manifest", f"folder {version} holds version {bundle.manifest.version}")
            except BundleError as exc:
                logger.error("version %d does not verify: %s", version, exc, extra={"reason": exc.reason})
                continue
            if pointer is None or (pointer.version, pointer.digest) != (version, bundle.digest):
                logger.warning("falling back to version %d", version)
                self.activate(version)
            return bundle
        return None

    def remove(self, version: int) -> None:
        """Delete an installed version (never the active one)."""
        active = self.active()
        if active is not None and active.version == version:
            raise ValueError(f"version {version} is active; it cannot be removed")
        self.discard_dir(self.version_dir(version))

    def prune(self, keep: int) -> list[int]:
        """Keep the newest ``keep`` versions and the active one; delete the rest. Returns the removed."""
        if keep < 1:
            raise ValueError("keep must be >= 1")
        active = self.active()
        versions = sorted(self.versions(), reverse=True)
        keep_set = set(versions[:keep]) | ({active.version} if active else set())
        removed = [v for v in versions if v not in keep_set]
        for v in removed:
            self.discard_dir(self.version_dir(v))
            logger.info("pruned version %d", v)
        self.clean_stray()
        return removed

    def discard_dir(self, path: Path) -> None:
        """Delete a version folder without ever leaving half of it under its number: rename it to a
        ``.``-name first (atomic), then delete; a crash in between leaves a stray for clean_stray."""
        if not path.exists():
            return
        trash = self.models_dir / f".discard-{path.name}-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_stray(self) -> list[Path]:
        """Remove temp leftovers of interrupted writes (``models/.*``, ``.active.json.*``)."""
        stray = [p for p in self.models_dir.iterdir() if p.name.startswith(".")]
        stray += list(self.root.glob(f".{self.pointer_path.name}.*"))
        for p in stray:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            logger.info("removed stray %s", p)
        return stray

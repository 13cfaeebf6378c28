"""Reading and verifying a bundle: one uncompressed tar per model version.

Members: ``manifest.json`` (signed), ``signature.json`` and every file the manifest lists with its
sha256 and size (model variants, tables, state, holdout slice, reference statistics). A bundle is
accepted only when the signature is by a trusted key, every listed member is present with the
listed hash and size, and nothing else is in the file. Unpacking writes to a temporary folder
beside the destination and renames it into place, so a crash never leaves a half-unpacked model.

>>> # bundle = unpack_bundle("favorita-demand-v3.bundle.tar", "state/models/3", [public_key])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from models.contract import CONTRACT_VERSION
from models.fsutil import fsync_dir
from models.manifest import Manifest
from models.signing import SignatureEnvelope, SignatureError, verify

__all__ = ["MAX_BUNDLE_BYTES", "BundleError", "VerifiedBundle", "read_manifest", "unpack_bundle", "verify_unpacked", "sha256_file"]

MANIFEST, SIGNATURE = "manifest.json", "signature.json"
_MAX_META_BYTES = 16 * 2**20
_META_SCAN = 8  # manifest.json and signature.json are written first (cloud.training.bundle)
#: Largest bundle file accepted at all (as an announcement's size limit), checked before parsing.
MAX_BUNDLE_BYTES = 2**31


def _check_shape(bundle: Path, manifest: Manifest, meta: dict[str, bytes]) -> None:
    """The file is no larger than its signed members (plus tar headers) can make it."""
    size = bundle.stat().st_size
    blocks = sum(-(-e.size // 512) * 512 for e in manifest.files.values()) + sum(-(-len(m) // 512) * 512 for m in meta.values())
    limit = blocks + 2048 * (len(manifest.files) + 2) + 20480
    if size > limit:
        raise BundleError("too_large", f"{bundle.name} is {size} bytes; its signed members allow at most {limit}")


def _check_size(bundle: Path) -> None:
    size = bundle.stat().st_size
    if size > MAX_BUNDLE_BYTES:
        raise BundleError("too_large", f"{bundle.name} is {size} bytes, more than {MAX_BUNDLE_BYTES}")


class BundleError(Exception):
    """The bundle is refused. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    directory: Path
    digest: str  # sha256 of the bundle file
    keyid: str

    def path(self, member: str) -> Path:
        return self.directory / member


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _safe_member(info: tarfile.TarInfo) -> None:
    name = info.name
    if not info.isfile():
        raise BundleError("bad_member", f"bundle member {name!r} is not a regular file")
    if name.startswith("/") or ".." in name.split("/") or "\\" in name or not name:
        raise BundleError("bad_member", f"bundle member {name!r} has an unsafe path")


def _check_manifest(manifest_bytes: bytes, signature_bytes: bytes, trusted: list[Ed25519PublicKey]) -> tuple[Manifest, str]:
    try:
        envelope = SignatureEnvelope.model_validate_json(signature_bytes)
    except ValidationError as exc:
        raise BundleError("bad_signature", f"signature.json is malformed: {exc.errors()[0]['msg']}") from exc
    try:
        keyid = verify(manifest_bytes, envelope, trusted)
    except SignatureError as exc:
        raise BundleError("bad_signature", str(exc)) from exc
    try:
        manifest = Manifest.model_validate(json.loads(manifest_bytes))
    except (ValidationError, ValueError) as exc:
        raise BundleError("bad_manifest", f"manifest.json does not match the schema: {exc}") from exc
    if manifest.contract.version != CONTRACT_VERSION:
        raise BundleError(
            "contract_mismatch",
            f"bundle speaks feature contract v{manifest.contract.version}, this device v{CONTRACT_VERSION}",
        )
    return manifest, keyid


def read_manifest(bundle: str | os.PathLike[str], trusted: Iterable[Ed25519PublicKey]) -> Manifest:
    """Verify only the signed manifest of a bundle (cheap: reads two small members)."""
    _check_size(Path(bundle))
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            meta = _read_meta(tar)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError("bad_archive", f"{Path(bundle).name} is not a readable bundle: {exc}") from exc
    return _check_manifest(meta[MANIFEST], meta[SIGNATURE], list(trusted))[0]


def _read_meta(tar: tarfile.TarFile) -> dict[str, bytes]:
    """The manifest and signature, read from the first few headers only: nothing else of the archive
    is parsed before the signature is checked (300k members must not cost 226 MiB and 15 s)."""
    found: dict[str, tarfile.TarInfo] = {}
    for _ in range(_META_SCAN):
        info = tar.next()
        if info is None:
            break
        if info.name in (MANIFEST, SIGNATURE) and info.name not in found:
            found[info.name] = info
        if len(found) == 2:
            break
    meta: dict[str, bytes] = {}
    for name in (MANIFEST, SIGNATURE):
        info = found.get(name)
        if info is None:
            raise BundleError("bad_member", f"bundle has no {name} among its first {_META_SCAN} members")
        _safe_member(info)
        if info.size > _MAX_META_BYTES:
            raise BundleError("bad_member", f"{name} is {info.size} bytes, more than {_MAX_META_BYTES}")
        fh = tar.extractfile(info)
        assert fh is not None
        meta[name] = fh.read()
    return meta


def unpack_bundle(
    bundle: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    trusted: Iterable[Ed25519PublicKey],
    *,
    digest: str | None = None,
    on_member: Callable[[str], None] | None = None,
) -> VerifiedBundle:
    """Verify ``bundle`` completely and unpack it into ``dest`` (which must not exist yet).

    Raises :class:`BundleError` and leaves nothing at ``dest`` if any check fails. ``on_member`` is
    called with each member's name once it is verified and written (in the temp folder).
    """
    bundle, dest = Path(bundle), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists")
    _check_size(bundle)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            # signature first, then the file's size and member count against what it signed, then the rest
            meta = _read_meta(tar)
            manifest, keyid = _check_manifest(meta[MANIFEST], meta[SIGNATURE], list(trusted))
            _check_shape(bundle, manifest, meta)
            file_digest = sha256_file(bundle)
            if digest is not None and digest != file_digest:
                raise BundleError("hash_mismatch", f"bundle sha256 is {file_digest}, expected {digest}")
            seen: set[str] = set()
            for info in tar:  # streamed: the first member beyond the signed list ends it (unlisted_member)
                _safe_member(info)
                if info.name in seen:
                    raise BundleError("bad_member", f"bundle member {info.name!r} appears twice")
                seen.add(info.name)
                if info.name in (MANIFEST, SIGNATURE):
                    continue
                entry = manifest.files.get(info.name)
                if entry is None:
                    raise BundleError("unlisted_member", f"bundle member {info.name!r} is not in the signed manifest")
                if info.size != entry.size:
                    raise BundleError("size_mismatch", f"{info.name} is {info.size} bytes, manifest says {entry.size}")
                target = tmp / info.name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(info)
                assert src is not None
                h = hashlib.sha256()
                with open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        h.update(block)
                        out.write(block)
                    out.flush()
                    os.fsync(out.fileno())
                if h.hexdigest() != entry.sha256:
                    raise BundleError("hash_mismatch", f"{info.name} sha256 does not match the signed manifest")
                if on_member is not None:
                    on_member(info.name)
            missing = set(manifest.files) - seen
            if missing:
                raise BundleError("missing_member", f"bundle lacks {sorted(missing)} listed in the manifest")
        for name, data in [*meta.items(), ("bundle.sha256", (file_digest + "\n").encode())]:
            with open(tmp / name, "wb") as out:  # durable before the rename, like every member
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        for folder in sorted({p for p in tmp.rglob("*") if p.is_dir()}, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(folder)  # member folders (e.g. variants/…) hold their entries durably too
        fsync_dir(tmp)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
    except (tarfile.TarError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError("bad_archive", f"{bundle.name} is not a readable bundle: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return VerifiedBundle(manifest=manifest, directory=dest, digest=file_digest, keyid=keyid)


def verify_unpacked(directory: str | os.PathLike[str], trusted: Iterable[Ed25519PublicKey]) -> VerifiedBundle:
    """Re-verify an unpacked bundle on disk (signature and every member's hash), e.g. at start-up."""
    directory = Path(directory)
    try:
        manifest_bytes = (directory / MANIFEST).read_bytes()
        signature_bytes = (directory / SIGNATURE).read_bytes()
        digest = (directory / "bundle.sha256").read_text().strip()
    except OSError as exc:
        raise BundleError("missing_member", f"{directory}: {exc}") from exc
    manifest, keyid = _check_manifest(manifest_bytes, signature_bytes, list(trusted))
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise BundleError("hash_mismatch", f"{path} is missing or does not match the signed manifest")
    return VerifiedBundle(manifest=manifest, directory=directory, digest=digest, keyid=keyid)

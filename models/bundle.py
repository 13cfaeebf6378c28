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

__all__ = ["BundleError", "VerifiedBundle", "read_manifest", "unpack_bundle", "verify_unpacked", "sha256_file"]

MANIFEST, SIGNATURE = "manifest.json", "signature.json"
_MAX_META_BYTES = 16 * 2**20


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
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            meta = _read_meta(tar)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError("bad_archive", f"{Path(bundle).name} is not a readable bundle: {exc}") from exc
    return _check_manifest(meta[MANIFEST], meta[SIGNATURE], list(trusted))[0]


def _read_meta(tar: tarfile.TarFile) -> dict[str, bytes]:
    meta: dict[str, bytes] = {}
    for name in (MANIFEST, SIGNATURE):
        try:
            info = tar.getmember(name)
        except KeyError:
            raise BundleError("bad_member", f"bundle has no {name}") from None
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
    file_digest = sha256_file(bundle)
    if digest is not None and digest != file_digest:
        raise BundleError("hash_mismatch", f"bundle sha256 is {file_digest}, expected {digest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            meta = _read_meta(tar)
            manifest, keyid = _check_manifest(meta[MANIFEST], meta[SIGNATURE], list(trusted))
            seen: set[str] = set()
            for info in tar:
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
        for name, data in meta.items():
            (tmp / name).write_bytes(data)
        (tmp / "bundle.sha256").write_text(file_digest + "\n")
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

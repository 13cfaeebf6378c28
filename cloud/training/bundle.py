"""Packing and signing a bundle: one uncompressed tar per model version.

The signature is made here, when the bundle is made, over the exact bytes of ``manifest.json``;
publishing signs nothing. See :mod:`models.bundle` for what an agent checks.

>>> # write_bundle("out/favorita-demand-v1.bundle.tar", manifest_fields, {"tables.json": b"{}"}, key)
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.bundle import MANIFEST, SIGNATURE
from models.manifest import FileEntry, Manifest, canonical_json
from models.signing import sign

__all__ = ["write_bundle", "bundle_filename"]


def bundle_filename(name: str, version: int) -> str:
    return f"{name}-v{version}.bundle.tar"


def _bytes_of(member: Path | bytes) -> bytes:
    return member if isinstance(member, bytes) else Path(member).read_bytes()


def write_bundle(
    out_path: str | os.PathLike[str],
    manifest_fields: Mapping[str, Any],
    members: Mapping[str, Path | bytes],
    private_key: Ed25519PrivateKey,
) -> tuple[Path, Manifest]:
    """Write a signed bundle atomically; return its path and the manifest it carries.

    ``manifest_fields`` is every manifest field but ``files``, which is computed from ``members``.
    """
    out_path = Path(out_path)
    data = {name: _bytes_of(m) for name, m in sorted(members.items())}
    for name in data:
        if name in (MANIFEST, SIGNATURE) or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bundle member name {name!r} is reserved or unsafe")
    files = {name: FileEntry(sha256=hashlib.sha256(b).hexdigest(), size=len(b)) for name, b in data.items()}
    manifest = Manifest.model_validate({**manifest_fields, "files": files})
    manifest_bytes = canonical_json(manifest.model_dump(mode="json"))
    signature_bytes = sign(manifest_bytes, private_key).model_dump_json().encode()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w:", format=tarfile.PAX_FORMAT) as tar:
                for name, payload in [(MANIFEST, manifest_bytes), (SIGNATURE, signature_bytes), *data.items()]:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    info.mtime = int(manifest.created_at.timestamp())
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(payload))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a bundle is public, only its signing key is secret
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_path, manifest

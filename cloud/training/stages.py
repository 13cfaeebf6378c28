"""Thin pipeline stages for ``dvc.yaml`` (``edgeship stage split | export | bundle``), reusing the
loader, the trainer's window rule and the bundle code. ``edgeship train`` stays the one command
that trains, exports, checks parity and signs (a model's variants must be checked against the Keras
model they came from, in the same run); the DVC stages around it make each step's output a
tracked artefact:

- ``split``: the days the trainer uses (lag window + horizon + validation + ``train_days``, as
  :func:`cloud.training.pipeline.train` cuts them), as a Favorita-format folder, and
  ``split.json`` (train/validation windows, rows, the dataset hash);
- ``export``: the shipped variants out of the signed bundle (verified), one file each, with their
  parity figures (``export/variants.json``);
- ``bundle``: the verified bundle copied to ``dist/`` with its manifest beside it.

>>> # split("data", "split", recipe=load_recipe()); export("model", "export", [pub]); bundle("model", "dist", [pub])
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models.contract import LAG_WINDOW_DAYS
from models.fsutil import atomic_write_bytes
from models.recipes import Recipe

__all__ = ["split", "export", "bundle"]

logger = logging.getLogger(__name__)


def _json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=str).encode(), mode=0o644)


def split(data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, recipe: Recipe) -> dict[str, Any]:
    """Write the trainer's window of ``data_dir`` to ``out_dir`` (the reference tables copied whole)."""
    import pandas as pd

    from cloud.data import loader

    src, out = Path(data_dir), Path(out_dir)
    loaded = loader.load(src, progress=False)
    rows, _ = loader.clean(loaded.train)
    last = rows["date"].max()
    needed = LAG_WINDOW_DAYS + recipe.serving.horizon_days + recipe.validation_days + recipe.train_days
    first = max(rows["date"].min(), last - pd.Timedelta(days=needed - 1))
    valid_first = last - pd.Timedelta(days=recipe.validation_days - 1)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        for f in src.iterdir():
            if f.is_file() and f.name != "train.csv":
                shutil.copy2(f, tmp / f.name)
        window = loader.load(src, start=first, end=last, progress=False).train
        window.to_csv(tmp / "train.csv", index=False, date_format="%Y-%m-%d")
        info = {
            "dataset_version": loaded.version,
            "days": {"first": first.date(), "last": last.date(), "validation_first": valid_first.date()},
            "rows": {"window": len(window), "validation": int((window["date"] >= valid_first).sum())},
            "rule": "lag window + horizon + validation_days + train_days before the last day (as edgeship train cuts it)",
        }
        _json(tmp / "split.json", info)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("split %s -> %s: %s", src, out, info["rows"])
    return info


def _bundle_in(model_dir: Path) -> Path:
    report = json.loads((model_dir / "report.json").read_text())
    if not report.get("bundle"):
        raise ValueError(f"{model_dir / 'report.json'}: no bundle (a gate stopped the run)")
    return Path(report["bundle"])


def export(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], trusted: list) -> dict[str, Any]:
    """The shipped variants of ``model_dir``'s bundle (signature and every hash verified) as files."""
    from models.bundle import unpack_bundle

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        vb = unpack_bundle(_bundle_in(Path(model_dir)), Path(tmp) / "b", trusted)
        out.mkdir(parents=True)
        variants = {}
        for v in vb.manifest.variants:
            (out / v.file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(tmp) / "b" / v.file, out / v.file)
            variants[v.name] = {"file": v.file, "runtime": v.runtime, "size_bytes": v.size_bytes, "metrics": v.metrics}
    info = {"model": vb.manifest.name, "version": vb.manifest.version, "variants": variants}
    _json(out / "variants.json", info)
    return info


def bundle(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], trusted: list) -> Path:
    """Copy the verified bundle to ``out_dir`` with ``manifest.json`` beside it."""
    from models.bundle import read_manifest

    src = _bundle_in(Path(model_dir))
    manifest = read_manifest(src, trusted)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.bundle.tar"):
        old.unlink()
    dst = out / src.name
    atomic_write_bytes(dst, src.read_bytes(), mode=0o644)
    _json(out / "manifest.json", manifest.model_dump(mode="json"))
    return dst

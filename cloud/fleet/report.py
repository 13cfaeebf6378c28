"""Realised accuracy per store and model version, next to the offline validation NWRMSLE.

Reads what the fleet ingest saved (``edgeship fleet serve --state DIR``: every device's last
telemetry, whose ``realised`` list the agent fills, :mod:`edge.monitoring.realised`) and pools the
devices' running sums per ``(store_nbr, model, version)`` (NWRMSLE² × rows is additive with unit
weights; weighted sums are approximated by rows). The offline figure comes from the devices (their
bundle's manifest) or from manifests given with ``--manifest``.

    $ edgeship fleet report --state /var/lib/edgeship-fleet
    store  model            version  devices  rows  realised_nwrmsle  offline_nwrmsle
    1      favorita-demand  3        1        412   0.5121            0.4977

>>> rows = [{"store_nbr": 1, "model": "m", "version": 1, "devices": 1, "rows": 2, "realised_nwrmsle": 0.5, "offline_nwrmsle": None}]
>>> print(format_report(rows).splitlines()[1])
1      m      1        1        2     0.5000            —
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cloud.fleet.ingest import DeviceRecord, FleetState

__all__ = ["realised_report", "format_report", "offline_from_manifests", "load_state"]


def realised_report(
    devices: Iterable[DeviceRecord], offline: Mapping[tuple[str, int], float] | None = None
) -> list[dict[str, Any]]:
    """One row per store, model and version: pooled realised NWRMSLE and the offline one."""
    pooled: dict[tuple[int, str, int], list[float]] = {}
    for d in devices:
        for r in d.telemetry.get("realised") or []:
            try:
                key = (int(r["store_nbr"]), str(r["model"]), int(r["version"]))
                rows, err = int(r["rows"]), float(r["nwrmsle"])
            except (KeyError, TypeError, ValueError):
                continue
            p = pooled.setdefault(key, [0.0, 0.0, 0.0, math.nan])
            p[0] += rows
            p[1] += rows * err * err
            p[2] += 1
            if r.get("offline_nwrmsle") is not None:
                p[3] = float(r["offline_nwrmsle"])
    out = []
    for (store, model, version), (rows, sq, n, off) in sorted(pooled.items()):
        if offline and (model, version) in offline:
            off = offline[(model, version)]
        out.append(
            {
                "store_nbr": store,
                "model": model,
                "version": version,
                "devices": int(n),
                "rows": int(rows),
                "realised_nwrmsle": round(math.sqrt(sq / rows), 6) if rows else None,
                "offline_nwrmsle": None if math.isnan(off) else off,
            }
        )
    return out


def offline_from_manifests(paths: Iterable[str | Path]) -> dict[tuple[str, int], float]:
    """``(model, version) -> validation NWRMSLE`` of the preferred variant of each ``manifest.json``."""
    from models.manifest import Manifest

    out: dict[tuple[str, int], float] = {}
    for path in paths:
        m = Manifest.model_validate_json(Path(path).read_bytes())
        for v in m.variants:
            if "nwrmsle" in v.metrics:
                out[(m.name, m.version)] = float(v.metrics["nwrmsle"])
                break
    return out


def load_state(folder: str | Path) -> FleetState:
    if not (Path(folder) / "ingest.json").exists():
        raise FileNotFoundError(f"--state {folder}: no ingest.json (run `edgeship fleet serve --state {folder}` first)")
    return FleetState(state_dir=folder, expire_after_s=math.inf)


def format_report(rows: list[dict[str, Any]]) -> str:
    header = ["store", "model", "version", "devices", "rows", "realised_nwrmsle", "offline_nwrmsle"]
    lines = [header]
    for r in rows:
        fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append([str(r["store_nbr"]), r["model"], str(r["version"]), str(r["devices"]), str(r["rows"]),
                      fmt(r["realised_nwrmsle"]), fmt(r["offline_nwrmsle"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)

"""Argument types and helpers shared by the sub-commands (each names the rule a bad value broke)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

__all__ = ["positive", "iso_date", "store_list", "pairs", "seconds", "error", "DEFAULT_STATE_DIR", "EXAMPLES"]

DEFAULT_STATE_DIR = Path(os.environ.get("EDGESHIP_STATE_DIR", Path.home() / ".edgeship"))
EXAMPLES = argparse.RawDescriptionHelpFormatter


def positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def iso_date(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {value!r}") from None


def store_list(value: str) -> list[int]:
    try:
        stores = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be store numbers separated by commas, got {value!r}") from None
    if not stores or min(stores) <= 0:
        raise argparse.ArgumentTypeError("store numbers must be positive")
    return stores


def pairs(values: list[str] | None) -> dict[str, str]:
    out = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise argparse.ArgumentTypeError(f"{v!r} must be KEY=VALUE")
        out[k.strip()] = val.strip()
    return out


def seconds(value: str) -> float:
    """``3600``, ``90s``, ``15m``, ``12h``, ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        n = float(value[:-1]) * units[value[-1]] if value and value[-1] in units else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be seconds (e.g. 3600, 15m, 12h, 7d), got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return n


def error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code

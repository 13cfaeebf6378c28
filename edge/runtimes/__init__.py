"""Runtime plugins, registered explicitly and imported lazily.

A plugin whose dependency is missing is reported (``available_runtimes()``), never fatal: a Pi image
without onnxruntime still serves ``tflite-*`` variants.

::

    avail = available_runtimes()                  # {"litert": "ok", "tflite_legacy": "not installed", ...}
    name = runtime_for_variant("tflite-int8", avail)          # "litert"
    rt = get_runtime(name)("models/tflite-int8.tflite", threads=1)
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Mapping

from edge.runtimes.base import Runtime, RuntimeLoadError, RuntimeUnavailable

from models.variants import runtimes_for

__all__ = [
    "REGISTRY",
    "Runtime",
    "RuntimeLoadError",
    "RuntimeUnavailable",
    "available_runtimes",
    "get_runtime",
    "runtime_for_variant",
]

logger = logging.getLogger(__name__)

#: Plugin name → ``module:Class``. Add a runtime by adding a file and a line here.
REGISTRY: dict[str, str] = {
    "litert": "edge.runtimes.litert:LiteRTRuntime",
    "tflite_legacy": "edge.runtimes.tflite_legacy:TFLiteLegacyRuntime",
    "onnxruntime": "edge.runtimes.onnx:OnnxRuntime",
    "fake": "edge.runtimes.fake:FakeRuntime",
}



@functools.cache
def get_runtime(name: str) -> type[Runtime]:
    """The plugin class registered as ``name`` (KeyError if unknown)."""
    try:
        module, cls = REGISTRY[name].split(":")
    except KeyError:
        raise KeyError(f"unknown runtime {name!r}; known: {sorted(REGISTRY)}") from None
    return getattr(importlib.import_module(module), cls)


def available_runtimes() -> dict[str, str]:
    """Every registered plugin → ``"ok"`` or why it cannot run here."""
    out: dict[str, str] = {}
    for name in REGISTRY:
        try:
            ok, reason = get_runtime(name).available()
        except Exception as exc:  # a broken plugin is reported like a missing one
            ok, reason = False, f"plugin failed: {exc}"
        out[name] = "ok" if ok else reason
    return out


def runtime_for_variant(variant_name: str, available: Mapping[str, str], *, allow_fake: bool = False) -> str | None:
    """The plugin to run ``variant_name`` with, given ``available_runtimes()``; None if none can.

    ``tflite-*`` → ``litert``, else ``tflite_legacy``; ``onnx-*`` → ``onnxruntime``. With
    ``allow_fake`` the fake runtime stands in when no real one can (tests and demos only).

    >>> runtime_for_variant("onnx-int8", {"onnxruntime": "ok"})
    'onnxruntime'
    >>> runtime_for_variant("tflite-fp32", {"litert": "not installed", "tflite_legacy": "ok"})
    'tflite_legacy'
    """
    for name in runtimes_for(variant_name):
        if available.get(name) == "ok":
            return name
    if allow_fake and available.get("fake") == "ok":
        return "fake"
    return None

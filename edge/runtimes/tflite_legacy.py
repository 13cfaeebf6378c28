"""``tflite_runtime`` (tflite-runtime 2.14), kept only as a fallback for old Raspberry Pi images.

tflite-runtime 2.14 installs beside numpy 2 but crashes on ``Interpreter()``: it works only with
numpy < 2, so :meth:`TFLiteLegacyRuntime.available` refuses that combination instead of crashing.
Dynamic-range models load only if exported with per-channel quantisation of dense layers disabled.
"""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import numpy as np

from edge.runtimes.litert import LiteRTRuntime

__all__ = ["TFLiteLegacyRuntime"]


class TFLiteLegacyRuntime(LiteRTRuntime):
    """``.tflite`` models in ``tflite_runtime.interpreter.Interpreter`` (same API as LiteRT)."""

    name: ClassVar[str] = "tflite_legacy"
    _module: ClassVar[str] = "tflite_runtime.interpreter"
    _distribution: ClassVar[str] = "tflite-runtime"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("tflite_runtime") is None:
            return False, "tflite-runtime is not installed"
        version = cls.version()
        major = version.split(".")[:2]
        old = len(major) == 2 and major[0].isdigit() and major[1].isdigit() and (int(major[0]), int(major[1])) < (2, 15)
        if old and int(np.__version__.split(".")[0]) >= 2:
            return False, f"tflite-runtime {version} needs numpy<2 (numpy {np.__version__} is installed)"
        return True, "ok"

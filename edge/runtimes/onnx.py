"""ONNX Runtime for ``.onnx`` variants.

onnxruntime 1.32 on Linux was seen looking up Microsoft's telemetry host by default; a device in a
shop opens no connection it was not configured to open, so telemetry is switched off before
onnxruntime is first imported (``ORT_DISABLE_TELEMETRY=1``) and again through its API::

    rt = OnnxRuntime("models/onnx-fp32.onnx", threads=1, providers=["CPUExecutionProvider"])
    rt.load()
    rt.infer({"cat": cat, "num": num})
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import importlib.util
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from edge.runtimes.base import FEED_ROLES, Runtime, RuntimeLoadError, match_inputs

__all__ = ["OnnxRuntime", "import_onnxruntime"]

_ORT_TYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}
_import_lock = threading.Lock()


def import_onnxruntime() -> ModuleType:
    """Import onnxruntime with its telemetry off (environment first, then its API)."""
    with _import_lock:
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime

        disable = getattr(onnxruntime, "disable_telemetry_events", None)
        if disable is not None:
            disable()
        return onnxruntime


class OnnxRuntime(Runtime):
    """``.onnx`` models in an ``onnxruntime.InferenceSession`` (CPU provider unless told otherwise)."""

    name: ClassVar[str] = "onnxruntime"
    formats: ClassVar[tuple[str, ...]] = (".onnx",)

    def __init__(self, path: Any, *, threads: int = 1, providers: Sequence[str] | None = None) -> None:
        super().__init__(path, threads=threads)
        self.providers = list(providers or ["CPUExecutionProvider"])
        self._session: Any = None
        self._names: dict[str, str] = {}
        self._dtypes: dict[str, type] = {}
        self._output = ""

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed"
        return True, "ok"

    def _open(self) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
        inputs = {i.name: i for i in self._session.get_inputs()}
        self._names = match_inputs(inputs)
        for role, name in self._names.items():
            spec = inputs[name]
            if spec.type not in _ORT_TYPES:
                raise RuntimeLoadError(f"input {name} has type {spec.type}, expected int32/int64/float")
            width = spec.shape[-1] if spec.shape else None
            if isinstance(width, int) and width != FEED_ROLES[role][1]:
                raise RuntimeLoadError(f"input {name} has shape {spec.shape}, expected [batch, {FEED_ROLES[role][1]}]")
            self._dtypes[role] = _ORT_TYPES[spec.type]
        outputs = self._session.get_outputs()
        if len(outputs) != 1:
            raise RuntimeLoadError(f"model has {len(outputs)} outputs, expected one")
        self._output = outputs[0].name

    def _infer(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        feed = {
            self._names["cat"]: cat.astype(self._dtypes["cat"], copy=False),
            self._names["num"]: num.astype(self._dtypes["num"], copy=False),
        }
        return self._session.run([self._output], feed)[0]

    def close(self) -> None:
        self._session = None
        self._loaded = False

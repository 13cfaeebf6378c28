"""LiteRT (``ai_edge_litert``), the maintained successor of tflite-runtime: the default for .tflite.

Single-row invoke of a small MLP takes 4–10 µs here. Tensors are resized (and re-allocated) only
when the batch size changes, so a steady stream of single rows never re-allocates. Fully
quantised models whose float inputs or output are int8/uint8 are (de)quantised with the tensor's
scale and zero point::

    rt = LiteRTRuntime("models/tflite-int8.tflite", threads=1)
    rt.load()
    rt.infer({"cat": cat, "num": num})
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from typing import Any, ClassVar

import numpy as np

from edge.runtimes.base import FEED_ROLES, Runtime, RuntimeLoadError, match_inputs

__all__ = ["LiteRTRuntime"]


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == x.dtype:
        return x
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(dtype, np.integer) and np.issubdtype(x.dtype, np.floating) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.issubdtype(y.dtype, np.integer) and scale:
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return y.astype(np.float32, copy=False)


class LiteRTRuntime(Runtime):
    """``.tflite`` models in ``ai_edge_litert.interpreter.Interpreter``."""

    name: ClassVar[str] = "litert"
    formats: ClassVar[tuple[str, ...]] = (".tflite",)
    #: Module providing ``Interpreter`` and the distribution that ships it.
    _module: ClassVar[str] = "ai_edge_litert.interpreter"
    _distribution: ClassVar[str] = "ai-edge-litert"

    def __init__(self, path: Any, *, threads: int = 1) -> None:
        super().__init__(path, threads=threads)
        self._interp: Any = None
        self._inputs: dict[str, dict[str, Any]] = {}
        self._output: dict[str, Any] = {}
        self._batch = 0
        # the hot path, bound once per (re)allocation: see _bind()
        self._set: Any = None
        self._invoke: Any = None
        self._get: Any = None
        self._cat_index = self._num_index = self._out_index = -1
        self._plain_in = self._plain_out = False

    @classmethod
    def available(cls) -> tuple[bool, str]:
        if importlib.util.find_spec(cls._module.split(".")[0]) is None:
            return False, f"{cls._distribution} is not installed"
        return True, "ok"

    @classmethod
    def version(cls) -> str:
        try:
            return importlib.metadata.version(cls._distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def _open(self) -> None:
        interpreter_cls = importlib.import_module(self._module).Interpreter
        self._interp = interpreter_cls(model_path=str(self.path), num_threads=self.threads)
        details = {d["name"]: d for d in self._interp.get_input_details()}
        roles = match_inputs(details)
        self._inputs = {role: details[name] for role, name in roles.items()}
        for role, detail in self._inputs.items():
            width = FEED_ROLES[role][1]
            if int(detail["shape"][-1]) != width:
                raise RuntimeLoadError(
                    f"input {detail['name']} has shape {list(detail['shape'])}, expected [batch, {width}]"
                )
        outputs = self._interp.get_output_details()
        if len(outputs) != 1:
            raise RuntimeLoadError(f"model has {len(outputs)} outputs, expected one")
        self._output = outputs[0]
        self._batch = 0
        self._bind()

    def _bind(self) -> None:
        """Bind the interpreter's calls and tensor indices once, and note whether the inputs and
        output need (de)quantising, so a call is two ``set_tensor``, ``invoke``, ``get_tensor``."""
        interp = self._interp
        self._set, self._invoke, self._get = interp.set_tensor, interp.invoke, interp.get_tensor
        self._cat_index, self._num_index = self._inputs["cat"]["index"], self._inputs["num"]["index"]
        self._out_index = self._output["index"]
        self._plain_in = all(d["dtype"] == FEED_ROLES[role][0] for role, d in self._inputs.items())
        self._plain_out = self._output["dtype"] == np.float32

    def _resize(self, n: int) -> None:
        for role, detail in self._inputs.items():
            self._interp.resize_tensor_input(detail["index"], [n, FEED_ROLES[role][1]], strict=False)
        self._interp.allocate_tensors()
        self._output = self._interp.get_output_details()[0]
        self._batch = n
        self._bind()

    def _infer(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        if cat.shape[0] != self._batch:
            self._resize(cat.shape[0])
        if self._plain_in:  # the model takes int32 / float32 as they come: no conversion
            self._set(self._cat_index, cat)
            self._set(self._num_index, num)
        else:
            for role, x in (("cat", cat), ("num", num)):
                detail = self._inputs[role]
                self._set(detail["index"], _quantize(x, detail))
        self._invoke()
        y = self._get(self._out_index)
        return y if self._plain_out else _dequantize(y, self._output)

    def close(self) -> None:
        self._interp = None
        self._set = self._invoke = self._get = None
        self._loaded = False
        self._batch = 0

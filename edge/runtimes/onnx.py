"""ONNX Runtime for ``.onnx`` variants.

onnxruntime 1.32 on Linux was seen looking up Microsoft's telemetry host by default; a device in a
shop opens no connection it was not configured to open, so telemetry is switched off before
onnxruntime is first imported (``ORT_DISABLE_TELEMETRY=1``) and again through its API::

    rt = OnnxRuntime("models/onnx-fp32.onnx", threads=1, providers=["CPUExecutionProvider"])
    rt.load()
    rt.infer({"cat": cat, "num": num})
    rt.active_providers          # what the session really runs on, e.g. ["CPUExecutionProvider"]

Execution providers: the agent asks :func:`resolve_providers` for the order to use — the configured
one (``--providers tensorrt cuda cpu``; short names or ORT's own) or, by default, TensorRT, then CUDA,
then CPU — keeping only those this onnxruntime build has (:func:`available_providers`). CPU always
closes the list, so ops a GPU provider does not take still run. ``active_providers`` reports what
the session actually registered (ORT drops a provider whose libraries fail to load).
"""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import functools
import importlib.metadata
import importlib.util
import logging
import platform
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from edge.runtimes.base import FEED_ROLES, Runtime, RuntimeLoadError, match_inputs

__all__ = [
    "OnnxRuntime",
    "import_onnxruntime",
    "available_providers",
    "canonical_provider",
    "resolve_providers",
    "DEFAULT_PROVIDERS",
    "GPU_PROVIDERS",
    "CPU",
]

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
#: The default order when none is configured: the fastest that exists here wins.
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
#: Providers that run on an accelerator (the agent prefers float ONNX variants when one is in use).
GPU_PROVIDERS = frozenset(
    {"TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider"}
)
#: Short names accepted in the configuration (any ``<Name>ExecutionProvider`` is accepted as is).
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": CPU,
}
#: Providers that compute nothing for us (the plain wheel lists Azure's remote provider).
_IGNORED = frozenset({"AzureExecutionProvider"})

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


def canonical_provider(name: str) -> str:
    """``"cuda"`` → ``"CUDAExecutionProvider"``; ORT's own names pass; anything else is a ValueError.

    >>> canonical_provider("TensorRT"), canonical_provider("CPUExecutionProvider")
    ('TensorrtExecutionProvider', 'CPUExecutionProvider')
    """
    alias = PROVIDER_ALIASES.get(name.strip().lower())
    if alias is not None:
        return alias
    if name.endswith("ExecutionProvider") and name[: -len("ExecutionProvider")].isalnum():
        return name
    raise ValueError(
        f"unknown execution provider {name!r}: use one of {sorted(PROVIDER_ALIASES)} or an ORT name like CUDAExecutionProvider"
    )


@functools.cache
def available_providers() -> tuple[str, ...]:
    """Execution providers this onnxruntime build offers (empty if onnxruntime is missing).

    Cheap on the common device: the plain ``onnxruntime`` wheel on Linux ships the CPU provider
    only, so it is not imported (≈25 MB of RSS a LiteRT-only agent need not pay). Any other build
    (``onnxruntime-gpu``, Jetson wheels, OpenVINO…) is imported and asked.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        return ()
    dists = {
        d.metadata["Name"].lower()
        for d in importlib.metadata.distributions()
        if (d.metadata["Name"] or "").lower().startswith("onnxruntime")
    }
    if dists == {"onnxruntime"} and platform.system() == "Linux":
        return (CPU,)
    try:
        names = import_onnxruntime().get_available_providers()
    except Exception as exc:  # a broken build is reported like a missing one
        logger.warning("onnxruntime does not list its providers: %s", exc)
        return ()
    return tuple(p for p in names if p not in _IGNORED)


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The providers to open sessions with: ``requested`` (or :data:`DEFAULT_PROVIDERS`) in order,
    only those ``available``, CPU last. Unavailable requested ones are logged and skipped.

    >>> resolve_providers(["cuda", "cpu"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> resolve_providers(None, ["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    >>> resolve_providers(["tensorrt"], ["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    wanted = [canonical_provider(p) for p in requested] if requested else list(DEFAULT_PROVIDERS)
    have = set(available)
    missing = [p for p in wanted if p not in have and p != CPU]
    if requested and missing:
        logger.warning("execution providers %s are not available here (have %s)", missing, sorted(have))
    out = [p for p in dict.fromkeys(wanted) if p in have and p != CPU]
    return [*out, CPU]


class OnnxRuntime(Runtime):
    """``.onnx`` models in an ``onnxruntime.InferenceSession`` (CPU provider unless told otherwise)."""

    name: ClassVar[str] = "onnxruntime"
    formats: ClassVar[tuple[str, ...]] = (".onnx",)
    accepts_providers: ClassVar[bool] = True

    def __init__(
        self,
        path: Any,
        *,
        threads: int = 1,
        providers: Sequence[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(path, threads=threads)
        self.providers = [canonical_provider(p) for p in (providers or [CPU])]
        self.cache_dir = cache_dir
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
        self._session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=self.providers, provider_options=self.provider_options()
        )
        self.active_providers = list(self._session.get_providers())
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

    def provider_options(self) -> list[dict[str, str]]:
        """Options per provider: TensorRT builds engines at load (the warm-up) and, with a
        ``cache_dir``, keeps them there so a restart does not rebuild them."""
        out: list[dict[str, str]] = []
        for p in self.providers:
            opts: dict[str, str] = {}
            if p == "TensorrtExecutionProvider" and self.cache_dir is not None:
                opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(self.cache_dir)}
            out.append(opts)
        return out

    def _infer(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        feed = {
            self._names["cat"]: cat.astype(self._dtypes["cat"], copy=False),
            self._names["num"]: num.astype(self._dtypes["num"], copy=False),
        }
        return self._session.run([self._output], feed)[0]

    def close(self) -> None:
        self._session = None
        self._loaded = False
        self.active_providers = []

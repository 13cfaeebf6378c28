"""The runtime plugin interface: one class per inference runtime, one file per class.

A runtime loads one model file and runs it. Every edgeship model has two inputs, an int32
``[batch, 8]`` tensor whose name contains ``cat`` and a float32 ``[batch, 12]`` tensor whose name
contains ``num`` (exact names differ between conversion paths), and one float32 ``[batch, 1]``
output in log1p(unit_sales) space. :meth:`Runtime.infer` takes ``{"cat": ..., "num": ...}``
(what :meth:`models.features.Encoded.as_feed` returns) and gives back float32 ``[batch]``::

    from edge.runtimes import get_runtime
    rt = get_runtime("litert")("models/tflite-int8.tflite", threads=1)
    rt.load()                             # opens the model and runs one warm-up row
    rt.infer({"cat": cat, "num": num})    # float32 [N], log1p(unit_sales)
    rt.close()

Runtimes are not thread-safe by contract: :class:`edge.serving.predictor.Predictor` serialises calls.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from models.contract import CAT_FEATURES, NUM_FEATURES

__all__ = ["Runtime", "RuntimeUnavailable", "RuntimeLoadError", "FEED_ROLES", "match_inputs", "warmup_feed"]

logger = logging.getLogger(__name__)

#: The model inputs by role, and their dtype and width.
FEED_ROLES: dict[str, tuple[type, int]] = {"cat": (np.int32, len(CAT_FEATURES)), "num": (np.float32, len(NUM_FEATURES))}
_INT32, _FLOAT32 = np.dtype(np.int32), np.dtype(np.float32)
_CAT_WIDTH, _NUM_WIDTH = len(CAT_FEATURES), len(NUM_FEATURES)


class RuntimeUnavailable(RuntimeError):
    """The runtime's dependency is missing or unusable on this device."""


class RuntimeLoadError(RuntimeError):
    """The model file could not be loaded, does not look like an edgeship model, or failed warm-up."""


def match_inputs(names: Iterable[str]) -> dict[str, str]:
    """Map each role (``cat``, ``num``) to the one model input whose name contains it.

    >>> match_inputs(["serving_default_num:0", "serving_default_cat:0"])
    {'cat': 'serving_default_cat:0', 'num': 'serving_default_num:0'}
    """
    names = list(names)
    out: dict[str, str] = {}
    for role in FEED_ROLES:
        exact = [n for n in names if n == role]
        hits = exact or [n for n in names if role in n.lower()]
        if len(hits) != 1:
            raise RuntimeLoadError(f"model inputs {names}: expected exactly one whose name contains {role!r}")
        out[role] = hits[0]
    if len(set(out.values())) != len(out) or len(names) != len(out):
        raise RuntimeLoadError(f"model inputs {names}: expected exactly two, one 'cat' and one 'num'")
    return out


def warmup_feed(rows: int = 1) -> dict[str, np.ndarray]:
    """An all-zero feed (every id "unknown", every number 0) of ``rows`` rows."""
    return {role: np.zeros((rows, width), dtype) for role, (dtype, width) in FEED_ROLES.items()}


class Runtime(abc.ABC):
    """One loaded model in one inference runtime.

    Subclasses set :attr:`name` and :attr:`formats`, implement :meth:`available`, :meth:`_open`,
    :meth:`_infer` and :meth:`close`. :meth:`load` and :meth:`infer` are the public entry points.
    """

    #: Registry name, e.g. ``"litert"``.
    name: ClassVar[str]
    #: File suffixes this runtime loads (``()`` = any file).
    formats: ClassVar[tuple[str, ...]]
    #: Whether the constructor takes ``providers=`` (execution providers, e.g. ONNX Runtime's).
    accepts_providers: ClassVar[bool] = False

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.path = Path(path)
        self.threads = threads
        self._loaded = False
        #: Execution providers the loaded model really runs on (empty: the runtime's own CPU kernels).
        self.active_providers: list[str] = []

    # -- plugin hooks -----------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def available(cls) -> tuple[bool, str]:
        """``(True, "ok")`` if this runtime can run here, else ``(False, why not)``. Cheap; no model."""

    @abc.abstractmethod
    def _open(self) -> None:
        """Create the session / interpreter for :attr:`path`."""

    @abc.abstractmethod
    def _infer(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """Run ``cat`` int32 [N, 8] and ``num`` float32 [N, 22] (N ≥ 1); return the raw output."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session / interpreter. Idempotent."""

    # -- public -----------------------------------------------------------------------------
    @classmethod
    def accepts(cls, path: str | os.PathLike[str]) -> bool:
        """Whether this runtime loads files like ``path`` (by suffix)."""
        return not cls.formats or Path(path).suffix.lower() in cls.formats

    def load(self) -> None:
        """Open the model and run one warm-up inference; raise :class:`RuntimeLoadError` if either fails."""
        ok, reason = self.available()
        if not ok:
            raise RuntimeUnavailable(f"runtime {self.name} is not available: {reason}")
        if not self.accepts(self.path):
            raise RuntimeLoadError(f"runtime {self.name} loads {self.formats}, not {self.path.name}")
        try:
            self._open()
            self._loaded = True
            self.infer(warmup_feed(1))
        except RuntimeLoadError:
            self.close()
            raise
        except Exception as exc:  # runtimes raise anything: ValueError, RuntimeError, their own types
            self.close()
            raise RuntimeLoadError(f"{self.name} could not load {self.path.name}: {exc}") from exc
        logger.debug("loaded %s with %s (%d threads)", self.path.name, self.name, self.threads)

    def infer(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """Predict a batch of any size: ``{"cat": [N, 8], "num": [N, 22]}`` → float32 ``[N]`` (log1p space)."""
        return self.infer_pair(feed["cat"], feed["num"])

    def infer_pair(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        """:meth:`infer` of the two inputs, without the dict (the serving hot path): arrays that
        already are C-contiguous int32 / float32 are passed on as they are."""
        if not self._loaded:
            raise RuntimeError(f"{self.name}: call load() before infer()")
        if type(cat) is not np.ndarray or cat.dtype != _INT32 or not cat.flags.c_contiguous:
            cat = np.ascontiguousarray(cat, dtype=np.int32)
        if type(num) is not np.ndarray or num.dtype != _FLOAT32 or not num.flags.c_contiguous:
            num = np.ascontiguousarray(num, dtype=np.float32)
        n = cat.shape[0]
        if cat.shape != (n, _CAT_WIDTH) or num.shape != (n, _NUM_WIDTH):
            raise ValueError(f"feed shapes cat {cat.shape} / num {num.shape} do not match the contract")
        if n == 0:
            return np.zeros(0, np.float32)
        out = self._infer(cat, num)
        if type(out) is not np.ndarray or out.dtype != _FLOAT32:
            out = np.asarray(out, dtype=np.float32)
        if out.size != n:
            raise RuntimeLoadError(f"{self.name}: model returned shape {out.shape} for {n} rows, expected [{n}, 1]")
        return out.reshape(n)

    def __enter__(self) -> Runtime:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path.name} threads={self.threads}>"

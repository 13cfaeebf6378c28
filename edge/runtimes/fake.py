"""A deterministic stand-in runtime for tests and demos: no dependency, accepts any file.

prediction (log1p space) = ``num[:, 8]`` (lag_mean_7) + 0.1 × ``num[:, 0]`` (onpromotion), i.e.
"sell what you sold last week, a little more on promotion" — a real enough baseline to check that
requests reach the model encoded as the contract says.

>>> import tempfile
>>> from edge.runtimes.base import warmup_feed
>>> with tempfile.NamedTemporaryFile(suffix=".tflite") as model, FakeRuntime(model.name) as rt:
...     rt.infer(warmup_feed(2))
array([0., 0.], dtype=float32)
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from edge.runtimes.base import Runtime, RuntimeLoadError

__all__ = ["FakeRuntime"]


class FakeRuntime(Runtime):
    """Predicts ``lag_mean_7 + 0.1 * onpromotion``; counts calls in :attr:`calls`."""

    name: ClassVar[str] = "fake"
    formats: ClassVar[tuple[str, ...]] = ()

    calls: int = 0

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, "ok"

    def _open(self) -> None:
        if not self.path.is_file():
            raise RuntimeLoadError(f"{self.path} is not a file")
        self.calls = 0

    def _infer(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (num[:, 8] + np.float32(0.1) * num[:, 0]).astype(np.float32)

    def close(self) -> None:
        self._loaded = False

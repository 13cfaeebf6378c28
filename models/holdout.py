"""The holdout slice a bundle carries (``holdout.npz``): written by the trainer, read by the on-device gate.

Arrays: ``cat`` (int32, rows × categorical features), ``num`` (float32, rows × numeric features) — the
encoded inputs, exactly as :func:`models.features.encode` makes them; ``y`` (log1p units sold) and
``weight`` (Kaggle's 1.25 perishable / 1.0); and one ``pred_<variant>`` per shipped variant plus
``pred_keras`` — the cloud's log1p predictions of the same rows (``-`` in names written as ``_``).

>>> import numpy as np
>>> data = write_holdout(np.zeros((2, 1), np.int32), np.ones((2, 3), np.float32), np.array([0.0, 1.0]),
...                      np.ones(2), {"keras": np.array([0.1, 0.9]), "tflite-int8": np.array([0.1, 0.8])})
>>> h = read_holdout(data)
>>> len(h), sorted(h.preds)
(2, ['keras', 'tflite-int8'])
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping

import numpy as np

__all__ = ["Holdout", "HoldoutError", "write_holdout", "read_holdout", "pred_key"]

_PREFIX = "pred_"


class HoldoutError(ValueError):
    """The holdout file is unreadable or its arrays disagree in length."""


@dataclasses.dataclass(frozen=True)
class Holdout:
    """The arrays of ``holdout.npz``."""

    cat: np.ndarray
    num: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    preds: dict[str, np.ndarray]  # "keras", "tflite-int8", … → log1p predictions of the cloud

    def __len__(self) -> int:
        return int(self.y.shape[0])


def pred_key(model: str) -> str:
    """``tflite-int8`` → ``pred_tflite_int8``."""
    return _PREFIX + model.replace("-", "_")


def write_holdout(
    cat: np.ndarray, num: np.ndarray, y: np.ndarray, weight: np.ndarray, preds: Mapping[str, np.ndarray]
) -> bytes:
    """The bytes of ``holdout.npz`` (compressed)."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        cat=np.asarray(cat, np.int32),
        num=np.asarray(num, np.float32),
        y=np.asarray(y, np.float32),
        weight=np.asarray(weight, np.float32),
        **{pred_key(k): np.asarray(v, np.float32) for k, v in preds.items()},
    )
    return buf.getvalue()


def read_holdout(data: bytes) -> Holdout:
    """Parse ``holdout.npz`` bytes; :class:`HoldoutError` saying what is wrong."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        cat = np.asarray(arrays.pop("cat"), np.int32)
        num = np.asarray(arrays.pop("num"), np.float32)
        y = np.asarray(arrays.pop("y"), np.float64).reshape(-1)
        weight = np.asarray(arrays.pop("weight"), np.float64).reshape(-1)
    except (OSError, ValueError, KeyError) as exc:
        raise HoldoutError(f"cannot be read: {exc}") from exc
    n = len(y)
    preds = {
        k[len(_PREFIX):].replace("_", "-"): np.asarray(v, np.float64).reshape(-1)
        for k, v in arrays.items()
        if k.startswith(_PREFIX)
    }
    shapes_ok = cat.shape[0] == n and num.shape[0] == n and weight.shape == (n,) and all(len(p) == n for p in preds.values())
    if not n or not shapes_ok:
        raise HoldoutError(f"has {n} rows or arrays of different lengths")
    return Holdout(cat=cat, num=num, y=y, weight=weight, preds=preds)

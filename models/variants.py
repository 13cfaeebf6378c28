"""The model variants a bundle can ship, and what each one needs on a device: one table, both sides.

The trainer names its exports after this table (file paths in the bundle), the parity gate and the
agent pick a runtime plugin by it, and configuration validates variant names against it.

>>> spec("tflite-int8").file, spec("tflite-int8").runtimes
('models/tflite-int8.tflite', ('litert', 'tflite_legacy'))
>>> spec("onnx-fp16")
Traceback (most recent call last):
...
ValueError: unknown variant 'onnx-fp16': must be one of tflite-fp32, tflite-fp16, tflite-dynamic, tflite-int8, onnx-fp32, onnx-int8, onnx-lightgbm

Every variant but one is an export of the trainer's Keras network. ``onnx-lightgbm`` is the
LightGBM model the trainer fits as its strongest baseline, converted with onnxmltools: the trainer
ships it (first) only when it forecasts better than the Keras variant a device would run
(:mod:`cloud.training.pipeline`); it takes the same ``cat``/``num`` inputs, so a device serves it
through the same encoding path and ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["VariantSpec", "VARIANTS", "NAMES", "NAME_PATTERN", "spec", "runtimes_for"]

Format = Literal["tflite", "onnx"]


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One exported form of a model: its file format, numeric precision, bundle path and runtimes."""

    name: str
    format: Format
    precision: Literal["fp32", "fp16", "dynamic", "int8"]
    runtimes: tuple[str, ...]  # runtime plugins (edge.runtimes.REGISTRY names) that run it, preferred first
    source: Literal["keras", "lightgbm"] = "keras"  # the trained model it is a form of

    @property
    def suffix(self) -> str:
        return "." + self.format

    @property
    def file(self) -> str:
        """Where the variant lives inside a bundle."""
        return f"models/{self.name}{self.suffix}"


_TFLITE = ("litert", "tflite_legacy")
_ONNX = ("onnxruntime",)

#: In the trainer's export order.
VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        VariantSpec("tflite-fp32", "tflite", "fp32", _TFLITE),
        VariantSpec("tflite-fp16", "tflite", "fp16", _TFLITE),
        VariantSpec("tflite-dynamic", "tflite", "dynamic", _TFLITE),
        VariantSpec("tflite-int8", "tflite", "int8", _TFLITE),
        VariantSpec("onnx-fp32", "onnx", "fp32", _ONNX),
        VariantSpec("onnx-int8", "onnx", "int8", _ONNX),
        VariantSpec("onnx-lightgbm", "onnx", "fp32", _ONNX, source="lightgbm"),
    )
}
NAMES: tuple[str, ...] = tuple(VARIANTS)
NAME_PATTERN = r"^(" + "|".join(n.replace("-", r"\-") for n in NAMES) + r")$"


def spec(name: str) -> VariantSpec:
    """The :class:`VariantSpec` of ``name``; :class:`ValueError` naming the allowed ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}: must be one of {', '.join(NAMES)}") from None


def runtimes_for(name: str) -> tuple[str, ...]:
    """Runtime plugins able to run ``name`` (empty for an unknown variant: nothing can run it)."""
    return VARIANTS[name].runtimes if name in VARIANTS else ()

"""Which variant, runtime and execution providers suit this device.

A bundle ships several variants (``tflite-int8`` … ``onnx-fp32``). The agent picks one by the
device's configuration first, then by its hardware:

- configured ``variants`` (``--variant``) come first, in the configured order;
- an accelerator ONNX Runtime can use here (TensorRT, CUDA, ROCm, MIGraphX, in the configured or
  default provider order) → ``onnx-fp32`` first (GPUs run float graphs; ORT's dynamic int8 ops fall
  back to the CPU), then the CPU order below;
- an ARM CPU (Raspberry Pi, Jetson's CPU side, armv7 boards) → smallest integer TFLite first:
  ``tflite-int8``, ``tflite-dynamic``, ``tflite-fp16``, ``tflite-fp32``, then ``onnx-int8``,
  ``onnx-fp32`` (LiteRT's XNNPACK int8 kernels are the fast path there, and the footprint is half);
- any other CPU → the bundle's own order (the trainer's recipe ``variant_preference``);
- whatever the hardware, a bundle that leads with another model than the Keras network's exports
  (``onnx-lightgbm``: the trainer found it forecasts better, :mod:`models.variants`) keeps it first,
  after the configured variants: the choice of model is the trainer's, the choice of form the device's.

The predictor then loads the first candidate whose runtime is available and passes warm-up, and
the agent reports what it got — variant, runtime and providers — in ``/healthz``, the MQTT state
and ``edgeship_model_info``; the reason for the order is logged and in the state's ``hardware``.

>>> hw = Hardware(machine="aarch64", system="Linux", cpus=4, onnx_providers=("CPUExecutionProvider",))
>>> choice = choose(["onnx-fp32", "tflite-fp32", "tflite-int8"], hw)
>>> choice.order, choice.reason
(['tflite-int8', 'tflite-fp32', 'onnx-fp32'], 'arm_cpu')
>>> gpu = Hardware(machine="x86_64", system="Linux", cpus=16,
...                onnx_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
>>> c = choose(["tflite-int8", "onnx-int8", "onnx-fp32"], gpu)
>>> c.order, c.providers, c.reason
(['onnx-fp32', 'tflite-int8', 'onnx-int8'], ['CUDAExecutionProvider', 'CPUExecutionProvider'], 'gpu:CUDAExecutionProvider')
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform
from collections.abc import Sequence

from models.variants import VARIANTS

__all__ = ["Hardware", "Choice", "detect", "choose", "ARM_MACHINES", "ARM_ORDER"]

logger = logging.getLogger(__name__)

#: ``platform.machine()`` values of ARM CPUs.
ARM_MACHINES = frozenset({"aarch64", "arm64", "armv7l", "armv7", "armv8l", "armv6l"})
#: Variant order on ARM CPUs: integer TFLite first.
ARM_ORDER = ("tflite-int8", "tflite-dynamic", "tflite-fp16", "tflite-fp32", "onnx-int8", "onnx-fp32")
#: Variant order when an accelerator provider is in use: float ONNX first.
GPU_FIRST = ("onnx-fp32",)
GPU_LAST = ("onnx-int8",)


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What matters about this device for choosing a variant."""

    machine: str
    system: str
    cpus: int
    onnx_providers: tuple[str, ...]  # what onnxruntime offers here (empty: not installed)

    @property
    def arm(self) -> bool:
        return self.machine.lower() in ARM_MACHINES

    def as_state(self) -> dict[str, str]:
        """For ``DeviceState.hardware`` (string values)."""
        return {
            "machine": self.machine,
            "system": self.system,
            "cpus": str(self.cpus),
            "python": platform.python_version(),
            "onnx_providers": ",".join(self.onnx_providers),
        }


@dataclasses.dataclass(frozen=True)
class Choice:
    """A variant preference order, the ONNX providers to use, and why."""

    order: list[str]
    providers: list[str]
    reason: str  # "config", "gpu:<provider>", "arm_cpu" or "bundle" (with "config+" when configured)


@functools.cache
def detect() -> Hardware:
    """This device (cached: hardware does not change under a running process)."""
    from edge.runtimes.onnx import available_providers

    return Hardware(
        machine=platform.machine(),
        system=platform.system(),
        cpus=os.cpu_count() or 1,
        onnx_providers=available_providers(),
    )


def choose(
    variants: Sequence[str],
    hardware: Hardware,
    *,
    configured_variants: Sequence[str] | None = None,
    configured_providers: Sequence[str] | None = None,
) -> Choice:
    """The order to try ``variants`` (a bundle's, in its order) on ``hardware``; see the module doc."""
    from edge.runtimes.onnx import GPU_PROVIDERS, resolve_providers

    providers = resolve_providers(configured_providers, hardware.onnx_providers) if hardware.onnx_providers else []
    accel = [p for p in providers if p in GPU_PROVIDERS]
    names = list(variants)
    if accel:
        rest = [n for n in (ARM_ORDER if hardware.arm else names) if n not in GPU_FIRST + GPU_LAST]
        preferred, reason = [*GPU_FIRST, *rest, *GPU_LAST], f"gpu:{accel[0]}"
    elif hardware.arm:
        preferred, reason = list(ARM_ORDER), "arm_cpu"
    else:
        preferred, reason = names, "bundle"
    if names and names[0] in VARIANTS and VARIANTS[names[0]].source != "keras":
        preferred, reason = [names[0], *preferred], f"model:{VARIANTS[names[0]].source}+{reason}"
    if configured_variants:
        preferred = [*configured_variants, *preferred]
        reason = f"config+{reason}"
    order = [n for n in dict.fromkeys(preferred) if n in names]
    order += [n for n in names if n not in order]
    return Choice(order=order, providers=providers, reason=reason)

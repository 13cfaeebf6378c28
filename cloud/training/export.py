"""Export a trained Keras model to every edge format: TFLite fp32/fp16/dynamic/int8 and ONNX fp32/int8.

* full int8 is calibrated on real training rows (random calibration data clips the output range);
  the id inputs stay int32, activations and weights are int8, the float interface is kept;
* dynamic-range models disable per-channel quantisation of dense layers so they also load in the
  legacy tflite-runtime 2.14 on old Raspberry Pi images;
* ONNX goes through tf2onnx (opset 17); int8 is onnxruntime's dynamic quantisation;
* ``onnx-lightgbm``: the LightGBM baseline through onnxmltools, wrapped to take the same ``cat``
  (int32) and ``num`` inputs and to clip at 0 as the baseline does (:func:`export_lightgbm`).

Every function returns the model's bytes; nothing here decides what ships (see :mod:`cloud.training.gates`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cloud.training.train import quiet_tensorflow
from models.contract import CAT_FEATURES, NUM_FEATURES
from models.features import Encoded
from models.variants import VARIANTS

__all__ = ["VARIANT_FILES", "export_tflite", "export_onnx", "export_lightgbm", "export_all"]

logger = logging.getLogger(__name__)

#: Bundle member name per variant.
VARIANT_FILES = {name: v.file for name, v in VARIANTS.items()}  # bundle paths, from models.variants


def export_tflite(model: Any, precision: str, calibration: Encoded | None = None) -> bytes:
    """Convert to TFLite at ``precision`` in {fp32, fp16, dynamic, int8}."""
    quiet_tensorflow()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    elif precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("full int8 needs calibration rows from the training data")

        def representative() -> Iterator[dict[str, np.ndarray]]:
            for i in range(len(calibration)):
                yield {"cat": calibration.cat[i : i + 1], "num": calibration.num[i : i + 1]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif precision != "fp32":
        raise ValueError(f"unknown TFLite precision {precision!r}")
    return bytes(converter.convert())


def export_onnx(model: Any, precision: str) -> bytes:
    """Convert to ONNX (opset 17) at ``precision`` in {fp32, int8}."""
    quiet_tensorflow()
    import tensorflow as tf
    import tf2onnx

    spec = (
        tf.TensorSpec((None, len(CAT_FEATURES)), tf.int32, name="cat"),
        tf.TensorSpec((None, len(NUM_FEATURES)), tf.float32, name="num"),
    )
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    fp32 = proto.SerializeToString()
    if precision == "fp32":
        return fp32
    if precision != "int8":
        raise ValueError(f"unknown ONNX precision {precision!r}")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def export_lightgbm(booster: Any) -> bytes:
    """A LightGBM booster trained on ``[cat as float, num]`` (:func:`cloud.training.baselines.lightgbm`)
    as one ONNX model with the Keras exports' interface: inputs ``cat`` int32 [N, 8] and ``num``
    float32 [N, 22], output log1p(sales) [N, 1], clipped at 0. Categorical splits are kept (the
    converter expands them into equality branches)."""
    import onnx
    from onnx import TensorProto, helper
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    width = len(CAT_FEATURES) + len(NUM_FEATURES)
    if booster.num_feature() != width:
        raise ValueError(f"the booster has {booster.num_feature()} features, the model's inputs {width}")
    with _quiet_converters():
        trees = convert_lightgbm(booster, initial_types=[("features", FloatTensorType([None, width]))], target_opset=15, zipmap=False)
    inner = trees.graph
    (tree_out,) = [o.name for o in inner.output]
    nodes = [
        helper.make_node("Cast", ["cat"], ["cat_float"], to=TensorProto.FLOAT, name="cat_to_float"),
        helper.make_node("Concat", ["cat_float", "num"], ["features"], axis=1, name="features"),
        *inner.node,
        helper.make_node("Relu", [tree_out], ["log_sales"], name="clip_at_zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "lightgbm",
        inputs=[
            helper.make_tensor_value_info("cat", TensorProto.INT32, [None, len(CAT_FEATURES)]),
            helper.make_tensor_value_info("num", TensorProto.FLOAT, [None, len(NUM_FEATURES)]),
        ],
        outputs=[helper.make_tensor_value_info("log_sales", TensorProto.FLOAT, [None, 1])],
        initializer=list(inner.initializer),
    )
    opsets = {o.domain: o.version for o in trees.opset_import}
    opsets[""] = max(opsets.get("", 0), 14)  # Relu, Cast and Concat as of opset 14
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], producer_name="edgeship"
    )
    model.ir_version = trees.ir_version
    onnx.checker.check_model(model)
    return model.SerializeToString()


@contextlib.contextmanager
def _quiet_converters() -> Iterator[None]:
    """Keep the converters' chatter (signature dumps, root-logger notes, deprecation warnings) off the console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # onnxruntime.quantization logs per-tensor notes on the root logger
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)  # TF's calibrator uses its deprecated tf.lite.Interpreter
            yield
    finally:
        root.setLevel(level)


def export_all(model: Any, calibration: Encoded, progress: bool = True) -> dict[str, bytes]:
    """Every variant's bytes, keyed by variant name."""
    from tqdm import tqdm

    jobs = [
        ("tflite-fp32", lambda: export_tflite(model, "fp32")),
        ("tflite-fp16", lambda: export_tflite(model, "fp16")),
        ("tflite-dynamic", lambda: export_tflite(model, "dynamic")),
        ("tflite-int8", lambda: export_tflite(model, "int8", calibration)),
        ("onnx-fp32", lambda: export_onnx(model, "fp32")),
        ("onnx-int8", lambda: export_onnx(model, "int8")),
    ]
    out: dict[str, bytes] = {}
    for name, job in tqdm(jobs, desc="export", disable=not progress):
        with _quiet_converters():
            out[name] = job()
        logger.info("exported %s (%d bytes)", name, len(out[name]))
    return out

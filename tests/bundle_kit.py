"""Test and demo helpers: a tiny signed bundle and tiny real models, no TensorFlow needed.

Nothing here runs in production; the agent never imports it. :func:`build_bundle` needs the
``cloud`` package (it packs with :func:`cloud.training.bundle.write_bundle`, exactly as the trainer does)::

    private, public = models.signing.generate_keypair()
    path, manifest = build_bundle(tmp / "m-v1.bundle.tar", private, version=1)
    with Predictor.open(path, trust=[public], runtime="fake") as p:
        p.predict([{"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520}])

    # real models computing what the fake runtime computes, for LiteRT and ONNX Runtime:
    build_bundle(tmp / "m-v2.bundle.tar", private, version=2, variants=("tflite-fp32", "onnx-fp32"),
                 model_bytes={"tflite-fp32": tflite_linear(), "onnx-fp32": onnx_linear()})
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import CAT_FEATURES, LAG_WINDOW_DAYS, NUM_FEATURES
from models.features import Encoded, SalesState, Tables, encode
from models.manifest import ContractInfo, Manifest
from models.reference import reference_stats

__all__ = [
    "STORES",
    "ITEMS",
    "HOLIDAYS",
    "PAIRS",
    "STATE_END",
    "sample_tables",
    "sample_state",
    "build_bundle",
    "LINEAR_WEIGHTS",
    "tflite_linear",
    "onnx_linear",
    "SAMPLE_TOLERANCE",
    "WRONG_WEIGHTS",
    "real_models",
    "build_wrong_model_bundle",
]

STORES = [
    {"store_nbr": 1, "city": "Quito", "state": "Pichincha", "type": "D", "cluster": 13},
    {"store_nbr": 2, "city": "Guayaquil", "state": "Guayas", "type": "A", "cluster": 5},
    {"store_nbr": 3, "city": "Quito", "state": "Pichincha", "type": "B", "cluster": 6},
]
ITEMS = [
    {"item_nbr": 103520, "family": "GROCERY I", "class": 1028, "perishable": 0},
    {"item_nbr": 105574, "family": "DAIRY", "class": 2124, "perishable": 1},
    {"item_nbr": 999001, "family": "BREAD/BAKERY", "class": 2712, "perishable": 1},
]
HOLIDAYS = [
    {"date": "2017-08-10", "type": "Holiday", "locale": "National", "locale_name": "Ecuador", "transferred": False},
    {"date": "2017-08-24", "type": "Holiday", "locale": "National", "locale_name": "Ecuador", "transferred": False},
    {"date": "2017-08-20", "type": "Holiday", "locale": "Local", "locale_name": "Quito", "transferred": False},
    {"date": "2017-08-26", "type": "Work Day", "locale": "National", "locale_name": "Ecuador", "transferred": False},
]
#: Store×item pairs with sales history (store 2 never sold item 105574, store 3 only 999001).
PAIRS = [(1, 103520), (1, 105574), (2, 103520), (3, 999001)]
STATE_END = "2017-08-15"


def sample_tables() -> Tables:
    return Tables.from_records(stores=STORES, items=ITEMS, holidays=HOLIDAYS)


def sample_state(seed: int = 0) -> SalesState:
    rng = np.random.default_rng(seed)
    window = np.log1p(rng.poisson(4.0, size=(len(PAIRS), LAG_WINDOW_DAYS))).astype(np.float32)
    window[:, ::9] = 0.0  # a few zero-sales days
    return SalesState(
        store_nbr=np.array([s for s, _ in PAIRS], np.int64),
        item_nbr=np.array([i for _, i in PAIRS], np.int64),
        window=window,
        end_date=np.datetime64(STATE_END, "D"),
    )


def _holdout_inputs(tables: Tables, state: SalesState) -> Encoded:
    """Every pair on the four days after the state's last day, some on promotion."""
    pairs = len(state.store_nbr)
    rows = np.arange(pairs * 4)
    pair = rows % pairs
    return encode(
        tables,
        dates=state.end_date + 1 + rows // pairs,
        store_nbr=state.store_nbr[pair],
        item_nbr=state.item_nbr[pair],
        onpromotion=rows % 3 == 1,
        windows=state.window[pair],
        window_end=state.end_date,
    )


def _holdout(
    tables: Tables, state: SalesState, variants: Sequence[str] = (), weights: np.ndarray | None = None
) -> tuple[bytes, float]:
    """A gate-ready holdout slice: every pair on the four days after the state, some on promotion;
    ``y`` = lag_mean_7 (the "truth"), ``pred_<variant>`` and ``pred_keras`` = what the linear model
    with ``weights`` (default :data:`LINEAR_WEIGHTS`) predicts. Returns the npz bytes and its NWRMSLE."""
    from models.metrics import weighted_rmse_log, weights as kaggle_weights

    enc = _holdout_inputs(tables, state)
    pair = np.arange(len(enc)) % len(state.store_nbr)
    w = np.asarray(LINEAR_WEIGHTS if weights is None else weights, np.float32)
    pred = (enc.num @ w).astype(np.float32)
    y = enc.num[:, 8].astype(np.float32)
    perishable = {i["item_nbr"]: bool(i["perishable"]) for i in ITEMS}
    weight = kaggle_weights([perishable.get(int(i), False) for i in state.item_nbr[pair]]).astype(np.float32)
    from models.holdout import write_holdout

    data = write_holdout(enc.cat, enc.num, y, weight, {v: pred for v in ("keras", *variants)})
    return data, weighted_rmse_log(y, np.maximum(pred, 0), weight)


def build_bundle(
    out_path: str | os.PathLike[str],
    private_key: Any,
    *,
    name: str = "favorita-demand",
    version: int = 1,
    variants: Sequence[str] = ("tflite-fp32",),
    model_bytes: Mapping[str, bytes] | None = None,
    max_batch: int = 8,
    horizon_days: int = 30,
    extra_members: Mapping[str, bytes] | None = None,
    tables: Tables | None = None,
    state: SalesState | None = None,
    expected_weights: np.ndarray | None = None,
    fallback: bool | np.ndarray = False,
) -> tuple[Path, Manifest]:
    """A real, signed bundle with the sample tables and state and dummy model files.

    ``fallback=True`` ships the cold-start windows (``fallback.npz``, :mod:`models.coldstart`)
    built from ``state``, as the trainer does; without it pairs without history are refused. An array
    instead of True: the per-level factors (``level_scale``) the windows are served with.

    ``model_bytes`` maps a variant name to its file's bytes (default ``b"fake <variant>"``), so a
    test can ship a real tiny model for one variant and dummies (for the fake runtime) for others.
    The holdout slice and the manifest's gate figures (``holdout_nwrmsle``, ``tolerances``) say the
    trainer measured the linear model with ``expected_weights`` (default :data:`LINEAR_WEIGHTS`,
    what the fake runtime, :func:`tflite_linear` and :func:`onnx_linear` compute), so the agent's
    on-device gate passes; ship other weights to make it fail (:func:`build_wrong_model_bundle`).
    """
    from cloud.training.bundle import write_bundle  # the trainer's packer; only tests and demos need it

    tables = tables if tables is not None else sample_tables()
    state = state if state is not None else sample_state()
    members: dict[str, bytes] = {
        "tables.json": json.dumps(tables.to_json()).encode(),
        "state.npz": state.to_bytes(),
        "holdout.npz": b"",  # below, once the variants are known
        "reference_stats.json": json.dumps(reference_stats(_holdout_inputs(tables, state))).encode(),
    }
    members["holdout.npz"], holdout_nwrmsle = _holdout(tables, state, variants, expected_weights)
    variant_entries = []
    for v in variants:
        kind, precision = v.split("-", 1)
        file = f"models/{v}.{'tflite' if kind == 'tflite' else 'onnx'}"
        data = (model_bytes or {}).get(v, f"fake {v}".encode())
        members[file] = data
        variant_entries.append(
            {
                "name": v,
                "runtime": "litert" if kind == "tflite" else "onnxruntime",
                "file": file,
                "precision": precision,
                "size_bytes": len(data),
                "metrics": {"nwrmsle": 0.5, "r2": 0.3, "holdout_nwrmsle": holdout_nwrmsle},
            }
        )
    if fallback is not False:
        from models.coldstart import Fallback

        scale = None if fallback is True else fallback
        fb = Fallback.build(tables, state.store_nbr, state.item_nbr, state.window, state.end_date, level_scale=scale)
        members["fallback.npz"] = fb.to_bytes()
    members.update(extra_members or {})
    fields = {
        "name": name,
        "version": version,
        "created_at": dt.datetime(2017, 8, 16, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=version),
        "lineage": {
            "dataset_version": hashlib.sha256(b"sample").hexdigest(),
            "dataset_source": {"kind": "tests.bundle_kit"},
            "train_window": ("2017-06-01", "2017-08-01"),
            "validation_window": ("2017-08-02", STATE_END),
            "rows": {"train": 100, "validation": 20},
            "code_revision": "unknown",
        },
        "parameters": {"recipe": "sample", "tolerances": {v: dict(SAMPLE_TOLERANCE) for v in variants}},
        "metrics": {"keras": {"nwrmsle": 0.5}},
        "variants": variant_entries,
        **({"fallback": "fallback.npz"} if fallback is not False else {}),
        "contract": ContractInfo.current(
            state_end_date=str(state.end_date), max_batch=max_batch, horizon_days=horizon_days
        ).model_dump(),
    }
    return write_bundle(out_path, fields, members, private_key)


#: The gate tolerance sample bundles declare for every variant.
SAMPLE_TOLERANCE = {"max_nwrmsle_increase": 0.001, "max_p99_abs_diff": 0.001}


# -- tiny real models -------------------------------------------------------------------------
#: prediction = num[:, 8] (lag_mean_7) + 0.1 * num[:, 0] (onpromotion): what FakeRuntime computes.
LINEAR_WEIGHTS = np.zeros(len(NUM_FEATURES), np.float32)
LINEAR_WEIGHTS[8], LINEAR_WEIGHTS[0] = 1.0, 0.1


def tflite_linear(weights: np.ndarray = LINEAR_WEIGHTS) -> bytes:
    """A ``.tflite`` model, FULLY_CONNECTED(num, weights) with a dynamic batch and an unused ``cat``
    input, written with the flatbuffer schema that ships in ai-edge-litert."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    def tensor(name: str, signature: list[int], ttype: int, buf: int) -> Any:
        t = s.TensorT()
        t.name, t.type, t.buffer = name.encode(), ttype, buf
        t.shape, t.shapeSignature = [1 if d < 0 else d for d in signature], signature
        return t

    graph = s.SubGraphT()
    graph.tensors = [
        tensor("serving_default_cat:0", [-1, len(CAT_FEATURES)], s.TensorType.INT32, 0),
        tensor("serving_default_num:0", [-1, len(NUM_FEATURES)], s.TensorType.FLOAT32, 0),
        tensor("weights", [1, len(NUM_FEATURES)], s.TensorType.FLOAT32, 1),
        tensor("StatefulPartitionedCall:0", [-1, 1], s.TensorType.FLOAT32, 0),
    ]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [1, 2, -1], [3]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.FullyConnectedOptions, s.FullyConnectedOptionsT()
    graph.operators, graph.inputs, graph.outputs = [op], [0, 1], [3]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    weights_buffer = s.BufferT()
    weights_buffer.data = list(np.asarray(weights, np.float32).tobytes())
    model = s.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [s.BufferT(), weights_buffer]  # buffer 0 is the empty sentinel
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def onnx_linear(weights: np.ndarray = LINEAR_WEIGHTS) -> bytes:
    """An ``.onnx`` model, MatMul(num, weights) with a dynamic batch and an unused ``cat`` input."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["num", "weights"], ["out"])],
        "linear",
        [
            helper.make_tensor_value_info("cat", TensorProto.INT32, ["N", len(CAT_FEATURES)]),
            helper.make_tensor_value_info("num", TensorProto.FLOAT, ["N", len(NUM_FEATURES)]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.asarray(weights, np.float32).reshape(-1, 1), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def flip_member_byte(src: str | os.PathLike[str], dst: str | os.PathLike[str], member: str) -> Path:
    """Copy bundle ``src`` to ``dst`` with one byte in the middle of ``member``'s data flipped."""
    import tarfile

    raw = bytearray(Path(src).read_bytes())
    with tarfile.open(src) as tar:
        info = tar.getmember(member)
    raw[info.offset_data + info.size // 2] ^= 0xFF
    Path(dst).write_bytes(bytes(raw))
    return Path(dst)


# -- models the on-device gate must catch -----------------------------------------------------
#: A plausible but wrong model: half of last week's sales, no promotion effect.
WRONG_WEIGHTS = np.zeros(len(NUM_FEATURES), np.float32)
WRONG_WEIGHTS[8] = 0.5


def real_models(variants: Sequence[str], weights: np.ndarray = LINEAR_WEIGHTS) -> dict[str, bytes]:
    """Tiny real models (LiteRT for ``tflite-*``, ONNX Runtime for ``onnx-*``) computing ``num @ weights``."""
    return {v: (tflite_linear(weights) if v.startswith("tflite") else onnx_linear(weights)) for v in variants}


def build_wrong_model_bundle(
    out_path: str | os.PathLike[str],
    private_key: Any,
    *,
    version: int = 2,
    variants: Sequence[str] = ("tflite-fp32",),
    weights: np.ndarray = WRONG_WEIGHTS,
    **kw: Any,
) -> tuple[Path, Manifest]:
    """A validly signed bundle whose real models compute ``num @ weights`` while its holdout and
    manifest say the trainer measured :data:`LINEAR_WEIGHTS`: every hash and the signature check
    out, only the on-device gate (:mod:`edge.store.gate`) can tell. Needs a real runtime, not ``fake``."""
    return build_bundle(out_path, private_key, version=version, variants=variants, model_bytes=real_models(variants, weights), **kw)

"""Predictor: the embedded model — predictions, every validation rule, variants, lifecycle."""

from __future__ import annotations

import numpy as np
import pytest

from edge.serving.errors import InferenceError, RequestError
from edge.serving.predictor import Predictor
from tests.bundle_kit import STATE_END, build_bundle, onnx_linear, sample_state, sample_tables, tflite_linear
from models.bundle import BundleError, unpack_bundle
from models.contract import PredictRequest
from models.features import encode, target_inverse
from models.signing import generate_keypair

ROW = {"date": "2017-08-16", "store_nbr": 1, "item_nbr": 103520, "onpromotion": False}


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, keys):
    path, _ = build_bundle(tmp_path_factory.mktemp("b") / "m-v1.bundle.tar", keys[0], max_batch=8, horizon_days=30)
    return path


@pytest.fixture(scope="module")
def predictor(bundle_path, keys):
    with Predictor.open(bundle_path, trust=[keys[1]], runtime="fake") as p:
        yield p


def expected_units(rows):
    """What the fake runtime must answer, computed straight from models.features.encode."""
    tables, state = sample_tables(), sample_state()
    store = np.array([r["store_nbr"] for r in rows])
    item = np.array([r["item_nbr"] for r in rows])
    enc = encode(
        tables,
        dates=np.array([r["date"] for r in rows], "M8[D]"),
        store_nbr=store,
        item_nbr=item,
        onpromotion=np.array([r.get("onpromotion", False) for r in rows]),
        windows=state.window[state.pair_index(store, item)],
        window_end=np.datetime64(STATE_END),
    )
    return target_inverse(enc.num[:, 8] + np.float32(0.1) * enc.num[:, 0])


def test_predictions_match_the_shared_encoding(predictor):
    rows = [
        ROW,
        {"date": "2017-08-20", "store_nbr": 3, "item_nbr": 999001, "onpromotion": True},
        {"date": "2017-09-14", "store_nbr": 2, "item_nbr": 103520},
        {"date": "2017-08-24", "store_nbr": 1, "item_nbr": 105574, "onpromotion": True},
    ]
    got = predictor.predict(rows)
    assert isinstance(got, list) and all(isinstance(x, float) for x in got)
    np.testing.assert_allclose(got, expected_units(rows), atol=1e-4)
    assert got[1] != pytest.approx(predictor.predict([{**rows[1], "onpromotion": False}])[0])


def test_accepts_body_dict_and_predict_request(predictor):
    a = predictor.predict([ROW])
    assert predictor.predict({"instances": [ROW]}) == a
    assert predictor.predict({"instances": [ROW], "correlation_id": "c1"}) == a
    assert predictor.predict(PredictRequest.model_validate({"instances": [ROW]})) == a


def test_stage_timings_and_properties(predictor, bundle_path):
    timings: dict[str, float] = {}
    predictor.predict([ROW], timings=timings)
    assert set(timings) == {"validate", "encode", "infer"} and all(v >= 0 for v in timings.values())
    assert (predictor.name, predictor.version, predictor.variant, predictor.runtime_name) == (
        "favorita-demand",
        1,
        "tflite-fp32",
        "fake",
    )
    from models.bundle import sha256_file

    assert predictor.digest == sha256_file(bundle_path)
    assert predictor.info.model_dump() == {
        "name": "favorita-demand",
        "version": 1,
        "digest": predictor.digest,
        "variant": "tflite-fp32",
        "runtime": "fake",
        "providers": [],
    }


@pytest.mark.parametrize(
    "change, field, rule",
    [
        ({"store_nbr": None}, "instances[0].store_nbr", "required"),
        ({"store_nbr": "1"}, "instances[0].store_nbr", "int_type"),
        ({"store_nbr": 1.5}, "instances[0].store_nbr", "int_type"),
        ({"item_nbr": float("nan")}, "instances[0].item_nbr", "finite"),
        ({"onpromotion": "yes"}, "instances[0].onpromotion", "bool_type"),
        ({"shelf": 3}, "instances[0].shelf", "extra_field"),
        ({"date": "16/08/2017"}, "instances[0].date", "date_format"),
        ({"date": "2017-02-30"}, "instances[0].date", "date_format"),
        ({"date": "2017-08-16T10:00:00"}, "instances[0].date", "date_format"),
        ({"store_nbr": 0}, "instances[0].store_nbr", "range"),
        ({"store_nbr": 999}, "instances[0].store_nbr", "known_store"),
        ({"item_nbr": 5}, "instances[0].item_nbr", "known_item"),
        ({"store_nbr": 2, "item_nbr": 105574}, "instances[0]", "known_pair"),
        ({"date": STATE_END}, "instances[0].date", "horizon"),
        ({"date": "2017-09-15"}, "instances[0].date", "horizon"),
    ],
)
def test_each_rule_names_field_and_rule(predictor, change, field, rule):
    row = {**ROW, **change}
    row = {k: v for k, v in row.items() if v is not None}
    with pytest.raises(RequestError) as info:
        predictor.predict([row])
    err = info.value
    assert err.status == 422
    assert [(d["field"], d["rule"]) for d in err.details] == [(field, rule)]
    assert err.details[0]["message"].startswith(f"{field}: ") and err.details[0]["message"].endswith(f"(rule {rule})")
    assert err.to_json()["error"]["code"] == "invalid_request"


def test_message_names_field_value_and_rule(predictor):
    with pytest.raises(RequestError) as info:
        predictor.predict([ROW, {**ROW, "store_nbr": 999}])
    assert str(info.value) == "instances[1].store_nbr: unknown store 999 (rule known_store)"


def test_several_problems_are_all_reported(predictor):
    with pytest.raises(RequestError) as info:
        predictor.predict([{**ROW, "store_nbr": 999, "item_nbr": 5, "date": "2018-01-01"}])
    assert [d["rule"] for d in info.value.details] == ["known_store", "known_item", "horizon"]
    assert "(and 2 more)" in str(info.value)


def test_batch_limits(predictor):
    with pytest.raises(RequestError) as info:
        predictor.predict([ROW] * 9)
    assert info.value.status == 413 and info.value.details[0]["rule"] == "max_batch"
    assert len(predictor.predict([ROW] * 8)) == 8
    with pytest.raises(RequestError) as info:
        predictor.predict([])
    assert info.value.details[0] == {
        "field": "instances",
        "rule": "min_rows",
        "message": "instances: needs at least one row (rule min_rows)",
    }
    with pytest.raises(RequestError) as info:
        predictor.predict({"rows": [ROW]})
    assert {(d["field"], d["rule"]) for d in info.value.details} == {("instances", "required"), ("rows", "extra_field")}


def test_open_unpacked_dir_reverifies(tmp_path, bundle_path, keys):
    vb = unpack_bundle(bundle_path, tmp_path / "b", [keys[1]])
    with Predictor.open(vb.directory, trust=[keys[1]], runtime="fake") as p:
        assert p.predict([ROW]) == pytest.approx(expected_units([ROW]), abs=1e-4)
    (vb.directory / "state.npz").write_bytes(b"tampered")
    with pytest.raises(BundleError) as info:
        Predictor.open(vb.directory, trust=[keys[1]], runtime="fake")
    assert info.value.reason == "hash_mismatch"


def test_trust_from_pem_files(tmp_path, bundle_path, keys):
    from cryptography.hazmat.primitives import serialization

    pem = tmp_path / "signing.pub"
    pem.write_bytes(keys[1].public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with Predictor.open(bundle_path, trust=[pem], runtime="fake") as p:
        assert p.version == 1
    with pytest.raises(BundleError) as info:
        Predictor.open(bundle_path, trust=[generate_keypair()[1]], runtime="fake")
    assert info.value.reason == "bad_signature"


def test_close_removes_temp_dir_and_stops_predicting(bundle_path, keys):
    p = Predictor.open(bundle_path, trust=[keys[1]], runtime="fake")
    directory = p.bundle.directory
    assert directory.is_dir()
    p.close()
    p.close()
    assert not directory.exists() and not directory.parent.exists()
    with pytest.raises(InferenceError):
        p.predict([ROW])


def test_variant_choice_and_fallback(tmp_path, keys):
    path, _ = build_bundle(
        tmp_path / "m.tar",
        keys[0],
        variants=("tflite-int8", "onnx-fp32"),
        model_bytes={"onnx-fp32": onnx_linear()},
    )
    # tflite-int8 holds junk: LiteRT fails its warm-up, the next variant in manifest order is served.
    with Predictor.open(path, trust=[keys[1]]) as p:
        assert (p.variant, p.runtime_name) == ("onnx-fp32", "onnxruntime")
        assert p.predict([ROW]) == pytest.approx(expected_units([ROW]), abs=1e-3)
    with Predictor.open(path, trust=[keys[1]], variant=["onnx-fp32"], runtime="fake") as p:
        assert p.variant == "onnx-fp32"
    with pytest.raises(BundleError) as info:
        Predictor.open(path, trust=[keys[1]], variant="tflite-int8")
    assert info.value.reason == "no_runtime"
    with pytest.raises(BundleError) as info:
        Predictor.open(path, trust=[keys[1]], variant="tflite-fp16")
    assert info.value.reason == "no_variant"


def test_real_runtimes_agree_with_the_fake(tmp_path, keys):
    path, _ = build_bundle(
        tmp_path / "m.tar",
        keys[0],
        variants=("tflite-fp32", "onnx-fp32"),
        model_bytes={"tflite-fp32": tflite_linear(), "onnx-fp32": onnx_linear()},
    )
    rows = [ROW, {"date": "2017-08-20", "store_nbr": 3, "item_nbr": 999001, "onpromotion": True}]
    answers = {}
    for variant, runtime in (("tflite-fp32", "litert"), ("onnx-fp32", "onnxruntime"), ("tflite-fp32", "fake")):
        with Predictor.open(path, trust=[keys[1]], variant=variant, runtime=runtime) as p:
            answers[runtime] = p.predict(rows)
    np.testing.assert_allclose(answers["litert"], answers["fake"], atol=1e-3)
    np.testing.assert_allclose(answers["onnxruntime"], answers["fake"], atol=1e-3)

"""Runtime plugins: registry, availability, the fake runtime, and real LiteRT / ONNX Runtime on
tiny hand-built models (no TensorFlow): prediction = num[:, 8] + 0.1 * num[:, 0], like the fake."""

from __future__ import annotations

import numpy as np
import pytest

from edge.runtimes import REGISTRY, available_runtimes, get_runtime, runtime_for_variant
from edge.runtimes.base import RuntimeLoadError, match_inputs, warmup_feed
from edge.runtimes.fake import FakeRuntime
from models.contract import NUM_FEATURES
from tests.bundle_kit import onnx_linear, tflite_linear
from tests.conftest import require


def expected(num: np.ndarray) -> np.ndarray:
    return num[:, 8] + np.float32(0.1) * num[:, 0]


def random_feed(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"cat": rng.integers(0, 5, (n, 8)).astype(np.int32), "num": rng.random((n, len(NUM_FEATURES))).astype(np.float32)}


def test_registry_lists_every_plugin_and_reports_missing_ones():
    avail = available_runtimes()
    assert set(avail) == set(REGISTRY) == {"litert", "tflite_legacy", "onnxruntime", "fake"}
    assert avail["fake"] == "ok"
    for name, status in avail.items():
        assert status == "ok" or status  # a reason, never an exception
        assert get_runtime(name).name == name


def test_runtime_for_variant_prefers_litert_then_legacy():
    ok = {"litert": "ok", "tflite_legacy": "ok", "onnxruntime": "ok", "fake": "ok"}
    assert runtime_for_variant("tflite-int8", ok) == "litert"
    assert runtime_for_variant("tflite-int8", {**ok, "litert": "not installed"}) == "tflite_legacy"
    assert runtime_for_variant("onnx-fp32", ok) == "onnxruntime"
    none = {"litert": "x", "tflite_legacy": "x", "onnxruntime": "x", "fake": "ok"}
    assert runtime_for_variant("tflite-fp16", none) is None
    assert runtime_for_variant("tflite-fp16", none, allow_fake=True) == "fake"


def test_tflite_legacy_refuses_numpy2_instead_of_crashing(monkeypatch):
    from edge.runtimes import tflite_legacy

    cls = tflite_legacy.TFLiteLegacyRuntime
    ok, reason = cls.available()
    assert ok or "tflite-runtime" in reason
    monkeypatch.setattr(tflite_legacy.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(cls, "version", classmethod(lambda c: "2.14.0"))
    monkeypatch.setattr(tflite_legacy.np, "__version__", "2.4.6")
    assert cls.available() == (False, "tflite-runtime 2.14.0 needs numpy<2 (numpy 2.4.6 is installed)")
    monkeypatch.setattr(tflite_legacy.np, "__version__", "1.26.4")
    assert cls.available() == (True, "ok")


def test_match_inputs_by_substring_and_rejects_ambiguity():
    assert match_inputs(["serving_default_num:0", "serving_default_cat:0"]) == {
        "cat": "serving_default_cat:0",
        "num": "serving_default_num:0",
    }
    with pytest.raises(RuntimeLoadError):
        match_inputs(["x", "y"])
    with pytest.raises(RuntimeLoadError):
        match_inputs(["cat", "cat_2", "num"])


def test_fake_runtime_is_deterministic_any_batch(tmp_path):
    path = tmp_path / "whatever.bin"
    path.write_bytes(b"fake")
    rt = FakeRuntime(path)
    with pytest.raises(RuntimeError):
        rt.infer(warmup_feed(1))
    rt.load()
    assert rt.calls == 1  # the warm-up
    for n in (1, 7, 1):
        feed = random_feed(n)
        out = rt.infer(feed)
        assert out.dtype == np.float32 and out.shape == (n,)
        np.testing.assert_allclose(out, expected(feed["num"]), rtol=1e-6)
    assert rt.infer(warmup_feed(0)).shape == (0,)
    rt.close()


def test_fake_runtime_needs_a_file(tmp_path):
    with pytest.raises(RuntimeLoadError):
        FakeRuntime(tmp_path / "missing.tflite").load()


@pytest.mark.parametrize(
    "runtime, suffix, build", [("litert", ".tflite", tflite_linear), ("onnxruntime", ".onnx", onnx_linear)]
)
def test_real_runtimes_resize_for_any_batch(tmp_path, runtime, suffix, build):
    cls = get_runtime(runtime)
    ok, reason = cls.available()
    require(ok, f"{runtime}: {reason}")
    path = tmp_path / f"linear{suffix}"
    path.write_bytes(build())
    rt = cls(path, threads=1)
    rt.load()
    for n in (1, 5, 5, 1, 64):
        feed = random_feed(n, seed=n)
        np.testing.assert_allclose(rt.infer(feed), expected(feed["num"]), rtol=1e-5, atol=1e-6)
    rt.close()


def test_real_runtime_refuses_wrong_format_and_garbage(tmp_path):
    cls = get_runtime("onnxruntime")
    require(cls.available()[0], "onnxruntime missing")
    wrong = tmp_path / "model.tflite"
    wrong.write_bytes(b"x")
    with pytest.raises(RuntimeLoadError):
        cls(wrong).load()
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(RuntimeLoadError):
        cls(garbage).load()


def test_onnx_telemetry_disabled_before_import():
    import os

    import edge.runtimes.onnx  # noqa: F401

    assert os.environ.get("ORT_DISABLE_TELEMETRY") == "1"

"""Issue 4 item 1: runtime plugins and execution providers; the agent picks a variant by its
configuration and hardware and reports which (variant, runtime, providers) in /healthz, the MQTT
state and edgeship_model_info. Real LiteRT and ONNX Runtime on tiny hand-built models."""

from __future__ import annotations

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from edge.runtimes import hardware as hw_module
from edge.agent import Agent
from edgeship.cli import build_parser
from edgeship.commands.agent import config_from_args
from edge.config import AgentConfig
from edge.runtimes.hardware import ARM_ORDER, Hardware, choose
from edge.runtimes import get_runtime
from edge.runtimes.onnx import CPU, OnnxRuntime, available_providers, canonical_provider, resolve_providers
from tests.bundle_kit import build_bundle, onnx_linear, real_models
from models.signing import generate_keypair
from tests.conftest import require

ALL = ["tflite-int8", "tflite-dynamic", "tflite-fp16", "tflite-fp32", "onnx-int8", "onnx-fp32"]
CUDA, TRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


def hw(machine: str = "x86_64", providers: tuple[str, ...] = (CPU,)) -> Hardware:
    return Hardware(machine=machine, system="Linux", cpus=4, onnx_providers=providers)


# -- providers ----------------------------------------------------------------------------------
def test_provider_names_and_resolution():
    assert canonical_provider("cuda") == CUDA and canonical_provider("TensorRT") == TRT
    assert canonical_provider("OpenVINOExecutionProvider") == "OpenVINOExecutionProvider"
    with pytest.raises(ValueError, match="unknown execution provider"):
        canonical_provider("gpu")
    gpu_box = [TRT, CUDA, CPU]
    assert resolve_providers(None, gpu_box) == [TRT, CUDA, CPU]  # default order: fastest first
    assert resolve_providers(["cuda", "tensorrt"], gpu_box) == [CUDA, TRT, CPU]  # configured order, CPU closes
    assert resolve_providers(["cpu"], gpu_box) == [CPU]
    assert resolve_providers(["tensorrt", "cuda"], [CPU]) == [CPU]  # missing ones are skipped
    assert resolve_providers(None, [CUDA, CPU, "AzureExecutionProvider"]) == [CUDA, CPU]


def test_available_providers_on_this_machine():
    require(get_runtime("onnxruntime").available()[0], "onnxruntime is not installed")
    import onnxruntime

    have = available_providers()
    assert CPU in have and "AzureExecutionProvider" not in have
    assert set(have) <= set(onnxruntime.get_available_providers())


def test_onnx_runtime_reports_what_the_session_really_runs_on(tmp_path):
    require(get_runtime("onnxruntime").available()[0], "onnxruntime is not installed")
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_linear())
    asked = [*(p for p in (TRT, CUDA) if p not in available_providers()), CPU]
    rt = OnnxRuntime(path, threads=2, providers=asked, cache_dir=tmp_path / "trt")
    assert rt.provider_options()[0] == ({"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path / "trt")} if asked[0] == TRT else {})
    with pytest.warns(UserWarning) if len(asked) > 1 else _nothing():
        rt.load()  # ORT skips providers it lacks; the warm-up ran
    assert rt.active_providers == [p for p in asked if p in available_providers()]
    rt.close()
    assert rt.active_providers == []


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# -- variant choice -----------------------------------------------------------------------------
def test_arm_cpu_prefers_integer_tflite():
    c = choose(["onnx-fp32", "tflite-fp32", "tflite-int8", "onnx-int8"], hw("aarch64"))
    assert c.order == ["tflite-int8", "tflite-fp32", "onnx-int8", "onnx-fp32"] and c.reason == "arm_cpu"
    assert choose(ALL, hw("armv7l")).order == list(ARM_ORDER)
    assert choose(ALL, hw("aarch64", providers=())).providers == []  # no onnxruntime: nothing to resolve


def test_gpu_provider_prefers_float_onnx():
    c = choose(ALL, hw("x86_64", (CUDA, CPU)))
    assert c.order[0] == "onnx-fp32" and c.order[-1] == "onnx-int8" and c.reason == f"gpu:{CUDA}"
    assert c.providers == [CUDA, CPU]
    jetson = choose(ALL, hw("aarch64", (TRT, CUDA, CPU)))
    assert jetson.order == ["onnx-fp32", "tflite-int8", "tflite-dynamic", "tflite-fp16", "tflite-fp32", "onnx-int8"]
    assert jetson.providers == [TRT, CUDA, CPU] and jetson.reason == f"gpu:{TRT}"
    # configured to stay on the CPU: no GPU preference
    cpu_only = choose(ALL, hw("x86_64", (CUDA, CPU)), configured_providers=["cpu"])
    assert cpu_only.order == ALL and cpu_only.providers == [CPU] and cpu_only.reason == "bundle"


def test_a_bundle_leading_with_another_model_keeps_it_first_on_any_hardware():
    """The trainer ships onnx-lightgbm first only when it forecasts better: the device keeps the model
    choice (on an ARM CPU, a GPU box or a plain CPU) and orders the Keras exports behind it."""
    bundle = ["onnx-lightgbm", *ALL]
    arm = choose(bundle, hw("aarch64"))
    assert arm.order == ["onnx-lightgbm", *ARM_ORDER] and arm.reason == "model:lightgbm+arm_cpu"
    gpu = choose(bundle, hw("x86_64", (CUDA, CPU)))
    assert gpu.order[:2] == ["onnx-lightgbm", "onnx-fp32"] and gpu.reason == f"model:lightgbm+gpu:{CUDA}"
    assert choose(bundle, hw()).order == bundle
    # shipped last (recipe lightgbm_variant "always", not better): the hardware order, LightGBM last
    assert choose([*ALL, "onnx-lightgbm"], hw("aarch64")).order == [*ARM_ORDER, "onnx-lightgbm"]
    # a configured variant still comes first
    assert choose(bundle, hw("aarch64"), configured_variants=["tflite-int8"]).order[:2] == ["tflite-int8", "onnx-lightgbm"]


def test_configuration_comes_before_hardware():
    c = choose(ALL, hw("aarch64"), configured_variants=["onnx-fp32"])
    assert c.order[0] == "onnx-fp32" and c.order[1:] == [v for v in ARM_ORDER if v != "onnx-fp32"]
    assert c.reason == "config+arm_cpu"
    assert choose(["tflite-fp32"], hw(), configured_variants=["onnx-int8"]).order == ["tflite-fp32"]


def test_cli_and_config_take_providers(tmp_path):
    args = build_parser().parse_args(
        ["agent", "--device-id", "d1", "--state-dir", str(tmp_path), "--trust", "k.pub", "--providers", "tensorrt", "cuda", "cpu",
         "--gate", "if_present", "--gate-margin", "0.05"]  # fmt: skip
    )
    cfg = config_from_args(args)
    assert cfg.providers == [TRT, CUDA, CPU] and cfg.gate == "if_present" and cfg.gate_margin == 0.05
    with pytest.raises(ValueError):
        AgentConfig(device_id="d1", state_dir=tmp_path, trust=["k.pub"], providers=["gpu"])
    with pytest.raises(ValueError):
        AgentConfig(device_id="d1", state_dir=tmp_path, trust=["k.pub"], gate="maybe")


# -- the agent reports what it picked ------------------------------------------------------------
@pytest.fixture(scope="module")
def two_variant_bundle(tmp_path_factory):
    require(get_runtime("litert").available()[0] and get_runtime("onnxruntime").available()[0], "LiteRT and ONNX Runtime needed")
    private, public = generate_keypair()
    d = tmp_path_factory.mktemp("hw")
    pem = d / "signing.pub"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    variants = ("tflite-fp32", "onnx-fp32")
    path, _ = build_bundle(d / "b.tar", private, variants=variants, model_bytes=real_models(variants))
    return path, pem


def _serve(tmp_path, pem, bundle, monkeypatch, hardware: Hardware, **kw) -> tuple[dict, dict, str]:
    monkeypatch.setattr(hw_module, "detect", lambda: hardware)
    monkeypatch.setattr("edge.agent.detect", lambda: hardware)
    cfg = AgentConfig(device_id="d1", state_dir=tmp_path / "s", trust=[pem], http="127.0.0.1:0", **kw)
    with Agent(cfg) as agent:
        assert agent.install_and_activate(bundle)
        health = httpx.get(f"{agent.http_url}/healthz").json()
        state = agent.device_state().model_dump(mode="json")
        metrics = httpx.get(f"{agent.http_url}/metrics").text
    info = [line for line in metrics.splitlines() if line.startswith("edgeship_model_info{")]
    assert len(info) == 1
    return health, state, info[0]


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")
def test_agent_on_a_gpu_box_serves_onnx_and_reports_real_providers(tmp_path, two_variant_bundle, monkeypatch):
    bundle, pem = two_variant_bundle
    # This device claims CUDA; the onnxruntime here has none, so the session really runs on CPU.
    health, state, info = _serve(tmp_path, pem, bundle, monkeypatch, hw("x86_64", (CUDA, CPU)))
    model = health["model"]
    assert (model["variant"], model["runtime"]) == ("onnx-fp32", "onnxruntime")
    assert model["providers"] == [p for p in (CUDA, CPU) if p in available_providers()]
    assert state["model"] == model and state["hardware"]["variant_choice"] == f"gpu:{CUDA}"
    assert state["hardware"]["onnx_providers"] == f"{CUDA},{CPU}" and state["hardware"]["machine"] == "x86_64"
    assert 'variant="onnx-fp32"' in info and 'runtime="onnxruntime"' in info and f'providers="{",".join(model["providers"])}"' in info


def test_agent_on_an_arm_cpu_serves_tflite(tmp_path, two_variant_bundle, monkeypatch):
    bundle, pem = two_variant_bundle
    health, state, info = _serve(tmp_path, pem, bundle, monkeypatch, hw("aarch64", (CPU,)))
    assert health["model"]["variant"] == "tflite-fp32" and health["model"]["runtime"] == "litert"
    assert health["model"]["providers"] == [] and state["hardware"]["variant_choice"] == "arm_cpu"
    assert 'runtime="litert"' in info and 'providers=""' in info


def test_configured_variant_and_providers_win(tmp_path, two_variant_bundle, monkeypatch):
    bundle, pem = two_variant_bundle
    health, state, _ = _serve(
        tmp_path, pem, bundle, monkeypatch, hw("aarch64", (CPU,)), variants=["onnx-fp32"], providers=["cpu"], threads=2
    )
    assert health["model"]["variant"] == "onnx-fp32" and health["model"]["providers"] == [CPU]
    assert state["hardware"]["variant_choice"] == "config+arm_cpu"

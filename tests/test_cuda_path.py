"""The CUDA path of a client: device and precision choices, a bf16 frozen base, quantisation, codecs on the
tensors' device, GPU fractions in simulation. CPU tests run everywhere; CUDA tests run where a GPU is present."""

from __future__ import annotations

import importlib.util
import math
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn import functional
from transformers import LlamaConfig, LlamaForCausalLM

from client.task.adapters import AdapterSettings, wrap_with_lora
from client.task.build import (
    base_weight_dtype,
    build_task,
    check_quantization,
    keep_frozen_in,
    load_splits,
)
from client.task.loop import train_locally
from client.task.spec import TaskSpec
from server.run_config import DEFAULTS, ConfigError, resolve
from simulations.cli import build_parser, main
from simulations.simulate import backend_config, simulate, with_gpu_device
from strategies.codecs import compeft, dense, ferret
from strategies.codecs.compeft import size as compeft_size
from strategies.random_basis import buckets_and_signs
from tests.test_compeft_codec import reference, updates

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def _spec(**changes: object) -> TaskSpec:
    return replace(resolve({"preset": "encoder", "precision": "fp32"}).task, **changes)


# --- run config and task spec -------------------------------------------------------------------------------------

def test_quantization_flows_from_run_config_to_the_clients_spec() -> None:
    assert DEFAULTS["quantization"] == "none"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"]["quantization"] == "none"
    assert resolve({}).task.quantization == "none"
    spec = resolve({"preset": "encoder", "quantization": "4bit", "device": "cuda:1", "precision": "bf16"}).task
    assert (spec.quantization, spec.device, spec.precision) == ("4bit", "cuda:1", "bf16")
    record = spec.to_record()
    assert record["quantization"] == "4bit"
    assert TaskSpec.from_record(record) == spec
    with pytest.raises(ValueError, match="missing 'quantization'"):
        TaskSpec.from_record({k: v for k, v in record.items() if k != "quantization"})


@pytest.mark.parametrize(("config", "message"), [
    ({"quantization": "int3"}, "quantization 'int3' is not one of none, 8bit, 4bit"),
    ({"quantization": "8bit", "trainable": "full"}, "needs trainable=lora"),
    ({"quantization": 4}, "'quantization' expects str"),
])
def test_bad_quantization_is_named(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(config)


def test_quantization_needs_cuda_and_bitsandbytes() -> None:
    check_quantization("none", torch.device("cpu"))  # nothing to check
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_quantization("4bit", torch.device("cpu"))
    if not HAS_BNB:
        with pytest.raises(ValueError, match="needs the bitsandbytes package"):
            check_quantization("8bit", torch.device("cuda:0"))
    with pytest.raises(ValueError, match="needs a CUDA device"):  # refused before any model is loaded
        build_task(_spec(quantization="8bit", device="cpu"), ("a", "b"))


# --- bf16 frozen base ---------------------------------------------------------------------------------------------

def test_frozen_base_is_bf16_only_for_lora_on_cuda_in_bf16() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    assert base_weight_dtype(_spec(precision="bf16"), cpu) == torch.float32  # the CPU keeps fp32 weights
    assert base_weight_dtype(_spec(precision="fp32"), cpu) == torch.float32
    assert base_weight_dtype(_spec(precision="bf16"), cuda) == torch.bfloat16
    assert base_weight_dtype(_spec(precision="fp32"), cuda) == torch.float32
    assert base_weight_dtype(_spec(precision="bf16", trainable="full"), cuda) == torch.float32  # nothing frozen


def _tiny_lora_llama() -> torch.nn.Module:
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    return wrap_with_lora(base, AdapterSettings(r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj")), seed=1)


def test_keep_frozen_in_casts_only_what_does_not_train_and_the_adapter_still_learns() -> None:
    model = _tiny_lora_llama()
    buffers = {name: b.dtype for name, b in model.named_buffers()}
    changed = keep_frozen_in(model, torch.bfloat16)
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert changed == len(frozen) > 0 and trained
    assert all(p.dtype == torch.bfloat16 for p in frozen.values())
    assert all(p.dtype == torch.float32 for p in trained.values())
    assert {name: b.dtype for name, b in model.named_buffers()} == buffers  # rotary frequencies stay as they were
    assert keep_frozen_in(model, torch.bfloat16) == 0
    before_frozen = {n: p.detach().clone() for n, p in frozen.items()}
    before_trained = {n: p.detach().clone() for n, p in trained.items()}
    optimiser = torch.optim.AdamW(list(trained.values()), lr=1e-2)
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        loss = functional.cross_entropy(logits.float().reshape(-1, 64), ids.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in frozen.values())
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained.values())
        optimiser.step()
    assert all(s.dtype == torch.float32 for state in optimiser.state.values() for s in state.values()
               if torch.is_tensor(s) and s.is_floating_point() and s.dim() > 0)
    assert any(not torch.equal(p, before_trained[n]) for n, p in trained.items() if "lora_B" in n)
    assert all(torch.equal(p, before_frozen[n]) for n, p in frozen.items())


@pytest.fixture(scope="module")
def encoder_task():
    spec = _spec(device="cpu")
    train, _ = load_splits(spec)
    return build_task(spec, train), train.dataset.select(range(32))


def test_cpu_task_keeps_every_weight_fp32_and_the_device_delta_equals_the_cpu_delta(encoder_task) -> None:
    task, data = encoder_task
    assert all(p.dtype == torch.float32 for p in task.model.parameters())
    start = task.trainable_state()
    train_locally(task, data, steps=1, batch_size=8, lr=1e-3, seed=0)
    on_cpu = task.trainable_delta(start)
    on_device = task.trainable_delta(start, on_device=True)
    assert set(on_cpu) == set(on_device) == set(start)
    assert all(torch.equal(on_cpu[n], on_device[n]) and on_device[n].dtype == torch.float32 for n in start)
    assert any(bool(t.abs().sum() > 0) for t in on_cpu.values())
    task.load_trainable_state(start)


# --- codecs on the tensors' device --------------------------------------------------------------------------------

def _header_alphas(payload: bytes) -> list[float]:
    from protos.fedsqueeze.v1 import compeft_pb2
    from strategies.codecs.envelope import parse_envelope

    message = parse_envelope(payload, codec="compeft", codec_version=compeft.CODEC_VERSION)
    header = compeft_pb2.CompeftHeader.FromString(message.codec_header)
    return [header.alpha] + [compeft_pb2.CompeftTensor.FromString(e.data).alpha for e in message.tensors]


def _assert_same_selection(payload: bytes, expected: bytes) -> None:
    """Same kept positions and signs; alpha equal up to fp32 rounding of a std summed in another order."""
    got, want = compeft.decode(payload), compeft.decode(expected)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        assert torch.equal(got[name] != 0, want[name] != 0), f"{name}: kept positions differ"
        assert torch.equal(torch.signbit(got[name][got[name] != 0]), torch.signbit(want[name][want[name] != 0]))
    np.testing.assert_allclose(_header_alphas(payload), _header_alphas(expected), rtol=1e-6, atol=0.0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update=updates(), density=st.floats(0.001, 1.0), scope=st.sampled_from(["global", "tensor"]))
def test_compeft_torch_engine_keeps_what_the_numpy_engine_keeps(update: dict[str, torch.Tensor], density: float,
                                                               scope: str) -> None:
    on_torch = compeft.encode(update, density=density, scope=scope, engine="torch")
    _assert_same_selection(on_torch, compeft.encode(update, density=density, scope=scope, engine="numpy"))
    expected, kept = reference(update, density, 1.0, scope)
    decoded = compeft.decode(on_torch)
    assert all(torch.equal(decoded[n] != 0, expected[n] != 0) for n in update)
    assert compeft_size.size_report(on_torch).kept == kept


def test_compeft_torch_engine_on_a_large_update_and_its_errors() -> None:
    generator = torch.Generator().manual_seed(7)
    update = {"a": torch.randn(600_000, generator=generator) * 1e-3,
              "b": torch.randn(700, 1500, generator=generator).to(torch.bfloat16),
              "tied": torch.tensor([0.5, -0.5, 0.5, 0.0])}
    for scope in ("global", "tensor"):
        _assert_same_selection(compeft.encode(update, density=0.05, scope=scope, engine="torch"),
                               compeft.encode(update, density=0.05, scope=scope))
    ties = {"a": torch.tensor([1.0, -1.0, 1.0]), "b": torch.tensor([-1.0, 1.0])}
    decoded = compeft.decode(compeft.encode(ties, density=0.6, engine="torch"))
    assert (decoded["a"] != 0).tolist() == [True, True, True] and (decoded["b"] != 0).tolist() == [False, False]
    with pytest.raises(ValueError, match="NaN or Inf"):
        compeft.encode({"w": torch.tensor([1.0, math.inf])}, density=0.5, engine="torch")
    with pytest.raises(ValueError, match="engine"):
        compeft.encode({"w": torch.ones(3)}, density=0.5, engine="cupy")


# --- simulation: GPU fractions and Ray clusters --------------------------------------------------------------------

def test_client_gpus_reach_the_backend_config_and_default_the_device_to_cuda() -> None:
    config = backend_config(parallel=3, client_gpus=0.25)
    assert config["client_resources"] == {"num_cpus": 1, "num_gpus": 0.25}
    assert config["init_args"] == {"num_cpus": 3, "include_dashboard": False}
    assert backend_config(parallel=2)["client_resources"]["num_gpus"] == 0.0
    cluster = backend_config(parallel=3, client_gpus=1.0, ray_address="auto")
    assert cluster["init_args"] == {"address": "auto"}  # Ray refuses CPU counts when joining a cluster
    for bad in (-0.5, math.nan, 1.5):
        with pytest.raises(ValueError, match="client GPUs"):
            backend_config(parallel=1, client_gpus=bad)
    assert with_gpu_device({}, 0.5) == {"device": "cuda"}
    assert with_gpu_device({"device": "cuda:1"}, 0.5) == {"device": "cuda:1"}
    assert with_gpu_device({"num-clients": 2}, 0.0) == {"num-clients": 2}
    assert resolve(with_gpu_device({}, 0.25)).task.device == "cuda"
    args = build_parser().parse_args(["simulate", "--out", "x", "--client-gpus", "0.25", "--ray-address", "auto"])
    assert (args.client_gpus, args.ray_address) == (0.25, "auto")


@pytest.mark.skipif(CUDA, reason="checks the error of a machine without CUDA")
def test_client_gpus_without_cuda_fail_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="no CUDA GPU"):
        simulate({"preset": "encoder"}, out_dir=tmp_path, client_gpus=0.5)
    assert main(["simulate", "--preset", "encoder", "--out", str(tmp_path), "--client-gpus", "0.5"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


# --- on a CUDA GPU ------------------------------------------------------------------------------------------------

@needs_cuda
def test_cuda_task_trains_with_a_bf16_base_and_fp32_adapter() -> None:
    spec = _spec(device="cuda", precision="bf16")
    train, _ = load_splits(spec)
    task = build_task(spec, train)
    frozen = [p for p in task.model.parameters() if not p.requires_grad]
    trained = [p for p in task.model.parameters() if p.requires_grad]
    assert all(p.device.type == "cuda" for p in task.model.parameters())
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert trained and all(p.dtype == torch.float32 for p in trained)
    start = task.trainable_state()
    result = train_locally(task, train.dataset.select(range(64)), steps=4, batch_size=16, lr=3e-3, seed=0)
    assert result.steps == 4 and math.isfinite(result.train_loss)
    delta = task.trainable_delta(start, on_device=True)
    assert all(t.device.type == "cuda" and t.dtype == torch.float32 and bool(torch.isfinite(t).all())
               for t in delta.values())
    assert any(bool(t.abs().sum() > 0) for t in delta.values())
    cpu_delta = task.trainable_delta(start)
    assert all(torch.equal(cpu_delta[n], delta[n].cpu()) for n in delta)
    assert all(p.dtype == torch.bfloat16 for p in frozen) and all(p.dtype == torch.float32 for p in trained)


@needs_cuda
@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes")
def test_cuda_task_trains_on_a_4bit_base() -> None:
    spec = _spec(device="cuda", precision="bf16", quantization="4bit")
    train, _ = load_splits(spec)
    task = build_task(spec, train)
    assert any(type(m).__name__ == "Linear4bit" for m in task.model.modules())
    assert all(p.dtype == torch.float32 for p in task.model.parameters() if p.requires_grad)
    start = task.trainable_state()
    result = train_locally(task, train.dataset.select(range(32)), steps=2, batch_size=16, lr=3e-3, seed=0)
    assert math.isfinite(result.train_loss)
    assert any(bool(t.abs().sum() > 0) for t in task.trainable_delta(start).values())


def _cuda_update() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return {"layers.0.lora_A.weight": torch.randn(2_000_000, generator=generator) * 1e-3,
            "layers.0.lora_B.weight": torch.randn(512, 1024, generator=generator),
            "head.weight": torch.randn(6, 384, generator=generator).to(torch.bfloat16)}


@needs_cuda
def test_codecs_encode_on_cuda_as_on_cpu() -> None:
    update = _cuda_update()
    on_gpu = {n: t.cuda() for n, t in update.items()}
    for scope in ("global", "tensor"):
        _assert_same_selection(compeft.encode(on_gpu, density=0.05, scope=scope),
                               compeft.encode(update, density=0.05, scope=scope))
    for dtype in ("fp32", "bf16", "fp16"):
        assert dense.encode(on_gpu, dtype=dtype) == dense.encode(update, dtype=dtype)
    payload = ferret.encode(update, seed=2**40 + 3, dim=64, block_size=1 << 16)
    gpu_payload = ferret.encode(on_gpu, seed=2**40 + 3, dim=64, block_size=1 << 16)
    np.testing.assert_allclose(ferret.parse(gpu_payload).coefficients, ferret.parse(payload).coefficients,
                               rtol=1e-6, atol=1e-7)
    cpu_rebuilt = ferret.decode(payload, like=update)
    gpu_rebuilt = ferret.decode(payload, like=on_gpu)
    assert all(torch.equal(cpu_rebuilt[n], gpu_rebuilt[n].cpu()) for n in update)


@needs_cuda
def test_ferret_basis_is_bit_identical_on_cpu_and_cuda() -> None:
    for seed, block, directions, start, stop in ((0, 0, 1, 0, 65536), (7, 1, 64, 0, 65536),
                                                 (2**63 + 5, 2**33 + 1, 4096, 1_000, 1_500_000),
                                                 (2**64 - 1, 77, 2**20, 2**31 - 70_000, 2**31)):
        cpu = buckets_and_signs(seed, block, directions, start, stop)
        cuda = buckets_and_signs(seed, block, directions, start, stop, device="cuda")
        assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())

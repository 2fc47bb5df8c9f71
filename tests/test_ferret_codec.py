"""The ferret codec: coefficients on shared random directions; unbiased, linear, strict about what it accepts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protos.fedsqueeze.v1 import ferret_pb2, update_pb2
from strategies.codecs import UpdateRejected, ferret
from strategies.codecs.envelope import seal
from strategies.random_basis import BlockPlan


def _update(seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"layer.1.lora_B.weight": scale * torch.randn(40, 8, generator=generator),
            "layer.1.lora_A.weight": scale * torch.randn(8, 40, generator=generator),
            "head.bias": scale * torch.randn(7, generator=generator)}


def test_decode_gives_the_layout_back_and_the_payload_is_the_coefficients() -> None:
    update = _update()
    like = {name: torch.zeros_like(t, dtype=torch.bfloat16) for name, t in update.items()}
    payload = ferret.encode(update, seed=9, dim=16, block_size=128)
    rebuilt = ferret.decode(payload, like=like, expected_seed=9)
    assert list(rebuilt) == list(like)
    assert all(rebuilt[n].shape == like[n].shape and rebuilt[n].dtype == torch.bfloat16 for n in like)
    plan = BlockPlan(total=647, dim=16, block_size=128)
    assert 4 * plan.coefficients < len(payload) < 4 * plan.coefficients + 80
    parsed = ferret.parse(payload)
    assert parsed.seed == 9 and parsed.plan == plan and parsed.coefficients.dtype == np.float32


def test_the_same_seed_rebuilds_the_same_bits_in_any_tensor_order() -> None:
    update = _update()
    reordered = dict(reversed(list(update.items())))
    assert ferret.encode(update, seed=3, dim=8, block_size=64) == ferret.encode(reordered, seed=3, dim=8,
                                                                                   block_size=64)
    payload = ferret.encode(update, seed=3, dim=8, block_size=64)
    first, second = ferret.decode(payload, like=update), ferret.decode(payload, like=reordered)
    assert all(torch.equal(first[n], second[n]) for n in update)


def test_rebuild_is_unbiased_with_the_stated_variance() -> None:
    update = _update(1)
    dim, block_size, draws = 24, 96, 2000
    names = sorted(update)
    flat = torch.cat([update[n].reshape(-1) for n in names]).double()
    rebuilt = torch.stack([torch.cat([r[n].reshape(-1) for n in names]).double()
                           for r in (ferret.decode(ferret.encode(update, seed=s, dim=dim, block_size=block_size),
                                                   like=update) for s in range(draws))])
    # Stated variance (random_basis docstring): Var[rebuilt_i] = (1/K_b) * sum_{j != i in block} x_j^2.
    plan = BlockPlan(flat.numel(), dim, block_size)
    predicted = torch.empty_like(flat)
    for block in range(plan.blocks):
        part = slice(block * block_size, block * block_size + plan.block_length(block))
        predicted[part] = (flat[part].pow(2).sum() - flat[part].pow(2)) / plan.directions(block)
    z = (rebuilt.mean(0) - flat) / (predicted / draws).sqrt()
    # z ~ N(0, 1) per entry when unbiased: mean of z^2 ~ 1 (647 entries), no entry beyond 5 sd.
    assert 0.85 < float(z.pow(2).mean()) < 1.15
    assert float(z.abs().max()) < 5.0
    empirical = rebuilt.var(0)
    assert abs(float(empirical.sum() / predicted.sum()) - 1.0) < 0.05


def test_decode_of_combined_coefficients_equals_the_sum_of_decodes() -> None:
    updates = [_update(s) for s in range(3)]
    weights = [0.5, 0.25, 0.25]
    payloads = [ferret.encode(u, seed=77, dim=32, block_size=200, round_id=4) for u in updates]
    combined = ferret.combine(payloads, weights, round_id=4, expected_seed=77)
    rebuilt = ferret.decode(combined, like=updates[0], expected_round=4, expected_seed=77)
    decodes = [ferret.decode(p, like=updates[0]) for p in payloads]
    for name in rebuilt:
        expected = sum(w * d[name].double() for w, d in zip(weights, decodes, strict=True))
        torch.testing.assert_close(rebuilt[name].double(), expected, rtol=1e-6, atol=1e-6)
    # Two payloads with unit weights: exactly the fp32 sum, bit for bit.
    pair = ferret.decode(ferret.combine(payloads[:2]), like=updates[0])
    assert all(torch.equal(pair[n], decodes[0][n] + decodes[1][n]) for n in pair)


def test_projection_is_linear_in_the_update() -> None:
    a, b = _update(5), _update(6)
    total = {n: a[n] + b[n] for n in a}
    coefficients = [ferret.project(u, seed=1, dim=16, block_size=100) for u in (a, b, total)]
    np.testing.assert_allclose(coefficients[0] + coefficients[1], coefficients[2], rtol=1e-5, atol=1e-5)


def test_a_payload_with_another_seed_round_or_layout_is_rejected() -> None:
    update = _update()
    payload = ferret.encode(update, seed=5, dim=8, block_size=64, round_id=2)
    with pytest.raises(UpdateRejected, match="seed 5, but this round's seed is 6"):
        ferret.decode(payload, like=update, expected_seed=6)
    with pytest.raises(UpdateRejected, match="round 2"):
        ferret.decode(payload, like=update, expected_round=3)
    renamed = {("x" + n): t for n, t in update.items()}
    with pytest.raises(UpdateRejected, match="another tensor layout"):
        ferret.decode(payload, like=renamed)
    reshaped = dict(update, **{"head.bias": torch.zeros(1, 7)})
    with pytest.raises(UpdateRejected, match="another tensor layout"):
        ferret.decode(payload, like=reshaped)
    with pytest.raises(UpdateRejected, match="entries"):
        ferret.decode(payload, like=dict(update, extra=torch.zeros(3)))
    other_seed = ferret.encode(update, seed=6, dim=8, block_size=64)
    with pytest.raises(UpdateRejected, match="differ in seed"):
        ferret.combine([payload, other_seed])


def _forged(coefficients: bytes, plan: BlockPlan, layout: bytes, **header: int) -> bytes:
    fields = {"seed": 1, "dim": plan.dim, "block_size": plan.block_size, "entries": plan.total, **header}
    message = update_pb2.EncodedUpdate(format_version=1, codec="ferret", codec_version=1, codec_header=(
        ferret_pb2.FerretHeader(layout_sha256=layout, coefficients=coefficients, **fields).SerializeToString()))
    return seal(message)


def test_hostile_payloads_are_rejected_with_a_reason() -> None:
    update = _update()
    layout = ferret.layout_digest({n: t.shape for n, t in update.items()})
    plan = BlockPlan(647, 8, 64)
    good = np.ones(plan.coefficients, dtype="<f4")
    assert ferret.decode(_forged(good.tobytes(), plan, layout), like=update)
    nan = good.copy()
    nan[3] = np.nan
    cases = {
        "NaN or Inf": _forged(nan.tobytes(), plan, layout),
        "coefficient bytes": _forged(good[:-1].tobytes(), plan, layout),
        "exceeds block_size": _forged(good.tobytes(), plan, layout, dim=65),
        "positive integer": _forged(good.tobytes(), plan, layout, dim=0),
        "covers 648 entries": _forged(good.tobytes(), plan, layout, entries=648),
    }
    for message, payload in cases.items():
        with pytest.raises(UpdateRejected, match=message):
            ferret.decode(payload, like=update)
    with pytest.raises(UpdateRejected, match=r"expected \d+ \(4611686018427387904 fp32\)"):  # counted, not enumerated
        ferret.parse(_forged(good.tobytes(), plan, layout, entries=2**62, block_size=4, dim=4))
    payload = ferret.encode(update, seed=1, dim=8, block_size=64)
    with pytest.raises(UpdateRejected, match=r"truncated|checksum"):
        ferret.decode(payload[:-9], like=update)
    corrupted = bytearray(payload)
    corrupted[len(payload) // 2] ^= 0x10
    with pytest.raises(UpdateRejected, match="corrupted"):
        ferret.decode(bytes(corrupted), like=update)
    with pytest.raises(UpdateRejected, match="exceeds the limit"):
        ferret.decode(payload, like=update, max_bytes=100)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dim": 0, "block_size": 64}, "dim"),
    ({"dim": 128, "block_size": 64}, "exceeds block_size"),
    ({"dim": 8, "block_size": 64, "seed": -3}, "seed"),
])
def test_bad_options_are_clear_errors(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ferret.encode(_update(), **{"seed": 1, **kwargs})


def test_bad_updates_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        ferret.encode({"w": torch.tensor([1.0, math.inf])}, seed=1, dim=1, block_size=2)
    with pytest.raises(ValueError, match="no tensors"):
        ferret.encode({}, seed=1, dim=1, block_size=2)
    with pytest.raises(ValueError, match="dtype"):
        ferret.encode({"w": torch.ones(3, dtype=torch.int64)}, seed=1, dim=1, block_size=2)


def test_tiny_and_single_block_updates_work() -> None:
    single = {"w": torch.tensor([2.5])}
    rebuilt = ferret.decode(ferret.encode(single, seed=0, dim=1, block_size=1), like=single)
    assert torch.equal(rebuilt["w"], single["w"])  # one entry, one direction: exact
    update = _update()
    payload = ferret.encode(update, seed=0, dim=647, block_size=647)
    assert ferret.parse(payload).plan.coefficients == 647


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rebuilds_the_same_bits_as_cpu() -> None:
    update = {"w": torch.randn(3_000_000), "v": torch.randn(1000, 70)}
    payload = ferret.encode(update, seed=2**40 + 1, dim=4096, block_size=1 << 18)
    cpu = ferret.decode(payload, like=update)
    cuda = ferret.decode(payload, like={n: t.cuda() for n, t in update.items()})
    assert all(torch.equal(cpu[n], cuda[n].cpu()) for n in update)
    on_gpu = ferret.parse(ferret.encode({n: t.cuda() for n, t in update.items()}, seed=2**40 + 1, dim=4096,
                                        block_size=1 << 18)).coefficients
    np.testing.assert_allclose(on_gpu, ferret.parse(payload).coefficients, rtol=1e-6, atol=1e-6)

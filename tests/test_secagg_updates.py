"""Secure aggregation of real updates (dense, Ferret coefficients, ComPEFT on a shared support), and DP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from strategies.codecs import ferret
from strategies.codecs.compeft.secure import choose_support, support_from_bytes, support_to_bytes
from strategies.codecs.ferret.secure import mean_coefficients
from strategies.codecs.registry import codec_settings
from strategies.privacy import DPSettings, PrivacyLedger, privatize, summed_noise_multiplier
from strategies.secagg import common
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import SecureEncoding, encode_input, flatten, mean_update
from tests.secagg_harness import Dropouts, plain_sum, run_round

LAYOUT = {"layer.0.lora_A.weight": (4, 48), "layer.0.lora_B.weight": (48, 4), "head.weight": (3, 17)}


def _updates(parties: list[int], seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {p: {name: torch.randn(shape, generator=generator) * 0.004 for name, shape in LAYOUT.items()}
            for p in parties}


def _encoding(codec: str, parties: int, support: np.ndarray | None = None) -> SecureEncoding:
    options = {"ferret": {"dim": 16, "block_size": 128}}.get(codec, {})
    return SecureEncoding(settings=codec_settings(codec, **options), quantizer=Quantizer(0.02, 16), parties=parties,
                          layout=dict(LAYOUT), seed=12345, support=support)


def _secure_sum(encoding: SecureEncoding, updates: dict[int, dict[str, torch.Tensor]], drops: Dropouts | None = None
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    parties = sorted(updates)
    rng = np.random.default_rng(0)
    inputs = {p: encode_input(encoding, updates[p], rng).words for p in parties}
    setup = common.make_setup(9, parties, encoding.segments())
    sums, aggregator, _ = run_round(setup, inputs, drops)
    return sums, plain_sum(inputs, aggregator.survivors, encoding.segments()), aggregator.survivors


@pytest.mark.parametrize("codec", ["dense", "ferret", "compeft"])
def test_secure_sum_of_100_clients_equals_the_plaintext_sum_of_their_quantised_updates(codec: str) -> None:
    parties = list(range(1, 101))
    updates = _updates(parties)
    entries = sum(math.prod(s) for s in LAYOUT.values())
    support = choose_support(None, 0.1, entries, b"round-9") if codec == "compeft" else None
    encoding = _encoding(codec, len(parties), support)
    drops = Dropouts(before_masked={3, 50}, before_unmask={7})
    sums, plain, survivors = _secure_sum(encoding, updates, drops)
    assert len(survivors) == 98
    for got, want in zip(sums, plain, strict=True):
        assert np.array_equal(got, want)  # integer equality, dropouts included
    stacked = np.stack([flatten(updates[p], LAYOUT) for p in survivors])
    if codec == "dense":
        mean = flatten(mean_update(encoding, sums, len(survivors)), LAYOUT)
        assert np.abs(mean - stacked.mean(axis=0)).max() <= encoding.quantizer.step
    elif codec == "ferret":
        payload = mean_coefficients(encoding, sums, len(survivors), round_id=9)
        plain_payloads = [ferret.encode(updates[p], seed=12345, dim=16, block_size=128) for p in survivors]
        want = ferret.parse(ferret.combine(plain_payloads, [1 / len(survivors)] * len(survivors))).coefficients
        got = ferret.parse(payload).coefficients
        assert np.abs(got - want).max() <= encoding.value_quantizer().step
    else:
        mean = flatten(mean_update(encoding, sums, len(survivors)), LAYOUT)
        outside = np.setdiff1d(np.arange(entries), support)
        assert not mean[outside].any()
        votes = np.sign(stacked[:, support]).mean(axis=0)
        alphas = stacked.std(axis=1, ddof=1).mean()
        assert np.allclose(mean[support], alphas * votes, atol=2 * encoding.quantizer.step)


def test_compeft_support_is_public_and_coded_compactly() -> None:
    entries = 10_000
    previous = np.random.default_rng(1).normal(size=entries).astype(np.float32)
    support = choose_support(previous, 0.05, entries, b"r")
    assert support.size == 500 and np.all(np.abs(previous[support]).min() >= np.sort(np.abs(previous))[-500])
    data = support_to_bytes(support, entries)
    assert np.array_equal(support_from_bytes(data, entries), support)
    assert len(data) < 0.4 * entries / 8  # about H(0.05) bits per entry, not a bitmap
    first = choose_support(None, 0.05, entries, b"r")
    assert np.array_equal(first, choose_support(None, 0.05, entries, b"r")) and first.size == 500


def test_clipping_and_quantisation_are_reported_and_unbiased() -> None:
    quantizer = Quantizer(0.01, 8)
    rng = np.random.default_rng(0)
    values = np.full(200_000, 0.00123)
    words, clipped = quantizer.quantize(values, rng)
    assert clipped == 0
    estimate = quantizer.dequantize_sum(words.astype(np.uint64), 1)
    assert abs(estimate.mean() - 0.00123) < quantizer.step / 50  # stochastic rounding is unbiased
    _, clipped = quantizer.quantize(np.array([0.5, -0.5, 0.0]), rng)
    assert clipped == 2
    with pytest.raises(ValueError, match="NaN"):
        quantizer.quantize(np.array([np.nan]), rng)


def test_dp_clips_to_the_bound_and_adds_noise_of_the_stated_scale() -> None:
    update = {"w": torch.ones(100_000) * 0.1}  # norm 31.6
    settings = DPSettings(noise_multiplier=0.5, clip=1.0)
    noisy, norm = privatize(update, settings, clients_per_round=4, secure=True,
                            generator=torch.Generator().manual_seed(0))
    assert norm == pytest.approx(math.sqrt(100_000) * 0.1, rel=1e-5)
    clipped_part = torch.ones(100_000) * 0.1 * (1.0 / norm)
    noise = noisy["w"].double() - clipped_part.double()
    assert float(noise.std()) == pytest.approx(0.5 * 1.0 / 2, rel=0.02)  # z*C/sqrt(m): the sum carries z*C
    local, _ = privatize(update, settings, clients_per_round=4, secure=False,
                         generator=torch.Generator().manual_seed(0))
    assert float((local["w"].double() - clipped_part.double()).std()) == pytest.approx(0.5, rel=0.02)
    with pytest.raises(ValueError, match="dp-clip"):
        DPSettings(noise_multiplier=1.0, clip=0.0)


def test_ledger_reports_opacus_rdp_epsilon() -> None:
    ledger = PrivacyLedger(DPSettings(noise_multiplier=1.1, clip=1.0), sample_rate=0.5, delta=1e-5)
    epsilons = [ledger.step() for _ in range(3)]
    reference = RDPAccountant()
    for _ in range(3):
        reference.step(noise_multiplier=1.1, sample_rate=0.5)
    assert epsilons[-1] == pytest.approx(reference.get_epsilon(delta=1e-5))
    assert epsilons[0] < epsilons[1] < epsilons[2]


def test_epsilon_under_dropouts_counts_only_the_noise_the_survivors_summed() -> None:
    """8 of 10 sampled clients survive: their sum carries z*sqrt(8/10) times the clip, and epsilon is Opacus's for
    that multiplier, larger than the one the configured z would claim."""
    settings = DPSettings(noise_multiplier=1.0, clip=1.0)
    survivors = [10, 8, 6]
    ledger = PrivacyLedger(settings, sample_rate=0.5, delta=1e-5)
    for summed in survivors:
        ledger.step(summed_noise_multiplier(settings, sampled=10, summed=summed, secure=True))
    honest, claimed = RDPAccountant(), RDPAccountant()
    for summed in survivors:
        honest.step(noise_multiplier=math.sqrt(summed / 10), sample_rate=0.5)
        claimed.step(noise_multiplier=1.0, sample_rate=0.5)
    assert ledger.epsilon() == pytest.approx(honest.get_epsilon(delta=1e-5))
    assert ledger.epsilon() > claimed.get_epsilon(delta=1e-5) * 1.05
    assert ledger.multipliers == pytest.approx([1.0, math.sqrt(0.8), math.sqrt(0.6)])
    # Local DP: every client added the full noise, so dropouts change nothing.
    assert summed_noise_multiplier(settings, sampled=10, summed=6, secure=False) == 1.0
    with pytest.raises(ValueError, match="summed clients"):
        summed_noise_multiplier(settings, sampled=10, summed=11, secure=True)

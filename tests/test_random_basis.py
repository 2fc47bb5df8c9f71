"""The shared random basis: deterministic, block-order independent, device independent, uniform and balanced."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from strategies.random_basis import BlockPlan, _mix32, _mix32_tensor, block_keys, buckets_and_signs

MAX_U32 = (1 << 32) - 1


def test_vectorised_hash_matches_the_scalar_definition() -> None:
    values = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, MAX_U32]
    hashed = _mix32_tensor(torch.tensor(values, dtype=torch.int64)).tolist()
    assert hashed == [_mix32(v) for v in values]
    assert all(0 <= h <= MAX_U32 for h in hashed)


def test_known_answers_pin_the_generator() -> None:
    # If these change, every deployed party would draw other directions: bump the ferret codec version.
    bucket, negative = buckets_and_signs(seed=42, block=3, directions=1000, start=0, stop=6)
    assert bucket.tolist() == KNOWN_BUCKETS
    assert negative.tolist() == KNOWN_SIGNS
    index_key, draw_key = block_keys(42, 3)
    hashed = [_mix32(_mix32(i ^ index_key) ^ draw_key) for i in range(6)]
    assert [((h >> 1) * 1000) >> 31 for h in hashed] == KNOWN_BUCKETS
    assert [bool(h & 1) for h in hashed] == KNOWN_SIGNS


def test_same_arguments_same_draws_and_seeds_or_blocks_change_them() -> None:
    first = buckets_and_signs(7, 0, 512, 0, 10_000)
    again = buckets_and_signs(7, 0, 512, 0, 10_000)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for other in (buckets_and_signs(8, 0, 512, 0, 10_000), buckets_and_signs(7, 1, 512, 0, 10_000),
                  buckets_and_signs(2**63 + 7, 0, 512, 0, 10_000)):
        assert (other[0] != first[0]).float().mean() > 0.99
        assert 0.4 < (other[1] != first[1]).float().mean() < 0.6


def test_any_range_or_block_order_gives_the_same_entries() -> None:
    whole_bucket, whole_negative = buckets_and_signs(11, 5, 300, 0, 50_000)
    cuts = [0, 1, 777, 20_000, 20_001, 50_000]
    pieces = [buckets_and_signs(11, 5, 300, a, b) for a, b in reversed(list(itertools.pairwise(cuts)))]
    assert torch.equal(torch.cat([p[0] for p in reversed(pieces)]), whole_bucket)
    assert torch.equal(torch.cat([p[1] for p in reversed(pieces)]), whole_negative)
    # Block 5 drawn after block 9, or alone, is the same block 5.
    buckets_and_signs(11, 9, 300, 0, 1000)
    assert torch.equal(buckets_and_signs(11, 5, 300, 0, 50_000)[0], whole_bucket)


def test_buckets_are_uniform_and_signs_balanced() -> None:
    directions, entries = 64, 640_000
    bucket, negative = buckets_and_signs(3, 0, directions, 0, entries)
    assert int(bucket.min()) == 0 and int(bucket.max()) == directions - 1
    counts = torch.bincount(bucket, minlength=directions).double()
    expected = entries / directions
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < directions + 6 * math.sqrt(2 * directions)  # ~ chi2(63): mean 63, sd 11
    assert abs(negative.double().mean().item() - 0.5) < 5 * 0.5 / math.sqrt(entries)
    # Sign and bucket are not correlated: each bucket is about half negative.
    negatives = torch.bincount(bucket[negative], minlength=directions).double()
    assert float((negatives / counts - 0.5).abs().max()) < 6 * 0.5 / math.sqrt(expected)


def test_block_keys_differ_for_nearby_seeds_and_blocks() -> None:
    keys = {block_keys(seed, block) for seed in range(50) for block in range(50)}
    assert len(keys) == 2500


def test_plan_cuts_blocks_and_directions() -> None:
    plan = BlockPlan(total=10_500, dim=100, block_size=4000)
    assert plan.blocks == 3
    assert [plan.block_length(b) for b in range(3)] == [4000, 4000, 2500]
    assert [plan.directions(b) for b in range(3)] == [100, 100, 63]
    assert plan.offsets() == [0, 100, 200, 263] and plan.coefficients == 263
    huge = BlockPlan(total=2**62 + 5, dim=3, block_size=7)  # a hostile header: counted, not enumerated
    assert huge.coefficients == (2**62 + 5) // 7 * 3 + 1  # last block: 2 entries, ceil(3 * 2 / 7) = 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"total": 10, "dim": 0, "block_size": 4}, "dim"),
    ({"total": 10, "dim": 8, "block_size": 4}, "exceeds block_size"),
    ({"total": 0, "dim": 1, "block_size": 4}, "total"),
    ({"total": 10, "dim": 1, "block_size": 2**31 + 1}, "block_size"),
])
def test_plan_rejects_bad_sizes(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BlockPlan(**kwargs)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True])
def test_bad_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        block_keys(seed, 0)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_draws_equal_cpu_draws() -> None:
    for seed, block, directions in ((0, 0, 1), (42, 3, 1000), (2**64 - 1, 123_456, 2**20)):
        cpu = buckets_and_signs(seed, block, directions, 5, 1_000_005)
        cuda = buckets_and_signs(seed, block, directions, 5, 1_000_005, device="cuda")
        assert torch.equal(cpu[0], cuda[0].cpu()) and torch.equal(cpu[1], cuda[1].cpu())


KNOWN_BUCKETS = [350, 597, 793, 926, 548, 206]
KNOWN_SIGNS = [True, False, True, False, False, False]

"""Shared random bases that every party regenerates bit for bit, on any device, one block at a time.

A Ferret-style codec projects an update of ``d`` entries onto random directions that nobody sends: each party
regenerates them from a shared seed. The update is cut into blocks of ``block_size`` entries; block ``b`` has
``K_b`` directions (``dim`` for a full block, proportionally fewer for the last, shorter one). The basis is a
*sparse Rademacher* one (a count sketch): entry ``i`` of block ``b`` belongs to exactly one direction
``bucket(i)`` with sign ``sign(i) = ±1``, both drawn by hashing ``(seed, b, i)``. So

    coefficient_k = sum over i with bucket(i) = k of sign(i) * x_i        (projection, K_b numbers per block)
    rebuilt_i     = sign(i) * coefficient_bucket(i)                        (reconstruction)

**Unbiased**: ``E[rebuilt_i] = x_i``, because ``E[sign(i) sign(j)] = 0`` for ``i != j``; no server learning-rate
fudge is needed. **Variance**: ``Var[rebuilt_i] = (1/K_b) * sum over j != i in the block of x_j**2``, so the
expected squared error of a block is ``(n_b - 1) / K_b * ||x_block||**2``. That is exactly the variance of a dense
Rademacher projection with ``K_b`` directions normalised by ``1/K_b`` (a dense Gaussian one is a little worse,
``(||x||**2 + x_i**2) / K_b``), but projecting and rebuilding cost O(d) instead of O(d * K_b), and nothing of size
``d x K`` ever exists.

**Device independence**: the hash is integer arithmetic on values below 2**32 held in int64 (32-bit products are
split into 16-bit halves so nothing overflows), which is exact on every device; the rebuilt entry is one
correctly-rounded product. So CPU and CUDA draw identical buckets and signs and rebuild identical bits, in any
block order. (Gaussian directions would need transcendental functions whose last bits differ between devices.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
_MIX_1, _MIX_2 = 0x85EBCA6B, 0xC2B2AE35  # murmur3's fmix32 constants
_GOLDEN = 0x9E3779B9
MAX_BLOCK_SIZE = 1 << 31
MAX_SEED = (1 << 64) - 1


def _mix32(value: int) -> int:
    """murmur3's fmix32 on one Python int: a bijection of [0, 2**32) with full avalanche."""
    value ^= value >> 16
    value = (value * _MIX_1) & _MASK32
    value ^= value >> 13
    value = (value * _MIX_2) & _MASK32
    return value ^ (value >> 16)


def _mul32(values: torch.Tensor, constant: int) -> torch.Tensor:
    """``values * constant mod 2**32`` for int64 ``values`` in [0, 2**32), without any int64 overflow.

    Overwrites ``values`` (callers pass temporaries).
    """
    high = values * (constant >> 16)
    high.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    values.mul_(constant & 0xFFFF).add_(high)
    return values.bitwise_and_(_MASK32)


def _mix32_tensor(values: torch.Tensor) -> torch.Tensor:
    """fmix32 on an int64 tensor of values in [0, 2**32); bit-identical to ``_mix32`` on every device."""
    values = values ^ (values >> 16)
    values = _mul32(values, _MIX_1)
    values.bitwise_xor_(values >> 13)
    values = _mul32(values, _MIX_2)
    return values.bitwise_xor_(values >> 16)


def check_seed(seed: int) -> None:
    """Raise ValueError unless ``seed`` is an int in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")


def block_keys(seed: int, block: int) -> tuple[int, int]:
    """The two 32-bit keys of ``block`` under ``seed`` (one for the index hash, one for bucket and sign)."""
    check_seed(seed)
    base = _mix32(_mix32((seed & _MASK32) ^ _GOLDEN) ^ (seed >> 32))
    first = _mix32(base ^ _mix32((block & _MASK32) + 1) ^ (block >> 32))
    return first, _mix32(first ^ _GOLDEN)


@dataclass(frozen=True)
class BlockPlan:
    """How an update of ``total`` entries is cut: blocks of ``block_size`` and the directions of each block."""

    total: int
    dim: int
    block_size: int

    def __post_init__(self) -> None:
        for name, value in (("dim", self.dim), ("block_size", self.block_size), ("total", self.total)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.block_size > MAX_BLOCK_SIZE:
            raise ValueError(f"block_size {self.block_size} exceeds {MAX_BLOCK_SIZE}")
        if self.dim > self.block_size:
            raise ValueError(f"dim {self.dim} exceeds block_size {self.block_size}: nothing would be compressed")

    @property
    def blocks(self) -> int:
        """Number of blocks (the last may be shorter)."""
        return -(-self.total // self.block_size)

    def block_length(self, block: int) -> int:
        """Entries in ``block``."""
        return min(self.block_size, self.total - block * self.block_size)

    def directions(self, block: int) -> int:
        """Directions of ``block``: ``dim`` for a full block, ``ceil(dim * length / block_size)`` for a short one."""
        return -(-self.dim * self.block_length(block) // self.block_size)

    def offsets(self) -> list[int]:
        """Where each block's coefficients start in the flat coefficient vector, plus the total at the end."""
        starts = [0]
        for block in range(self.blocks):
            starts.append(starts[-1] + self.directions(block))
        return starts

    @property
    def coefficients(self) -> int:
        """Length of the coefficient vector (closed form, so a hostile header cannot make it loop)."""
        full_blocks, rest = divmod(self.total, self.block_size)
        return full_blocks * self.dim + -(-self.dim * rest // self.block_size)


def buckets_and_signs(seed: int, block: int, directions: int, start: int, stop: int,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """For entries ``start..stop-1`` of ``block``: their direction (int64 in [0, directions)) and whether their
    sign is negative (bool). Depends only on the arguments, not on the device or on other blocks.
    """
    if not 0 <= start <= stop <= MAX_BLOCK_SIZE:
        raise ValueError(f"entry range [{start}, {stop}) is outside a block")
    index_key, draw_key = block_keys(seed, block)
    index = torch.arange(start, stop, dtype=torch.int64, device=device)
    hashed = _mix32_tensor(_mix32_tensor(index.bitwise_xor_(index_key)).bitwise_xor_(draw_key))
    negative = (hashed & 1).bool()
    # Lemire's multiply-shift: the top 31 bits, scaled to [0, directions) (uniform up to 2**-31).
    bucket = hashed.bitwise_right_shift_(1).mul_(directions).bitwise_right_shift_(31)
    return bucket, negative

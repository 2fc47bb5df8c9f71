"""Shamir secret sharing of short byte strings over the prime field of the Mersenne prime 2^521 - 1."""

from __future__ import annotations

import secrets

from strategies.secagg.errors import SecAggError

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # 521 bits
MAX_SECRET_BYTES = 64


def split(secret: bytes, xs: list[int], threshold: int) -> list[bytes]:
    """One share of ``secret`` for each x in ``xs`` (distinct, non-zero); any ``threshold`` of them rebuild it."""
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"a secret may hold at most {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and the number of shares {len(xs)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share x-coordinates must be distinct and non-zero")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares.append(y.to_bytes(SHARE_BYTES, "big"))
    return shares


def combine(points: list[tuple[int, bytes]], length: int) -> bytes:
    """The secret of ``length`` bytes from ``(x, share)`` points (at least the threshold many), by Lagrange at 0."""
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share x-coordinates must be distinct and non-zero")
    ys = []
    for _, share in points:
        if len(share) != SHARE_BYTES:
            raise SecAggError(f"a share has {len(share)} bytes, expected {SHARE_BYTES}")
        y = int.from_bytes(share, "big")
        if y >= PRIME:
            raise SecAggError("a share lies outside the field")
        ys.append(y)
    secret = 0
    for i, (x_i, y_i) in enumerate(zip(xs, ys, strict=True)):
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        secret = (secret + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * length):
        raise SecAggError("the shares do not rebuild a secret of the expected length (inconsistent shares)")
    return secret.to_bytes(length, "big")

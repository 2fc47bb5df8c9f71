"""Mask words from a 32-byte seed: the AES-256-CTR keystream of a key derived from the seed and a label."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 32
_ZERO_NONCE = bytes(16)


def derive(secret: bytes, info: bytes, length: int = SEED_BYTES) -> bytes:
    """HKDF-SHA256 of ``secret`` for the purpose named by ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def mask_words(seed: bytes, label: bytes, count: int, bits: int) -> np.ndarray:
    """``count`` uniform words in [0, 2^bits) (uint32 up to 32 bits, else uint64), from the keystream keyed by
    ``derive(seed, label)``.

    Every key is used for one stream only (the label names the round, pair or segment), so a zero nonce is safe.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed has {SEED_BYTES} bytes, got {len(seed)}")
    if not 1 <= bits <= 64:
        raise ValueError(f"ring bits must be in 1..64, got {bits}")
    width = 4 if bits <= 32 else 8
    key = derive(seed, b"fedsqueeze/secagg/v1/prg/" + label)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_NONCE)).encryptor()
    stream = encryptor.update(bytes(count * width))
    words = np.frombuffer(stream, dtype="<u4" if width == 4 else "<u8")
    if bits in (32, 64):
        return words.astype(words.dtype.newbyteorder("="))
    return words & words.dtype.type((1 << bits) - 1)

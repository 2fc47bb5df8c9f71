"""The dense codec as the system sees it: every entry, fp32/bf16/fp16 (the baseline); under secure aggregation
its entries are clipped, quantised and summed (``secure.py``)."""

from __future__ import annotations

import numpy as np

from strategies.codecs.base import Codec, CodecOptions, TensorAggregate, Tensors
from strategies.codecs.dense import secure, wire
from strategies.codecs.dense.options import DenseOptions
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Layout
from strategies.secagg.updates import PartyInput, SecureEncoding


class DenseCodec(Codec):
    """Every entry of every tensor; clients receive the full state each round."""

    name = "dense"
    options_type = DenseOptions
    keeps_state_on_clients = False

    def encode(self, update: Tensors, options: CodecOptions, *, round_id: int, seed: int | None = None) -> bytes:
        """Serialise every entry in the options' wire dtype."""
        assert isinstance(options, DenseOptions)
        return wire.encode(update, dtype=options.dtype, round_id=round_id)

    def decode(self, payload: bytes, *, expected_round: int | None, expected_layout: Layout | None,
               max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, expected_seed: int | None = None) -> Tensors:
        """fp32 tensors of a dense payload."""
        return wire.decode(payload, expected_round=expected_round, expected_layout=expected_layout,
                            max_bytes=max_bytes)

    def lossy(self, options: CodecOptions) -> bool:
        """Lossy only below fp32."""
        assert isinstance(options, DenseOptions)
        return options.dtype != "fp32"

    def check_secure(self, options: CodecOptions, shared_support: bool) -> None:
        """Secure aggregation quantises fp32 entries into the ring itself."""
        assert isinstance(options, DenseOptions)
        if options.dtype != "fp32":
            raise ValueError("with secagg=true updates are quantised into the ring: leave dense-dtype at fp32")

    def secure_segments(self, encoding: SecureEncoding) -> list[tuple[int, int]]:
        """One word per entry."""
        return secure.segments(encoding)

    def secure_input(self, encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
        """The clipped, quantised entries."""
        return secure.party_input(encoding, flat, rng)

    def secure_mean(self, encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int
                    ) -> TensorAggregate:
        """The survivors' mean delta."""
        return TensorAggregate(secure.mean(encoding, sums, survivors))


DENSE = DenseCodec()

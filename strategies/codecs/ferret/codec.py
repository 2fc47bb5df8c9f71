"""The Ferret codec as the system sees it: coefficients on shared random directions, which aggregate linearly;
under secure aggregation the coefficients are what is summed (``secure.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from strategies.codecs.base import Codec, CodecOptions, PayloadAggregate, Rule, Tensors
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Layout
from strategies.codecs.ferret import secure, wire
from strategies.codecs.ferret.options import FerretOptions
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import PartyInput, SecureEncoding


class FerretCodec(Codec):
    """The update's projection on the round's shared random directions; the aggregate is again coefficients,
    so clients and coordinator apply the same payloads."""

    name = "ferret"
    options_type = FerretOptions
    needs_round_seed = True
    aggregate_is_payload = True
    streams = False  # payloads are a few hundred bytes: held and combined at the end of the round

    def encode(self, update: Tensors, options: CodecOptions, *, round_id: int, seed: int | None = None) -> bytes:
        """Project on the directions of ``seed`` (the round's shared seed)."""
        assert isinstance(options, FerretOptions)
        if seed is None:
            raise ValueError("the ferret codec needs the round's seed")
        return wire.encode(update, seed=seed, dim=options.dim, block_size=options.block_size, round_id=round_id)

    def decode(self, payload: bytes, *, expected_round: int | None, expected_layout: Layout | None,
               max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, expected_seed: int | None = None) -> Tensors:
        """The fp32 update the coefficients stand for, shaped as ``expected_layout``."""
        if expected_layout is None:
            raise ValueError("decoding a ferret payload needs the layout it was projected from")
        like = {name: torch.empty(tuple(shape)) for name, shape in expected_layout.items()}
        return wire.decode(payload, like=like, expected_seed=expected_seed, expected_round=expected_round,
                             max_bytes=max_bytes)

    def feedback_helps(self, options: CodecOptions) -> bool:
        """No: the reconstruction is unbiased and its error is fresh random-direction noise each round."""
        return False

    def accept(self, payload: bytes, *, round_id: int, layout: Layout, max_bytes: int, seed: int | None) -> bytes:
        """Check the payload (round, seed, layout, sizes, finite coefficients) and keep it as coefficients."""
        wire.parse(payload, expected_seed=seed, expected_round=round_id, expected_layout=layout,
                     max_bytes=max_bytes)
        return payload

    def norm(self, contribution: Any) -> float:
        """L2 norm of the coefficient vector."""
        return float(np.linalg.norm(wire.parse(contribution).coefficients.astype(np.float64)))

    def nbytes(self, contribution: Any) -> int:
        """The payload's length."""
        return len(contribution)

    def aggregate(self, contributions: Sequence[Any], weights: Sequence[float], rule: Rule, *, plain_mean: bool,
                  round_id: int) -> PayloadAggregate:
        """FedAvg combines the coefficients; a robust rule runs on them (they share one basis), so the result is
        again a payload."""
        if plain_mean:
            total = float(sum(weights))
            return PayloadAggregate(wire.combine(contributions, [w / total for w in weights], round_id=round_id))
        parsed = wire.parse_same_basis(contributions)
        first = parsed[0]
        coefficients = [{"coefficients": torch.from_numpy(p.coefficients.copy())} for p in parsed]
        mean = rule(coefficients, list(weights))
        return PayloadAggregate(wire.pack(mean["coefficients"].numpy(), seed=first.seed, plan=first.plan,
                                            layout_sha256=first.layout_sha256, round_id=round_id))

    def check_downlink(self, downlink: Codec) -> None:
        """The downlink is the aggregated coefficients themselves (or the dense state)."""
        if downlink is not self and downlink.keeps_state_on_clients:
            raise ValueError(f"with codec '{self.name}' the downlink is the aggregated coefficients: leave "
                             f"downlink-codec at 'dense' (or '{self.name}'), not '{downlink.name}'")

    def map_values(self, payload: bytes, options: CodecOptions, change: Callable[[torch.Tensor], torch.Tensor], *,
                   round_id: int) -> bytes:
        """Rewrite the coefficients (the values this codec sends) and pack them on the same basis."""
        parsed = wire.parse(payload)
        changed = change(torch.from_numpy(parsed.coefficients.copy())).numpy()
        return wire.pack(np.asarray(changed, dtype=np.float32), seed=parsed.seed, plan=parsed.plan,
                           layout_sha256=parsed.layout_sha256, round_id=parsed.round_id)

    def secure_value_quantizer(self, encoding: SecureEncoding) -> Quantizer:
        """Coefficients add up ``block/dim`` entries each: their range is scaled to match."""
        return secure.value_quantizer(encoding)

    def secure_segments(self, encoding: SecureEncoding) -> list[tuple[int, int]]:
        """One word per coefficient."""
        return secure.segments(encoding)

    def secure_input(self, encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
        """The party's quantised coefficients."""
        return secure.party_input(encoding, flat, rng)

    def secure_mean(self, encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int
                    ) -> PayloadAggregate:
        """The survivors' mean coefficients as a payload every party applies."""
        return PayloadAggregate(secure.mean_coefficients(encoding, sums, survivors, round_id))


FERRET = FerretCodec()

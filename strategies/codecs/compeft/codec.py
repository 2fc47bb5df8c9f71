"""The ComPEFT codec as the system sees it: top-k magnitudes as ``alpha * sign``, positions entropy-coded; under
secure aggregation, signs on a support the coordinator shares (``secure.py``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from strategies.codecs import sparse
from strategies.codecs.base import Codec, CodecOptions, TensorAggregate, Tensors
from strategies.codecs.compeft import secure, wire
from strategies.codecs.compeft.options import CompeftOptions
from strategies.codecs.envelope import DEFAULT_MAX_PAYLOAD_BYTES, Layout
from strategies.codecs.sparse import SparseUpdate
from strategies.norms import l2_norm
from strategies.secagg.updates import PartyInput, SecureEncoding, flatten


class CompeftCodec(Codec):
    """Sparse ternary updates; error feedback carries what top-k left out."""

    name = "compeft"
    options_type = CompeftOptions
    ternary = True

    def encode(self, update: Tensors, options: CodecOptions, *, round_id: int, seed: int | None = None) -> bytes:
        """Keep the top ``density`` magnitudes as ``alpha * sign``."""
        assert isinstance(options, CompeftOptions)
        return wire.encode(update, density=options.density, alpha_scale=options.alpha_scale, scope=options.scope,
                              round_id=round_id)

    def decode(self, payload: bytes, *, expected_round: int | None, expected_layout: Layout | None,
               max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, expected_seed: int | None = None) -> Tensors:
        """fp32 sparse ternary tensors (zeros where nothing was kept)."""
        decoded = wire.decode(payload, expected_round=expected_round, expected_layout=expected_layout,
                                 max_bytes=max_bytes)
        return {name: tensor.to(torch.float32) for name, tensor in decoded.items()}

    def accept(self, payload: bytes, *, round_id: int, layout: Layout, max_bytes: int, seed: int | None
               ) -> SparseUpdate:
        """The checked payload's kept entries as fp32 positions and values (``decode`` checks, sparse form): the
        coordinator folds them into its running sum without building a dense tensor per client."""
        return wire.decode_sparse(payload, expected_round=round_id, expected_layout=layout, max_bytes=max_bytes,
                                     dtype=torch.float32)

    def norm(self, contribution: SparseUpdate) -> float:
        """L2 norm of the kept entries."""
        return l2_norm({name: kept.values for name, kept in contribution.items()})  # zeros add nothing

    def nbytes(self, contribution: SparseUpdate) -> int:
        """Memory the kept positions and values hold."""
        return sum(t.nbytes() for t in contribution.values())

    def dense(self, contribution: SparseUpdate) -> Tensors:
        """The contribution as dense tensors."""
        return sparse.densify(contribution)

    def check_secure(self, options: CodecOptions, shared_support: bool) -> None:
        """Only the shared-support mode hides each party's kept positions."""
        if not shared_support:
            raise ValueError("codec=compeft with secagg=true needs compeft-support=shared: with per-client supports "
                             "the coordinator would see every client's kept positions")

    def secure_segments(self, encoding: SecureEncoding) -> list[tuple[int, int]]:
        """A vote word per support entry and one alpha word."""
        return secure.segments(encoding)

    def secure_input(self, encoding: SecureEncoding, flat: np.ndarray, rng: np.random.Generator) -> PartyInput:
        """The party's signs on the shared support and its quantised alpha."""
        return secure.party_input(encoding, flat, rng)

    def secure_mean(self, encoding: SecureEncoding, sums: list[np.ndarray], survivors: int, round_id: int
                    ) -> TensorAggregate:
        """``mean alpha * mean sign`` on the support."""
        return TensorAggregate(secure.mean(encoding, sums, survivors))

    def secure_round_config(self, options: CodecOptions, layout: Layout, previous_update: Tensors | None,
                            tag: bytes) -> tuple[Any, bytes]:
        """The round's shared support (from the previous public global update) and its coded form for clients."""
        assert isinstance(options, CompeftOptions)
        entries = sum(math.prod(shape) for shape in layout.values())
        previous = flatten(previous_update, layout) if previous_update is not None else None
        support = secure.choose_support(previous, options.density, entries, tag)
        return support, secure.support_to_bytes(support, entries)

    def secure_round_parameter(self, coded: bytes, entries: int) -> Any:
        """The shared support the coordinator sent."""
        return secure.support_from_bytes(coded, entries)


COMPEFT = CompeftCodec()

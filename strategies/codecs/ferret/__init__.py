"""The Ferret codec: a delta as its coefficients on shared random directions; everyone rebuilds it. ``options`` is
what a user configures, ``wire`` the projection and the wire format, ``secure`` what secure aggregation sums for
it, ``codec`` its behaviour in the system."""

from strategies.codecs.ferret.codec import FERRET, FerretCodec
from strategies.codecs.ferret.options import FerretOptions
from strategies.codecs.ferret.wire import (
    CHUNK_ENTRIES,
    CODEC,
    CODEC_VERSION,
    FerretPayload,
    check_options,
    combine,
    decode,
    encode,
    layout_digest,
    pack,
    parse,
    parse_same_basis,
    project,
    rebuild,
)

__all__ = ["CHUNK_ENTRIES", "CODEC", "CODEC_VERSION", "FERRET", "FerretCodec", "FerretOptions", "FerretPayload",
           "check_options", "combine", "decode", "encode", "layout_digest", "pack", "parse", "parse_same_basis",
           "project", "rebuild"]

"""The ComPEFT codec: the top fraction of a delta's entries by magnitude, each sent as ``alpha * sign``, positions
entropy-coded. ``options`` is what a user configures, ``wire`` the math and the wire format, ``size`` what a payload
costs against the entropy bound, ``secure`` its shared-support secure-aggregation mode, ``codec`` its behaviour in
the system."""

from strategies.codecs.compeft.codec import COMPEFT, CompeftCodec
from strategies.codecs.compeft.options import CompeftOptions
from strategies.codecs.compeft.wire import (
    CHUNK_ENTRIES,
    CODEC,
    CODEC_VERSION,
    DEFAULT_MAX_ENTRIES,
    ENGINES,
    SCOPES,
    check_options,
    decode,
    decode_sparse,
    encode,
    kept_count,
    merge_moments,
    parse_tensor,
    unbiased_std,
)

__all__ = ["CHUNK_ENTRIES", "CODEC", "CODEC_VERSION", "COMPEFT", "DEFAULT_MAX_ENTRIES", "ENGINES", "SCOPES",
           "CompeftCodec", "CompeftOptions", "check_options", "decode", "decode_sparse", "encode", "kept_count",
           "merge_moments", "parse_tensor", "unbiased_std"]

"""The dense codec: every entry of every tensor (the baseline). ``options`` is what a user configures, ``wire`` the
wire format, ``secure`` its secure-aggregation encoding, ``codec`` its behaviour in the system."""

from strategies.codecs.dense.codec import DENSE, DenseCodec
from strategies.codecs.dense.options import DenseOptions
from strategies.codecs.dense.wire import CODEC, CODEC_VERSION, WIRE_DTYPES, decode, dense_fp32_bytes, encode

__all__ = ["CODEC", "CODEC_VERSION", "DENSE", "WIRE_DTYPES", "DenseCodec", "DenseOptions", "decode",
           "dense_fp32_bytes", "encode"]

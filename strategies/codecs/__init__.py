"""Codecs turn an update (named tensors) into wire bytes (protos fedsqueeze.v1.EncodedUpdate) and back."""

from strategies.codecs.errors import UpdateRejected
from strategies.codecs.registry import CODEC_NAMES, CodecSettings, decode_update, encode_update

__all__ = ["CODEC_NAMES", "CodecSettings", "UpdateRejected", "decode_update", "encode_update"]

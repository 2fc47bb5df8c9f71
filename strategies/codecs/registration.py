"""The table of codecs by name, and the one way into it (as PEFT's ``register_peft_method``); ``registry``
registers the built-in codecs and looks codecs up."""

from __future__ import annotations

from strategies.codecs.base import Codec

CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Add ``codec`` under its ``name``; ValueError when another codec holds that name. Returns the codec."""
    if not getattr(codec, "name", ""):
        raise ValueError(f"{type(codec).__name__} has no name to register under")
    held = CODECS.get(codec.name)
    if held is not None and held is not codec:
        raise ValueError(f"codec name '{codec.name}' is taken by {type(held).__name__}")
    CODECS[codec.name] = codec
    return codec

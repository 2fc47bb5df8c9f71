"""Codecs turn an update (named tensors) into wire bytes (protos fedsqueeze.v1.EncodedUpdate) and back.

One package per codec (``dense``, ``compeft``, ``ferret``), each split the same way: ``options`` (what a user
configures), ``wire`` (the math and the wire format), ``secure`` (what secure aggregation sums for it) and ``codec``
(its behaviour in the system, behind the interface in ``base``). ``registry`` registers the three built-in codecs
with ``registration.register_codec`` (a codec of one's own registers the same way) and maps names to codecs.
"""

from strategies.codecs.errors import UpdateRejected

__all__ = ["UpdateRejected"]

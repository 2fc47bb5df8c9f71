"""Codecs turn an update (named tensors) into wire bytes (protos fedsqueeze.v1.EncodedUpdate) and back.

The wire formats live in ``dense``, ``compeft`` and ``ferret``; each codec's behaviour in the system in
``kinds/``; ``registry`` maps names to codecs.
"""

from strategies.codecs.errors import UpdateRejected

__all__ = ["UpdateRejected"]

"""Errors of the secure-aggregation protocol."""


class SecAggError(ValueError):
    """A message breaks the protocol (malformed, out of order, or asking a party to reveal what it must not)."""


class SecAggAbort(RuntimeError):
    """The round cannot finish: fewer parties than the threshold remain, or a secret cannot be rebuilt."""

"""The secure-aggregation setups this node advertised keys for, kept on its own disk, so that it never takes part
twice in one setup: not in two Flower runs, not after a restart.

Why: a lying coordinator that could run one setup several times would collect signatures from each execution and
combine them (tests/secagg_replay.py). Signatures are bound to the execution as well (strategies/secagg/identity.py),
and this ledger is the second, independent line: before it advertises keys, a node records SHA-256 of the exact
setup bytes with the setup's Flower run and round; a setup already recorded, or a round of a run that is not after
every round the node already took part in for that run, is refused.

The file is a magic tag, fixed 48-byte records (digest, run, round), the newest ``MAX_RECORDS`` of them (3 MiB),
and SHA-256 over both: a coordinator would need that many secure rounds with this node, each trained for real, to
push one record out. It is rewritten whole through a temporary file, fsynced, renamed into place and the folder
fsynced, under an exclusive lock, so a crash leaves the old or the new ledger, never half of one, and a claim that
returned is on disk before the keys leave the node. A ledger that does not check out (truncated, altered, empty) is
never guessed at: the node refuses secure rounds and names the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from client.privacy_floor import FloorRefusal

LEDGER_NAME = "secagg-setups.bin"
MAGIC = b"FSQLDG01"
RECORD = struct.Struct(">32sQQ")  # SHA-256 of the setup bytes, Flower run id, round
MAX_RECORDS = 65_536
_CHECK = 32  # the trailing SHA-256 of the magic tag and the records


class LedgerRefusal(FloorRefusal):
    """This node already took part in the setup (or in a later round of its run), or cannot tell."""


class SetupLedger:
    """The setups a node advertised keys for, in ``root/secagg-setups.bin``."""

    def __init__(self, root: Path) -> None:
        self.path = root / LEDGER_NAME

    def _records(self) -> list[tuple[bytes, int, int]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerRefusal(f"cannot read this node's secure-aggregation ledger {self.path}: "
                                f"{exc.strerror or exc}") from exc
        body, check = data[:-_CHECK], data[-_CHECK:]
        if len(data) < len(MAGIC) + _CHECK or not body.startswith(MAGIC) or (len(body) - len(MAGIC)) % RECORD.size \
                or hashlib.sha256(body).digest() != check:
            raise LedgerRefusal(f"this node's secure-aggregation ledger {self.path} is damaged ({len(data)} bytes that "
                                "do not check out); it cannot tell which setups it took part in")
        return [RECORD.unpack_from(body, offset) for offset in range(len(MAGIC), len(body), RECORD.size)]

    def refusal(self, setup: bytes, run: int, round_id: int) -> str | None:
        """Why this node must not advertise keys for ``setup`` (run ``run``, round ``round_id``), or None."""
        digest = hashlib.sha256(setup).digest()
        last = 0
        for seen, seen_run, seen_round in self._records():
            if seen == digest:
                return (f"this node already advertised keys for this secure-aggregation setup (run {run}, round "
                        f"{round_id}; {self.path}); a setup is never run twice")
            if seen_run == run:
                last = max(last, seen_round)
        if round_id <= last:
            return (f"this node already took part in secure round {last} of run {run}; round {round_id} is not "
                    "after it (a replayed round)")
        return None

    def claim(self, setup: bytes, run: int, round_id: int) -> None:
        """Record ``setup`` before this node advertises keys for it; LedgerRefusal naming why when it must not (or
        when the ledger cannot be written)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked():
                reason = self.refusal(setup, run, round_id)
                if reason is not None:
                    raise LedgerRefusal(reason)
                records = [*self._records(), (hashlib.sha256(setup).digest(), run, round_id)][-MAX_RECORDS:]
                self._write(MAGIC + b"".join(RECORD.pack(*record) for record in records))
        except OSError as exc:
            raise LedgerRefusal(f"cannot write this node's secure-aggregation ledger {self.path}: "
                                f"{exc.strerror or exc}") from exc

    def _write(self, body: bytes) -> None:
        """``body`` and its SHA-256 as the ledger: whole or not at all, on disk when this returns."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.unlink(missing_ok=True)  # a leftover, or a planted symlink: removed, never followed
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(body + hashlib.sha256(body).digest())
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

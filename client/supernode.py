"""``flower-supernode`` with a shorter idle wait between pulls from the SuperLink.

Flower 1.39's SuperNode sleeps a fixed 3 s whenever a pull finds no message, so every message waits 1.5 s on
average (up to 3 s) before the node even sees it: a secure-aggregation round is four such exchanges. The node's
main loop is otherwise Flower's own; this entry point only caps that wait at ``FEDSQUEEZE_SUPERNODE_POLL_S``
(default 0.5 s; 3 restores Flower's). The cost is proportionally more idle pulls on the SuperLink.
It also sets the node's heartbeat interval (``FEDSQUEEZE_HEARTBEAT_S``, default 10 s, Flower's least; Flower's own
is 30 s): the SuperLink takes a node for gone after two missed intervals, answers its pending messages with an
error so the round goes on without it, and lets the node back in only then, so a crashed and restarted node
rejoins 20 s after the crash instead of a minute.
With ``--app-sha256 HEX_OR_FILE`` (repeatable; client/app_trust.py) the node runs only app bundles with a pinned
sha256 and refuses every other run before any of its code starts.
Usage: python -m client.supernode [--app-sha256 HEX_OR_FILE]... [flower-supernode arguments]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from types import ModuleType

from client.app_trust import parse_pins, pin_node_apps

POLL_ENV = "FEDSQUEEZE_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.5
HEARTBEAT_ENV = "FEDSQUEEZE_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 10.0
HEARTBEAT_RANGE_S = (10.0, 1800.0)  # what Flower's SuperLink accepts


class CappedSleepTime(ModuleType):
    """Stands in for the ``time`` module inside Flower's SuperNode loop: ``sleep`` waits at most ``cap_s``."""

    def __init__(self, cap_s: float) -> None:
        super().__init__("time")
        self.cap_s = cap_s

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, but no longer than the cap."""
        time.sleep(min(seconds, self.cap_s))


def _env_seconds(environ: dict[str, str] | os._Environ, name: str, default: float, low: float, high: float,
                 low_open: bool = False, label: str = "") -> float:
    """Seconds from ``environ[name]`` (``default`` when unset); ValueError, naming ``label`` (default: the
    variable), unless a number within the bounds."""
    raw, label = environ.get(name, str(default)), label or name
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{label} must be a number of seconds, got '{raw}'") from None
    if not ((low < value) if low_open else (low <= value)) or not value <= high:
        raise ValueError(f"{label} must be in {'(' if low_open else '['}{low:g}, {high:g}] seconds, got {raw}")
    return value


def poll_seconds(environ: dict[str, str] | os._Environ = os.environ, label: str = "") -> float:
    """The idle wait from ``FEDSQUEEZE_SUPERNODE_POLL_S``; ValueError (naming ``label``, e.g. the flag that set
    it) unless it is a number in (0, 60]."""
    return _env_seconds(environ, POLL_ENV, DEFAULT_POLL_S, 0.0, 60.0, low_open=True, label=label)


def heartbeat_seconds(environ: dict[str, str] | os._Environ = os.environ, label: str = "") -> float:
    """The heartbeat interval from ``FEDSQUEEZE_HEARTBEAT_S``; ValueError (naming ``label``) unless within what the
    SuperLink accepts, [10, 1800] s."""
    return _env_seconds(environ, HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S, *HEARTBEAT_RANGE_S, label=label)


def set_heartbeat(seconds: float) -> None:
    """Make Flower's SuperNode announce and keep ``seconds`` as its heartbeat interval (both modules read the
    interval from a module constant when they use it)."""
    from flwr.client.grpc_rere_client import connection
    from flwr.supercore import heartbeat

    connection.HEARTBEAT_DEFAULT_INTERVAL = seconds
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = seconds


def split_pin_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--app-sha256`` values, and the other arguments (Flower's, left for flower-supernode's own parser)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--app-sha256", action="append", default=[])
    known, rest = parser.parse_known_args(argv)
    return known.app_sha256, rest


def main() -> int:
    """Run Flower's SuperNode with the capped idle wait and, when asked, only pinned app bundles."""
    pin_values, flower_args = split_pin_args(sys.argv[1:])
    try:
        cap_s = poll_seconds()
        heartbeat_s = heartbeat_seconds()
        pins = parse_pins(pin_values)
    except (ValueError, FileNotFoundError) as exc:
        print(f"fedsqueeze: error: {exc}", file=sys.stderr)
        return 2
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    start_client_internal.time = CappedSleepTime(cap_s)  # the loop's only use of time is sleep
    set_heartbeat(heartbeat_s)
    if pins:
        pin_node_apps(pins)
        print(f"fedsqueeze: this node runs only app bundles with sha256 {', '.join(sorted(pins))}", flush=True)
    sys.argv = [sys.argv[0], *flower_args]  # flower_supernode parses sys.argv itself
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())

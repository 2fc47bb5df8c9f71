"""Which app code a node agrees to run: the node accepts a run only when the sha256 of its Flower App Bundle (FAB)
is one its operator reviewed and pinned (``fedsqueeze node --app-sha256``).

Why a pinned hash and not Flower's ``--trusted-entities``: in flwr 1.39 a SuperNode with trusted entities accepts a
FAB only with signatures attached, and only the SuperLink's download from Flower Hub attaches them; the FAB that
``flwr run DIR`` ships arrives without any, so trusted entities refuse every run of a local app. A hash needs no
third party: the operator computes it from the tree they reviewed (``fedsqueeze app-hash DIR``, Flower's own
bundling, so byte for byte the FAB ``flwr run DIR`` sends) and the node compares it with the FAB it receives before
the FAB reaches the node's state, so no ClientApp process of that run ever starts.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Iterable
from logging import ERROR
from pathlib import Path
from typing import Any

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
REFUSAL_HEAD = "refused the app bundle"  # start of the node's log line (and of the coordinator's failure reason)


class AppRejected(Exception):
    """A run's app bundle is not one this node pinned."""


def parse_pins(values: Iterable[str]) -> frozenset[str]:
    """The pinned FAB hashes from ``--app-sha256`` values, each a sha256 in hex or a file of them (one a line,
    ``#`` starts a comment). ValueError for anything else that is not a 64-digit hex string, naming it;
    FileNotFoundError for a file that is not there."""
    pins: set[str] = set()
    for value in values:
        text = value.strip().lower()
        if SHA256_HEX.fullmatch(text):
            pins.add(text)
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            if "/" in value or "." in value:
                raise FileNotFoundError(f"--app-sha256 file {value} is missing")
            raise ValueError(f"--app-sha256 takes a sha256 (64 hex digits) or a file of them, got {value!r}")
        pins |= _pins_in_file(path)
    return frozenset(pins)


def _pins_in_file(path: Path) -> frozenset[str]:
    pins = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip().lower()
        if text and not SHA256_HEX.fullmatch(text):
            raise ValueError(f"{path}:{number} is not a sha256 (64 hex digits): {text[:80]!r}")
        if text:
            pins.add(text)
    if not pins:
        raise ValueError(f"{path} names no app hash")
    return frozenset(pins)


def app_sha256(app_dir: Path) -> str:
    """The sha256 of the FAB that ``flwr run APP_DIR`` ships: Flower's own bundling (the same files, in the same
    order, with fixed timestamps), so it equals the hash the SuperLink records and the node receives.
    FileNotFoundError when ``app_dir`` has no pyproject.toml; ValueError with Flower's reason if it cannot bundle."""
    from flwr.cli.build import build_fab_from_disk

    if not (app_dir / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{app_dir} is not a Flower app: it has no pyproject.toml")
    return hashlib.sha256(build_fab_from_disk(app_dir)).hexdigest()


def check_app(fab_content: bytes, pins: frozenset[str]) -> str:
    """The bundle's sha256 when it is pinned; AppRejected naming the actual and the pinned hashes otherwise."""
    actual = hashlib.sha256(fab_content).hexdigest()
    if actual not in pins:
        raise AppRejected(f"{REFUSAL_HEAD}: its sha256 is {actual}, this node pins {', '.join(sorted(pins))}")
    return actual


def pin_node_apps(pins: frozenset[str]) -> None:
    """Make Flower's SuperNode loop (``flwr.supernode.start_client_internal``) accept only pinned app bundles.

    Flower pulls a run's FAB when the run's first message arrives (``_pull_and_store_message``, through its
    ``get_fab``). The FAB is checked there, before Flower stores it; a refused run's message gets Flower's own
    answer to an unverifiable FAB, an error reply (code INVALID_FAB) with the refusal as its reason, and the run is
    never stored, so each of its later messages is refused the same way. RuntimeError if this Flower's loop lacks
    the hook (a different flwr than 1.39): refusing to start beats running unchecked apps.
    """
    from flwr.supernode import start_client_internal as loop

    pull = loop._pull_and_store_message
    needed = {"receive", "get_fab", "state", "object_store"}
    if not needed <= set(inspect.signature(pull).parameters) or not hasattr(loop, "_insert_message"):
        raise RuntimeError("this flwr's SuperNode loop has no FAB hook: cannot pin apps (fedsqueeze needs flwr 1.39)")
    if not pins:
        raise ValueError("pin_node_apps needs at least one app hash")
    loop._pull_and_store_message = _pinned_pull(pull, pins, loop._insert_message)


def _pinned_pull(pull: Callable[..., int | None], pins: frozenset[str],
                 insert_message: Callable[..., None]) -> Callable[..., int | None]:
    """``pull`` (Flower's _pull_and_store_message) with the FAB checked; a refused run gets an error reply."""
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode
    from flwr.supercore import log

    def pull_pinned(**kwargs: Any) -> int | None:
        receive, get_fab = kwargs["receive"], kwargs["get_fab"]
        received: list[Message] = []

        def receive_and_keep() -> Any:
            pulled = receive()
            if pulled is not None:
                received.append(pulled[0])
            return pulled

        def get_pinned_fab(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            check_app(fab.content, pins)
            return fab

        try:
            return pull(**{**kwargs, "receive": receive_and_keep, "get_fab": get_pinned_fab})
        except AppRejected as exc:
            message = received[-1]
            log(ERROR, "Run %s: %s", message.metadata.run_id, exc)
            reply = Message(Error(ErrorCode.INVALID_FAB, str(exc)), reply_to=message)
            insert_message(reply, kwargs["state"], kwargs["object_store"])
            return message.metadata.run_id

    return pull_pinned

"""A node's warm trainer: a long-lived process that runs the client's messages with its task kept loaded.

``fedsqueeze node`` starts it next to the SuperNode and stops it with the node (its GPU memory goes with it). The
per-message ClientApp forwards each message here over a Unix socket (``client/warm_channel.py``); the model,
tokenizer, data partition and adapter stay in memory across rounds and across runs of the same task. Flower still
owns everything else: the message, the node state (sent here with each message and returned with the reply), the
process that talks to the SuperNode, retries and errors.

The socket lives in a directory only this user can open (0700); the trainer serves one message at a time and runs
only the code the run shipped (a digest of the client-side sources must match; otherwise it refuses and the
ClientApp runs the message itself).
Usage: python -m client.trainer --socket PATH
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from client import warm_channel

log = logging.getLogger("fedsqueeze.trainer")
CHECK_PARENT_S = 1.0


def listen(socket_path: Path) -> socket.socket:
    """A Unix socket listening at ``socket_path`` whose directory only this user may enter (created 0700)."""
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if socket_path.parent.stat().st_mode & 0o077:
        raise PermissionError(f"{socket_path.parent} is open to other users; give the trainer a private directory")
    socket_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    server.listen(8)
    return server


def serve_one(connection: socket.socket, digest: str) -> None:
    """Read one request, run it (unless its code differs from ours) and write the reply."""
    from client.handlers import run_message

    request, msg, context = warm_channel.decode_request(warm_channel.recv_frame(connection))
    if request.code_digest != digest:
        warm_channel.send_frame(connection, warm_channel.encode_reply(
            None, None, refused=True,
            error=f"the run's client code (digest {request.code_digest[:12]}) differs from this trainer's "
                  f"({digest[:12]}): restart fedsqueeze node with the run's version"))
        return
    started = time.perf_counter()
    try:
        reply = run_message(msg, context)
    except Exception as exc:  # the ClientApp re-raises it, so Flower reports it as the client's failure
        log.exception("%s failed", msg.metadata.message_type)
        warm_channel.send_frame(connection, warm_channel.encode_reply(None, None, error=f"{type(exc).__name__}: {exc}"))
        return
    warm_channel.send_frame(connection, warm_channel.encode_reply(reply, context))
    log.info("%s for run %d served in %.2f s", msg.metadata.message_type, msg.metadata.run_id,
             time.perf_counter() - started)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)  # PermissionError would mean it exists under another user: alive
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def serve(socket_path: Path, parent_pid: int | None = None) -> None:
    """Listen at ``socket_path`` and serve messages one at a time until SIGTERM/SIGINT, or until the process
    ``parent_pid`` (the node that started this trainer) is gone."""
    server = listen(socket_path)
    server.settimeout(CHECK_PARENT_S)  # wake now and then to notice a node that died without stopping us

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        # Listening already, so a message that arrives now waits in the backlog: import the heavy stack before it.
        from client.handlers import run_message  # noqa: F401
        from client.task.quiet import quiet_libraries

        quiet_libraries()
        digest = warm_channel.code_digest()
        log.info("warm trainer ready at %s (client code %s)", socket_path, digest[:12])
        while _alive(parent_pid):
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            with connection:
                try:
                    if not connection.recv(1, socket.MSG_PEEK):
                        continue  # closed before a byte: the node checking that this trainer listens
                    serve_one(connection, digest)
                except (ConnectionError, ValueError) as exc:  # a broken or foreign request: drop it, keep serving
                    log.warning("dropped a request: %s", exc)
    finally:
        server.close()
        socket_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m client.trainer --socket PATH``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True, type=Path, help="Unix socket path (its directory is made 0700)")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process (the node) is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        serve(args.socket, args.parent_pid)
    except OSError as exc:
        print(f"fedsqueeze trainer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A slow, lossy link between the nodes and the SuperLink, two ways.

``netem_namespace``: the kernel's own: a network namespace with a veth pair to the host, ``tc netem`` delay and loss
on both ends; nodes run inside it (``ip netns exec``) and dial the host end. Needs root and the sch_netem module;
LinkUnavailable says what the kernel refused.

``LossyRelay``: the same faults seen from the application, where netem is missing: a TCP relay on 127.0.0.1 that
holds every chunk for the one-way delay (in each direction, order kept) and, with the loss probability, holds a
chunk one retransmission timeout more, with every chunk behind it waiting (TCP's head-of-line blocking: a lost
segment costs its sender an RTO, never the bytes). ``reset_probability`` also cuts whole connections.
"""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

RTO_S = 0.2  # Linux's least retransmission timeout


class LinkUnavailable(RuntimeError):
    """This machine cannot shape a link the requested way (the message says why)."""


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LinkUnavailable(f"'{' '.join(command)}' failed: {(done.stderr or done.stdout).strip()}")


@contextlib.contextmanager
def netem_namespace(name: str, delay_ms: float, loss_pct: float, subnet: int = 231) -> Iterator[tuple[str, str]]:
    """A namespace ``name`` joined to the host by a veth pair (host 10.<subnet>.0.1, namespace 10.<subnet>.0.2),
    with netem ``delay_ms`` and ``loss_pct`` on both ends; yields (namespace, host address). Removed on exit."""
    host_if, ns_if, host_ip = f"{name[:8]}h", f"{name[:8]}n", f"10.{subnet}.0.1"
    created = False
    try:
        _run("ip", "netns", "add", name)
        created = True
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", name)
        _run("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", name, "ip", "addr", "add", f"10.{subnet}.0.2/24", "dev", ns_if)
        _run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        shape = ["netem", "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"]
        _run("tc", "qdisc", "add", "dev", host_if, "root", *shape)
        _run("ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", ns_if, "root", *shape)
        yield name, host_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        if created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@dataclass
class LossyRelay:
    """A TCP relay from 127.0.0.1:``port`` to ``target`` (host, port) with one-way ``delay_s``, per-chunk
    ``loss_probability`` (each loss holds the stream one RTO) and per-chunk ``reset_probability``."""

    target: tuple[str, int]
    delay_s: float = 0.05
    loss_probability: float = 0.0
    reset_probability: float = 0.0
    seed: int = 0
    port: int = 0
    chunks: int = 0
    losses: int = 0
    resets: int = 0
    _server: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sockets: list[socket.socket] = field(default_factory=list)

    def start(self) -> int:
        """Listen and relay in background threads; returns the port to dial."""
        self._random = random.Random(self.seed)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self.port

    def stop(self) -> None:
        """Stop accepting and close every relayed connection."""
        self._stop.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                queue: deque[tuple[float, bytes]] = deque()
                ready = threading.Condition()
                threading.Thread(target=self._read, args=(src, dst, queue, ready), daemon=True).start()
                threading.Thread(target=self._write, args=(src, dst, queue, ready), daemon=True).start()

    def _cut(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _read(self, src: socket.socket, dst: socket.socket, queue: deque, ready: threading.Condition) -> None:
        due_last = 0.0
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                self.chunks += 1
                lost = bool(data) and self._random.random() < self.loss_probability
                reset = bool(data) and self._random.random() < self.reset_probability
                self.losses += lost
                self.resets += reset
            if reset:
                self._cut(src, dst)
                data = b""
            # Arrives one delay after it was sent, an RTO later when lost, and never before the chunk ahead of it.
            due_last = max(due_last, time.monotonic() + self.delay_s + (RTO_S if lost else 0.0))
            with ready:
                queue.append((due_last, data))
                ready.notify()
            if not data:
                return

    def _write(self, src: socket.socket, dst: socket.socket, queue: deque, ready: threading.Condition) -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.popleft()
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                self._cut(src, dst)
                return

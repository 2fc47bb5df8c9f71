"""The node's warm trainer and its local channel: frames, the code digest, a real trainer process that refuses code
other than its own, reports a failing handler as one line, keeps its socket private, and stops with its node.
(Training through it over real gRPC, and reusing the task on the second round, is tests/test_deployment.py.)"""

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata

from client import warm_channel
from client.launch import supernode_command, trainer_command
from client.supernode import CappedSleepTime, heartbeat_seconds, poll_seconds
from protos.fedsqueeze.v1 import trainer_pb2


def _message(message_type: str = "train") -> Message:
    """A message as a node receives it (Flower builds these from the wire; a test has no run to build it in)."""
    metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type=message_type)
    return make_message(metadata, RecordDict())


def _context(socket_path: Path | None = None) -> Context:
    node_config = {"partition-id": 0, "num-partitions": 1}
    if socket_path is not None:
        node_config[warm_channel.TRAINER_SOCKET_KEY] = str(socket_path)
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _wait_for_socket(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the trainer exited"
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                if probe.connect_ex(str(path)) == 0:
                    return
        time.sleep(0.1)
    raise TimeoutError(path)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory):
    """A real trainer process (stopped when its parent, a sleeping stand-in for the node, is gone)."""
    socket_path = tmp_path_factory.mktemp("trainer") / "private" / "trainer.sock"
    node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc = subprocess.Popen(trainer_command(socket_path, parent_pid=node.pid), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_socket(socket_path, proc)
        yield socket_path, proc, node
    finally:
        for p in (node, proc):
            p.kill()
            p.wait()


def test_frames_round_trip_and_refuse_oversized_lengths() -> None:
    left, right = socket.socketpair()
    with left, right:
        warm_channel.send_frame(left, b"x" * 100_000)
        assert warm_channel.recv_frame(right) == b"x" * 100_000
        left.sendall((warm_channel.MAX_FRAME_BYTES + 1).to_bytes(8, "big"))
        with pytest.raises(ConnectionError, match="over the"):
            warm_channel.recv_frame(right)
        left.sendall((10).to_bytes(8, "big") + b"abc")
        left.close()
        with pytest.raises(ConnectionError, match="closed the channel after 3 of 10"):
            warm_channel.recv_frame(right)


def test_code_digest_names_the_client_sources(tmp_path: Path) -> None:
    for package in warm_channel.CODE_PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "mod.py").write_text("x = 1\n")
    (tmp_path / "server").mkdir()
    before = warm_channel.code_digest(tmp_path)
    (tmp_path / "server" / "other.py").write_text("y = 2\n")  # the coordinator's code does not run on nodes
    assert warm_channel.code_digest.__wrapped__(tmp_path) == before
    (tmp_path / "strategies" / "mod.py").write_text("x = 2\n")
    assert warm_channel.code_digest.__wrapped__(tmp_path) != before


def test_no_trainer_means_the_client_app_runs_the_message(tmp_path: Path) -> None:
    assert warm_channel.forward_if_warm(_message(), _context()) is None  # no trainer-socket in the node config
    assert warm_channel.forward_if_warm(_message(), _context(tmp_path / "gone.sock")) is None  # trainer not there


@pytest.mark.skipif(sys.platform == "win32", reason="Unix sockets")
def test_trainer_socket_is_private_and_answers_errors_in_one_line(trainer) -> None:
    socket_path, _, _ = trainer
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    with pytest.raises(warm_channel.TrainerError,
                       match=r"ValueError: fedsqueeze clients serve query, train, .*got 'evaluate'"):
        warm_channel.forward(socket_path, _message("evaluate"), _context(socket_path))


def test_trainer_refuses_code_other_than_its_own(trainer) -> None:
    socket_path, _, _ = trainer
    request = trainer_pb2.TrainerRequest.FromString(warm_channel.encode_request(_message(), _context()))
    request.code_digest = "0" * 64
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(socket_path))
        warm_channel.send_frame(sock, request.SerializeToString())
        reply = trainer_pb2.TrainerReply.FromString(warm_channel.recv_frame(sock))
    assert reply.refused and "differs from this trainer's" in reply.error and not reply.message
    with socket.socket(socket.AF_UNIX) as sock:  # a broken request is dropped; the trainer keeps serving
        sock.connect(str(socket_path))
        warm_channel.send_frame(sock, b"\xff\xfe not a protobuf")
    with pytest.raises(warm_channel.TrainerError):
        warm_channel.forward(socket_path, _message("evaluate"), _context(socket_path))


def test_trainer_stops_with_its_node(trainer) -> None:
    socket_path, proc, node = trainer
    node.kill()
    node.wait()
    assert proc.wait(timeout=30) == 0
    assert not socket_path.exists()


def test_supernode_poll_is_capped_and_checked() -> None:
    capped = CappedSleepTime(0.05)
    started = time.monotonic()
    capped.sleep(3)
    assert time.monotonic() - started < 1 and capped.monotonic() > 0  # other names are the time module's
    assert poll_seconds({}) == 0.5 and poll_seconds({"FEDSQUEEZE_SUPERNODE_POLL_S": "3"}) == 3.0
    for bad in ("0", "-1", "61", "soon"):
        with pytest.raises(ValueError, match="FEDSQUEEZE_SUPERNODE_POLL_S"):
            poll_seconds({"FEDSQUEEZE_SUPERNODE_POLL_S": bad})
    assert heartbeat_seconds({}) == 10.0 and heartbeat_seconds({"FEDSQUEEZE_HEARTBEAT_S": "1800"}) == 1800.0
    for bad in ("9", "1801", "nan", "inf", "often"):  # the SuperLink accepts 10-1800 s
        with pytest.raises(ValueError, match="FEDSQUEEZE_HEARTBEAT_S"):
            heartbeat_seconds({"FEDSQUEEZE_HEARTBEAT_S": bad})
    command = supernode_command(superlink="x:1", partition_id=0, num_partitions=1, root_certificates=None,
                                trainer_socket=Path("/run/t.sock"), capped_poll=True)
    assert command[:3] == [sys.executable, "-m", "client.supernode"]
    assert 'trainer-socket="/run/t.sock"' in command[command.index("--node-config") + 1]
    assert os.path.basename(supernode_command(superlink="x:1", partition_id=0, num_partitions=1,
                                              root_certificates=None)[0]) == "flower-supernode"

"""A node's privacy floor and the checks every node makes of a secure round: a coordinator that switches secure
aggregation off, invents a 2-party or a 10^12-client round, replays a round or asks for too little noise is refused
by the node's own ClientApp handler before any training, with the reason; the coordinator records the refusal."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata

from client import handlers
from client.privacy_floor import CONTRIBUTED, FloorRefusal, PrivacyFloor
from client.secure import IDENTITIES_ENV
from client.task.spec import TaskSpec
from server.client_reply import collect_replies
from server.node_keys import generate_node_keys
from server.run_config import resolve
from strategies import messages
from strategies.messages import SecureRound, TrainInstructions
from strategies.secagg import common

NODE = 7


def _train_config(*, secagg: bool = True, parties: int = 3, clients_per_round: int | None = None, round_id: int = 1,
                  **overrides: object) -> dict:
    """The train config a coordinator sends (its own builders), before any lie the test then tells."""
    cfg = resolve({"preset": "encoder", "secagg": secagg, "num-clients": max(parties, 2), "out-dir": "unused"})
    node_ids = [NODE, *range(100, 100 + parties - 1)]
    secure = SecureRound(common.make_setup(round_id, node_ids, [(10, 24)], run=1), 0.05, 16) if secagg else None
    config = TrainInstructions(round=round_id, task=cfg.task.to_record(), uplink=cfg.uplink, downlink=cfg.downlink,
                               clients_per_round=parties if clients_per_round is None else clients_per_round,
                               secure=secure).to_record()
    return {**config, **overrides}


def _instructions(config: dict) -> TrainInstructions:
    return TrainInstructions.from_record(config, TaskSpec.field_names())


def _message(config: dict) -> Message:
    metadata = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=NODE, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    return make_message(metadata, RecordDict({messages.TRAIN_CONFIG: ConfigRecord(config)}))


def _context(floor: str = "", **node_config: object) -> Context:
    config = {"partition-id": 0, "num-partitions": 3, **node_config}
    if floor:
        config["privacy-floor"] = floor
    return Context(run_id=1, node_id=NODE, node_config=config, state=RecordDict(), run_config={})


def _refusal(config: dict, context: Context) -> str:
    """The node's reply to ``config``: it must be a refusal, sent before the node built any model."""
    handlers._CACHE.clear()
    reply = handlers.train(_message(config), context)
    assert messages.REFUSAL in reply.content, "the node trained instead of refusing"
    assert not handlers._CACHE, "the node built its task before refusing"
    return str(reply.content[messages.REFUSAL]["reason"])


def test_the_floor_parses_and_names_bad_entries() -> None:
    floor = PrivacyFloor.parse("secagg=true min-parties=5 min-threshold=3 min-dp-noise=0.8 max-dp-clip=1 "
                               "codecs=compeft,dense")
    assert floor.secagg and floor.min_parties == 5 and floor.codecs == frozenset({"compeft", "dense"})
    assert not PrivacyFloor.parse("").demands_anything
    for text, reason in (("secagg=yes", "secagg='yes' is not a valid value"), ("min-parties=-1", "min-parties"),
                         ("min-dp-noise=nan", "min-dp-noise"), ("codecs=", "not key=value"),
                         ("min-partys=3", "unknown privacy floor key 'min-partys'"), ("secagg", "not key=value")):
        with pytest.raises(ValueError, match=reason):
            PrivacyFloor.parse(text)


@pytest.mark.parametrize(("floor", "config", "reason"), [
    ("secagg=true", {"secagg": False}, "trains only for securely aggregated rounds"),
    ("min-parties=3", {"parties": 2}, "the round has 2 secure-aggregation parties, this node joins only 3"),
    ("min-threshold=3", {"parties": 3}, "threshold is 2, this node accepts 3 or more"),
    ("min-dp-noise=0.8", {"dp-noise-multiplier": 0.3, "dp-clip": 1.0}, "noise multiplier is 0.3, this node needs"),
    ("max-dp-clip=1", {"dp-noise-multiplier": 1.0, "dp-clip": 50.0}, "DP clip is 50.0, this node accepts"),
    ("codecs=compeft", {}, "codec 'dense', this node sends only compeft"),
])
def test_a_round_below_the_nodes_floor_is_refused_before_training(floor: str, config: dict, reason: str) -> None:
    parties = config.pop("parties", 3)
    secagg = config.pop("secagg", True)
    assert reason in _refusal(_train_config(secagg=secagg, parties=parties, **config), _context(floor))


def test_a_coordinator_claiming_10_to_the_12_clients_is_refused() -> None:
    """Distributed DP noise per client is std zC/sqrt(m): a claimed m = 10^12 would make it vanish."""
    config = _train_config(parties=3, clients_per_round=10**12, **{"dp-noise-multiplier": 1.0, "dp-clip": 1.0})
    assert "scales DP noise for 1000000000000 clients but its secure-aggregation setup lists 3" in _refusal(
        config, _context())


def test_a_setup_with_more_parties_than_pinned_nodes_is_refused(tmp_path: Path, monkeypatch) -> None:
    generate_node_keys(tmp_path / "node-keys", 3)
    monkeypatch.setenv(IDENTITIES_ENV, str(tmp_path / "node-keys"))
    assert "lists 4 parties and the federation has only 3 pinned nodes" in _refusal(_train_config(parties=4),
                                                                                    _context())


def test_a_replayed_round_is_refused() -> None:
    context = _context()
    context.state[CONTRIBUTED] = ConfigRecord({"run": 1, "round": 4})  # this node already took part in round 4
    for round_id in (4, 3):
        assert f"already contributed to secure round 4 of this run; round {round_id} is not after it" in _refusal(
            _train_config(round_id=round_id), context)
    from client.secure import admit

    with pytest.raises(FloorRefusal, match="setup is for run 2"):
        admit(_instructions({**_train_config(round_id=5), "secagg-setup": common.make_setup(
            5, [NODE, 100, 101], [(10, 24)], run=2)}), context)
    series = _context()  # node state that outlived another run of a run series does not count against this one
    series.state[CONTRIBUTED] = ConfigRecord({"run": 99, "round": 4})
    admit(_instructions(_train_config(round_id=1)), series)


def test_the_coordinator_counts_a_refusal_with_its_reason() -> None:
    reply = handlers.train(_message(_train_config(secagg=False)), _context("secagg=true"))
    outcome = collect_replies([reply], {NODE: 100}, lambda payload: payload, digest="")
    assert outcome.clients[NODE].status == "refused" and not outcome.accepted
    assert outcome.refusals == [f"node {NODE}: refused the round: this node trains only for securely aggregated "
                                "rounds, and this round is not"]


def test_node_and_simulate_commands_carry_the_floor_and_refuse_a_bad_one(tmp_path: Path) -> None:
    from client.launch import supernode_command

    command = supernode_command(superlink="127.0.0.1:9092", partition_id=0, num_partitions=2, root_certificates=None,
                                privacy_floor="secagg=true  min-parties=3")
    assert 'privacy-floor="secagg=true min-parties=3"' in command[command.index("--node-config") + 1]
    for args in (["node", "--insecure", "--partition-id", "0", "--num-partitions", "2", "--privacy-floor",
                  "min-parties=many"],
                 ["simulate", "--out", str(tmp_path / "out"), "--node-floor", "secagg=sometimes"]):
        done = subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parents[1])
        errors = [line for line in done.stderr.splitlines() if line.startswith("fedsqueeze: error:")]
        assert done.returncode == 2 and len(errors) == 1 and "privacy floor" in errors[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()

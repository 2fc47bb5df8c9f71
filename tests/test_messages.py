"""The train message is one typed definition: what the coordinator writes, the node reads back equal (through
Flower's own record serialisation), and a key that is unknown, missing or of the wrong type is refused by name."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from client.task.spec import TaskSpec
from server.run_config import resolve
from strategies.codecs.registry import shared_seed
from strategies.messages import TRAIN_CONFIG, SecureRound, TrainInstructions


def _instructions(user: dict, secure: SecureRound | None = None) -> TrainInstructions:
    cfg = resolve({"preset": "encoder", **user})
    return TrainInstructions(round=4, task=cfg.task.to_record(), uplink=cfg.uplink, downlink=cfg.downlink,
                             clients_per_round=3, error_feedback=cfg.error_feedback, dp=cfg.dp, federation_id="fed-1",
                             round_seed=shared_seed(cfg.uplink.impl, cfg.seed, 4), secure=secure)


def _over_the_wire(record: ConfigRecord) -> ConfigRecord:
    """The record as a node receives it: serialised and parsed by Flower."""
    return recorddict_from_proto(recorddict_to_proto(RecordDict({TRAIN_CONFIG: record})))[TRAIN_CONFIG]


@pytest.mark.parametrize("user, secure", [
    ({"codec": "compeft", "downlink-codec": "compeft", "dp-noise-multiplier": 0.5, "dp-clip": 1.0}, None),
    ({"codec": "ferret", "secagg": True}, SecureRound(b"setup", 0.01, 16, b"")),
    ({"codec": "compeft", "secagg": True, "compeft-support": "shared"}, SecureRound(b"s", 0.02, 12, b"\x01\x02")),
])
def test_what_the_coordinator_writes_the_node_reads_back_equal(user: dict, secure: SecureRound | None) -> None:
    sent = _instructions(user, secure)
    received = TrainInstructions.from_record(_over_the_wire(sent.to_record()), TaskSpec.field_names())
    assert received == sent
    assert TaskSpec.from_record(received.task) == resolve({"preset": "encoder", **user}).task


def test_unknown_missing_or_mistyped_keys_are_refused_by_name() -> None:
    record = dict(_instructions({"codec": "dense"}).to_record())
    fields = TaskSpec.field_names()
    for key, value, named in (("clients-per-roud", 3, "clients-per-roud"),  # a typo on the coordinator's side
                              ("clients-per-round", "3", "clients-per-round"),  # wrong type
                              ("error-feedback", 1.5, "error-feedback"),
                              ("secagg", "yes", "secagg")):
        with pytest.raises(ValueError, match=named):
            TrainInstructions.from_record({**record, key: value}, fields)
    missing = {k: v for k, v in record.items() if k != "federation-id"}
    with pytest.raises(ValueError, match="federation-id"):
        TrainInstructions.from_record(missing, fields)
    # a plain round that carries secure-aggregation keys is refused, and a secure one must carry its setup
    with pytest.raises(ValueError, match="secagg-setup"):
        TrainInstructions.from_record({**record, "secagg-setup": b"x"}, fields)
    with pytest.raises(ValueError, match="secagg-setup"):
        TrainInstructions.from_record({**record, "secagg": True}, fields)


def test_every_round_says_whether_it_is_secure() -> None:
    """A node built from an older schema keys on ``secagg``: a secure round must never look plain to it."""
    assert _instructions({}).to_record()["secagg"] is False
    secure = _instructions({"secagg": True}, SecureRound(b"setup", 0.01, 16)).to_record()
    assert secure["secagg"] is True

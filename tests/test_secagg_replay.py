"""A lying coordinator that runs one secure-aggregation setup in several executions (tests/secagg_replay.py):
harvest signed confirmations and the target's "I masked with all my neighbours" in abandoned executions, then
isolate the target with t - 1 forwarding and a story per party in the last one. Mounted against unmodified
parties (``Party``), then through the node's own Flower handlers with its state directory: every signature is bound
to its execution, and a node never advertises keys twice for one setup, across Flower runs and restarts."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata

from client import handlers
from client.launch import IDENTITY_KEY, TRUSTED_NODES
from client.secure import admit, encoding_for, start
from client.setup_ledger import LEDGER_NAME, MAGIC, MAX_RECORDS, RECORD, LedgerRefusal, SetupLedger
from client.state_dir import STATE_DIR_KEY
from protos.fedsqueeze.v1 import secagg_pb2
from server.node_keys import generate_node_keys
from server.run_config import resolve
from strategies import messages
from strategies.codecs.registry import CodecSettings
from strategies.messages import SecureRound, TrainInstructions
from strategies.secagg import common
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.errors import SecAggAbort, SecAggError
from strategies.secagg.identity import SigningIdentity, TrustedIdentities, advertisement_digest
from strategies.secagg.party import Party
from tests.secagg_harness import random_inputs, run_round
from tests.secagg_replay import ReplayAttack, party_deliver

SEGMENTS = [(96, 20)]
REPLAY = "confirmed the survivor/dropped story this party was told in this execution"
STATEMENT = "the signature does not verify (altered, or made in another execution of this setup)"


def _federation(folder: Path, parties: list[int]) -> tuple[dict[int, SigningIdentity], TrustedIdentities]:
    pairs = generate_node_keys(folder / "node-keys", len(parties))
    (folder / "pinned.pub").write_text("".join(pair.public_key.read_text() for pair in pairs))
    return ({p: SigningIdentity.from_file(pair.private_key) for p, pair in zip(parties, pairs, strict=True)},
            TrustedIdentities.from_file(folder / "pinned.pub"))


@pytest.fixture(scope="module")
def keys20(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, SigningIdentity], TrustedIdentities]:
    """Node keys for up to 20 parties (101..120) and the federation's pinned list."""
    return _federation(tmp_path_factory.mktemp("federation"), list(range(101, 121)))


def test_without_identities_the_last_execution_alone_recovers_the_target() -> None:
    """The attack has teeth: unsigned parties reveal what the isolation asks, and the target's input comes back
    bit for bit."""
    parties = list(range(101, 108))
    setup = common.make_setup(3, parties, SEGMENTS, neighbours=6, threshold=4, run=8)
    inputs = random_inputs(parties, SEGMENTS, len(parties), seed=4)
    attack = ReplayAttack(setup, target=103)
    recovered, refusals = attack.isolate(party_deliver(setup, inputs, None, None), signed=False)
    assert not refusals and recovered is not None
    assert np.array_equal(recovered[0], inputs[103][0])


@pytest.mark.parametrize(("n", "k", "t"), [(5, 4, 3), (7, 6, 4), (8, 6, 4), (9, 8, 5), (10, 4, 3), (12, 8, 5),
                                           (20, 10, 6)])
def test_replaying_one_setup_across_executions_recovers_nothing(keys20, n: int, k: int, t: int) -> None:
    """Every execution's signatures were real (the harvest ran without a refusal), yet in the last execution no
    confirmation or mask-peer statement from an earlier one counts: every party told a minority story, and every
    holder of the target's seed, refuses, naming why; no share of the target's seed is revealed."""
    identities, trusted = keys20
    parties = list(range(101, 101 + n))
    setup = common.make_setup(2, parties, SEGMENTS, neighbours=k, threshold=t, run=41)
    inputs = random_inputs(parties, SEGMENTS, n, seed=n)
    attack = ReplayAttack(setup, target=103)
    for story in attack.needed_stories():
        assert not attack.harvest(party_deliver(setup, inputs, identities, trusted), story)
        assert len(attack.harvested[story]) == len(story[0])  # every survivor of the story signed it
    assert attack.statement is not None and len(attack.statement.peers) == k

    recovered, refusals = attack.isolate(party_deliver(setup, inputs, identities, trusted))
    assert recovered is None and not attack.seed_shares
    minority = {attack.target, *attack.few}
    assert minority | attack.info.neighbours[attack.target] <= set(refusals)
    assert all(REPLAY in refusals[p] for p in minority), refusals
    for party in attack.info.neighbours[attack.target] - minority:
        assert REPLAY in refusals[party] or f"the mask peers of party 103: {STATEMENT}" in refusals[party]
    if k == n - 1:  # a complete graph: every party holds the target's seed, so every party refuses
        assert set(refusals) == set(parties)


def test_the_replayed_statement_alone_is_refused_where_a_story_has_a_majority(keys20) -> None:
    """n = 10, k = 4: the story 'the few dropped' has a strict majority in the last execution itself, so only the
    target's replayed mask-peer statement stands between the coordinator and the target's seed: its other
    neighbours refuse it, since it names the target's keys of another execution."""
    identities, trusted = keys20
    parties = list(range(101, 111))
    setup = common.make_setup(2, parties, SEGMENTS, neighbours=4, threshold=3, run=41)
    inputs = random_inputs(parties, SEGMENTS, len(parties), seed=2)
    attack = ReplayAttack(setup, target=103)
    for story in attack.needed_stories():
        attack.harvest(party_deliver(setup, inputs, identities, trusted), story)
    recovered, refusals = attack.isolate(party_deliver(setup, inputs, identities, trusted))
    holders = attack.info.neighbours[103] - set(attack.few)
    assert recovered is None and holders
    assert all(f"the mask peers of party 103: {STATEMENT}" in refusals[p] for p in holders), refusals


def test_one_party_slot_played_by_several_nodes_shares_nothing_across_sessions(tmp_path: Path) -> None:
    """Found in review: the coordinator assigns node ids, so it can have several pinned nodes answer as one party
    of a setup, each only once (every ledger is satisfied). Target 1 masks with 2 and 3 only; group A (1 and
    instances of 4, 5) would reveal 1's self-mask seed, group B (other instances of 3, 4, 5) the mask key of the
    2 that 1 masked with, group C that of 3. Each group's session lists the instances it saw; a share opens only
    under its dealer's session, so nobody can open the shares the coordinator routes across groups and no
    secret leaves its group."""
    parties = [1, 2, 3, 4, 5]
    setup = common.make_setup(7, parties, SEGMENTS, neighbours=4, threshold=3, run=42)
    slots = {"O1": 1, "a1": 2, "b1": 3, "cA": 4, "dA": 5, "bB": 3, "cB": 4, "dB": 5, "aC": 2, "cC": 4, "dC": 5}
    identities, trusted = _federation(tmp_path, list(range(len(slots))))
    key_of = dict(zip(slots, identities.values(), strict=True))
    inputs = random_inputs(parties, SEGMENTS, len(parties), seed=3)
    instances = {name: Party.start(setup, party, inputs[party]) for name, party in slots.items()}
    adverts = {name: secagg_pb2.SecAggPublicKeys.FromString(instances[name].advertise_keys(key_of[name]))
               for name in slots}
    shown = {"O1": ["a1", "b1", "cA", "dA"], "cA": ["O1", "a1", "b1", "dA"], "dA": ["O1", "a1", "b1", "cA"],
             "a1": ["O1", "bB", "cB", "dB"], "b1": ["O1", "aC", "cC", "dC"], "bB": ["a1", "cB", "dB"],
             "cB": ["a1", "bB", "dB"], "dB": ["a1", "bB", "cB"], "aC": ["b1", "cC", "dC"], "cC": ["b1", "aC", "dC"],
             "dC": ["b1", "aC", "cC"]}
    bundles = {}
    for name, peers in shown.items():
        seen = sorted([name, *peers], key=slots.get)
        session = [secagg_pb2.SecAggKeyDigest(party=slots[m], digest=advertisement_digest(
            setup, slots[m], adverts[m].cipher_key, adverts[m].mask_key, adverts[m].identity)) for m in seen]
        key_list = secagg_pb2.SecAggKeyList(round=7, keys=[adverts[m] for m in seen if m != name], session=session)
        bundles[name] = secagg_pb2.SecAggShareBundle.FromString(
            instances[name].share_keys(key_list.SerializeToString(), trusted))  # each list is consistent
    routed = {"O1": ["a1", "b1"], "bB": ["a1"], "cB": ["a1"], "dB": ["a1"], "aC": ["b1"], "cC": ["b1"],
              "dC": ["b1"]}  # the shares the attack needs opened: the few's, across the groups
    for name, dealers in routed.items():
        forwarded = secagg_pb2.SecAggShareBundle(round=7, shares=[
            next(c for c in bundles[d].shares if c.receiver == slots[name]) for d in dealers])
        with pytest.raises(SecAggError, match=f"party {slots[dealers[0]]} does not authenticate .*another session"):
            instances[name].masked_input(forwarded.SerializeToString(), key_of[name])
    assert not instances["O1"].state.mask_peers  # the target never masked: its input never left it


def test_a_signed_setup_must_name_its_flower_run(keys20) -> None:
    identities, _ = keys20
    setup = common.make_setup(1, [101, 102, 103], SEGMENTS, run=0)
    party = Party.start(setup, 101, random_inputs([101], SEGMENTS, 3)[101])
    with pytest.raises(SecAggError, match="must name the Flower run that carries it"):
        party.advertise_keys(identities[101])
    assert not party.state.cipher_secret  # no key was made, let alone sent


def _signed_key_lists(setup: bytes, parties: list[int], identities, trusted
                      ) -> tuple[dict[int, Party], dict[int, secagg_pb2.SecAggKeyList]]:
    inputs = random_inputs(parties, SEGMENTS, len(parties))
    states = {p: Party.start(setup, p, inputs[p]) for p in parties}
    aggregator = Aggregator(setup)
    lists = aggregator.collect_keys({p: states[p].advertise_keys(identities[p]) for p in parties})
    return states, {p: secagg_pb2.SecAggKeyList.FromString(data) for p, data in lists.items()}


@pytest.mark.parametrize(("lie", "reason"), [
    ("drop-own", "does not hold this party's own keys of this execution"),
    ("alter-neighbour", "disagrees with the keys of neighbour 104"),
    ("withhold-keys", "holds neighbours [104] whose keys this party was not sent"),
    ("unordered", "distinct parties of the setup in ascending order"),
    ("none", "does not hold this party's own keys of this execution"),
])
def test_a_session_list_that_disagrees_with_what_the_party_saw_is_refused_before_any_share(keys20, lie: str,
                                                                                          reason: str) -> None:
    identities, trusted = keys20
    parties = [101, 102, 103, 104, 105]
    states, lists = _signed_key_lists(common.make_setup(1, parties, SEGMENTS, run=5), parties, identities, trusted)
    key_list = lists[101]
    entries = list(key_list.session)
    if lie == "drop-own":
        entries = [e for e in entries if e.party != 101]
    elif lie == "alter-neighbour":
        entries[3].digest = bytes(32)
    elif lie == "withhold-keys":
        del key_list.keys[2]  # party 104's keys are not sent, but the session still lists them
    elif lie == "unordered":
        entries[0], entries[1] = entries[1], entries[0]
    else:
        entries = []
    del key_list.session[:]
    key_list.session.extend(entries)
    with pytest.raises(SecAggError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        states[101].share_keys(key_list.SerializeToString(), trusted)
    assert not states[101].state.self_mask_seed  # nothing was shared


def test_split_key_lists_split_the_round(keys20) -> None:
    """The coordinator hides one party from half the round (none of them is its neighbour, so none can tell): the
    two halves compute different session ids, and a share dealt in one opens in neither the other half nor for
    the coordinator's benefit: every party with a neighbour across the split refuses to mask, and the round
    aborts before anything is revealed."""
    identities, trusted = keys20
    parties = list(range(101, 111))
    setup = common.make_setup(2, parties, SEGMENTS, neighbours=4, threshold=3, run=12)
    info = common.read_setup(setup)
    hidden = 101
    blind = set(parties) - info.neighbours[hidden] - {hidden}

    def rewrite(stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        if stage == "shares":
            for party in blind:
                key_list = secagg_pb2.SecAggKeyList.FromString(requests[party])
                kept = [entry for entry in key_list.session if entry.party != hidden]
                del key_list.session[:]
                key_list.session.extend(kept)
                requests[party] = key_list.SerializeToString()
        return requests

    refusals: dict[int, str] = {}
    with pytest.raises(SecAggAbort, match="aborted at masked input collection"):
        run_round(setup, random_inputs(parties, SEGMENTS, len(parties)), rewrite=rewrite, refusals=refusals,
                  identities=identities, trusted=trusted)
    across = {p for p in parties if any((q in blind) != (p in blind) for q in info.neighbours[p])}
    assert across and set(refusals) == across
    assert all("does not authenticate (altered, or dealt in another session of this setup)" in r
               for r in refusals.values())


def test_the_ledger_refuses_a_setup_twice_across_restarts_and_stays_whole(tmp_path: Path) -> None:
    first = SetupLedger(tmp_path / "node")
    setup = common.make_setup(4, [1, 2, 3], SEGMENTS, run=9)
    assert first.refusal(setup, 9, 4) is None
    first.claim(setup, 9, 4)
    again = SetupLedger(tmp_path / "node")  # a restarted node reads the same folder
    with pytest.raises(LedgerRefusal, match="already advertised keys for this secure-aggregation setup"):
        again.claim(setup, 9, 4)
    other = common.make_setup(3, [1, 2, 3], SEGMENTS, run=9)  # an earlier round of the same run, a new setup
    assert "already took part in secure round 4 of run 9; round 3 is not after it" in again.refusal(other, 9, 3)
    assert again.refusal(common.make_setup(3, [1, 2, 3], SEGMENTS, run=10), 10, 3) is None  # another run
    path = tmp_path / "node" / LEDGER_NAME
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_size == len(MAGIC) + RECORD.size + 32
    assert sorted(p.name for p in path.parent.iterdir()) == [LEDGER_NAME, LEDGER_NAME + ".lock"]  # no partial
    whole = path.read_bytes()
    for damaged in (whole[:-1], whole[:-RECORD.size], b"", whole[:-1] + bytes([whole[-1] ^ 1])):
        path.write_bytes(damaged)  # cut short (also by a whole record), emptied, or altered: never guessed at
        with pytest.raises(LedgerRefusal, match="is damaged"):
            again.refusal(other, 9, 5)


def test_the_ledger_keeps_the_newest_records_only_and_never_follows_a_planted_link(tmp_path: Path) -> None:
    ledger = SetupLedger(tmp_path)
    body = MAGIC + b"".join(RECORD.pack(i.to_bytes(32, "big"), 1, i) for i in range(1, MAX_RECORDS + 1))
    (tmp_path / LEDGER_NAME).write_bytes(body + hashlib.sha256(body).digest())
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / (LEDGER_NAME + ".partial")).symlink_to(victim)
    ledger.claim(common.make_setup(MAX_RECORDS + 1, [1, 2], SEGMENTS, run=1), 1, MAX_RECORDS + 1)
    data = (tmp_path / LEDGER_NAME).read_bytes()
    assert len(data) == len(MAGIC) + MAX_RECORDS * RECORD.size + 32
    assert RECORD.unpack_from(data, len(MAGIC))[2] == 2  # the oldest went, the newest came in
    assert victim.read_text() == "keep me"


# --- through the node's Flower handlers ------------------------------------------------------------------------

NODES = [101, 102, 103, 104, 105]  # n = 5, a complete graph, t = 3
LAYOUT = {"lora_A": (2, 8), "lora_B": (8, 2)}
SETTINGS = CodecSettings()


def _contexts(keys: Path, states: Path, run_id: int) -> dict[int, Context]:
    """Every node's Context in one Flower run (a fresh node state, as Flower gives each run), its node config
    naming its key, the pinned keys and its state directory."""
    return {node: Context(run_id=run_id, node_id=node, node_config={
                "partition-id": i, "num-partitions": len(NODES), IDENTITY_KEY: str(keys / f"node-{i}.key"),
                TRUSTED_NODES: str(keys), STATE_DIR_KEY: str(states / f"node-{i}")},
                          state=RecordDict(), run_config={})
            for i, node in enumerate(NODES)}


def _train_config(setup: bytes, round_id: int | None = None) -> TrainInstructions:
    """The secure round's train message as the coordinator builds it (the encoder preset's task)."""
    cfg = resolve({"preset": "encoder", "secagg": True, "num-clients": len(NODES), "out-dir": "unused"})
    if round_id is None:
        round_id = common.read_setup(setup).round if setup else 1
    return TrainInstructions(round=round_id, task=cfg.task.to_record(), uplink=SETTINGS, downlink=SETTINGS,
                             clients_per_round=len(NODES), secure=SecureRound(setup, 0.05, 16))


def _handler_deliver(contexts: dict[int, Context], setup: bytes):
    """One execution through the nodes: the train message's admission and key advertisement (client/secure.py, as
    the train handler runs them after training), then every stage through the ClientApp's own handler."""
    config = _train_config(setup)
    actions = {"share_keys": "secagg_share", "masked_input": "secagg_mask", "confirm": "secagg_confirm",
               "unmask": "secagg_unmask"}

    def deliver(node: int, step: str, request: bytes | None) -> bytes:
        context = contexts[node]
        if step == "advertise_keys":
            admit(config, context)
            update = {name: torch.full(shape, 0.001 * node) for name, shape in LAYOUT.items()}
            return start(config, context, LAYOUT, update)[0]
        metadata = Metadata(run_id=context.run_id, message_id=f"{step}-{node}", src_node_id=0, dst_node_id=node,
                            reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0,
                            message_type=f"train.{actions[step]}")
        message = make_message(metadata, RecordDict({messages.SECAGG: ConfigRecord({messages.SECAGG_INPUT:
                                                                                     request})}))
        reply = handlers.HANDLERS[f"train.{actions[step]}"](message, context)
        return reply.content[messages.SECAGG][messages.SECAGG_OUTPUT]  # type: ignore[return-value]

    return deliver


def _train_refusal(setup: bytes, context: Context, round_id: int | None = None) -> str:
    """The node's train handler's reply to a secure round on ``setup`` (for train round ``round_id``, by default
    the setup's): a refusal, before it built any model."""
    config = _train_config(setup, round_id).to_record()
    metadata = Metadata(run_id=context.run_id, message_id="t", src_node_id=0, dst_node_id=context.node_id,
                        reply_to_message_id="", group_id="1", created_at=time.time(), ttl=600.0, message_type="train")
    handlers._CACHE.clear()
    reply = handlers.train(make_message(metadata, RecordDict({messages.TRAIN_CONFIG: config})), context)
    assert messages.REFUSAL in reply.content and not handlers._CACHE, "the node trained instead of refusing"
    return str(reply.content[messages.REFUSAL]["reason"])


def _setup(run: int) -> bytes:
    segments = encoding_for(_train_config(b""), LAYOUT, len(NODES)).segments()
    return common.make_setup(1, NODES, segments, run=run)


def test_the_replay_through_the_nodes_handlers_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "node-keys"
    generate_node_keys(keys, len(NODES))
    states = tmp_path / "state"

    # The attack as written: a setup bound to no run, carried by several Flower runs.
    for run_id in (1, 2):
        contexts = _contexts(keys, states, run_id)
        assert all("setup is for run 0, this node is in run" in _train_refusal(_setup(0), contexts[node])
                   for node in NODES)

    # A coordinator that reuses a run id (it runs the SuperLink): the setup's first execution goes through and is
    # abandoned after the confirmations; a second Flower run with that id, and each node restarted on its state
    # directory, refuse the same setup before training.
    setup = _setup(7)
    attack = ReplayAttack(setup, target=103)
    first = attack.needed_stories()[0]
    assert not attack.harvest(_handler_deliver(_contexts(keys, states, 7), setup), first)
    for context in _contexts(keys, states, 7).values():
        assert "already advertised keys for this secure-aggregation setup" in _train_refusal(setup, context)
    with pytest.raises(SecAggAbort, match="0 parties remain"):
        attack.harvest(_handler_deliver(_contexts(keys, states, 7), setup), first)

    # A federation whose nodes all lost their state directories: the setup runs again, and the execution binding
    # alone stops the attack; every node refuses to reveal and says why.
    for index, story in enumerate(attack.needed_stories()):
        assert not attack.harvest(_handler_deliver(_contexts(keys, tmp_path / f"wiped-{index}", 7), setup), story)
    recovered, refusals = attack.isolate(_handler_deliver(_contexts(keys, tmp_path / "wiped-last", 7), setup))
    assert recovered is None and set(refusals) == set(NODES)
    assert all(REPLAY in reason for reason in refusals.values()), refusals


def test_a_signing_node_refuses_a_threshold_of_two_unless_its_floor_allows_it(tmp_path: Path) -> None:
    keys = tmp_path / "node-keys"
    generate_node_keys(keys, len(NODES))
    contexts = _contexts(keys, tmp_path / "state", 3)
    setup = common.make_setup(1, NODES, [(4, 20)], neighbours=2, threshold=2, run=3)
    assert "threshold is 2: a signing node accepts 3 or more unless its privacy floor sets min-threshold" in \
        _train_refusal(setup, contexts[101])
    contexts[101].node_config["privacy-floor"] = "min-threshold=2"
    admit(_train_config(setup), contexts[101])  # the node's own floor allows it


def test_a_signing_node_without_a_state_directory_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "node-keys"
    generate_node_keys(keys, len(NODES))
    context = _contexts(keys, tmp_path / "state", 3)[101]
    del context.node_config[STATE_DIR_KEY]
    assert "keeps no state directory (node config state-dir)" in _train_refusal(_setup(3), context)


def test_a_round_cannot_be_trained_again_under_a_new_setup(tmp_path: Path) -> None:
    """Found in review: a coordinator that sends one train round (same global state, seed and round) under setups
    of rising secure-round numbers, each over another party set, gets the same update from each node every time
    and can difference the sums. A node refuses a setup for another round than its train message, and under
    secure aggregation mixes a secret of its own into its training seed, so no two executions train alike."""
    keys = tmp_path / "node-keys"
    generate_node_keys(keys, len(NODES))
    context = _contexts(keys, tmp_path / "state", 3)[101]
    setup = common.make_setup(2, NODES, [(4, 20)], run=3)
    assert "the train message is for round 1 but its secure-aggregation setup for round 2" in _train_refusal(
        setup, context, round_id=1)
    plain = handlers._training_seed(5, 1, 0, secure=False)
    assert plain == handlers._training_seed(5, 1, 0, secure=False)  # reproducible without secure aggregation
    assert len({handlers._training_seed(5, 1, 0, secure=True) for _ in range(8)}) == 8

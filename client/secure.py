"""The client's side of secure aggregation: turn the update into ring words, then answer the protocol's stages.

The party's state (its secrets included) stays in this node's Flower node state between the stages' messages.
A node that pins the federation's node identities (node config ``secagg-trusted-nodes``, with its own key in
``secagg-identity-key``; in simulation ``FEDSQUEEZE_NODE_IDENTITIES``) signs its round keys and accepts its
neighbours' keys only when a distinct pinned identity signed them for this very setup
(``strategies/secagg/identity.py``). Such a node needs a state directory: it records there every setup it
advertises keys for and never takes part in one twice (``client/setup_ledger.py``).
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.launch import IDENTITY_KEY, TRUSTED_NODES  # node config: own key; the pinned node keys
from client.privacy_floor import CONTRIBUTED, FloorRefusal, PrivacyFloor
from client.setup_ledger import SetupLedger
from client.state_dir import STATE_DIR_KEY, state_root
from strategies import messages
from strategies.message_types import SECAGG_STAGES
from strategies.messages import TrainInstructions
from strategies.secagg import audit, common
from strategies.secagg.errors import SecAggError
from strategies.secagg.identity import SigningIdentity, TrustedIdentities
from strategies.secagg.party import Party
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import PartyInput, SecureEncoding, encode_input

PARTY_STATE = "secagg-party"
STAGES = dict(zip(SECAGG_STAGES, ("share_keys", "masked_input", "confirm", "unmask"), strict=True))  # Party steps
SIGNS = {"masked_input", "confirm"}  # steps a party signs with its own identity; the others check the pinned ones
IDENTITIES_ENV = "FEDSQUEEZE_NODE_IDENTITIES"  # simulation: a folder of node-<partition>.key / .pub (certs --nodes)


def node_identity(context: Context) -> tuple[SigningIdentity | None, TrustedIdentities | None]:
    """This node's signing identity and the identities it trusts, from its node config (in simulation from the
    folder ``FEDSQUEEZE_NODE_IDENTITIES`` names); (None, None) when it pins none. ValueError when only half is
    configured or a file does not load."""
    config = context.node_config
    key, trusted = config.get(IDENTITY_KEY), config.get(TRUSTED_NODES)
    folder = os.environ.get(IDENTITIES_ENV)
    if folder and not key and not trusted:
        key, trusted = str(Path(folder) / f"node-{int(config['partition-id'])}.key"), folder
    if not key and not trusted:
        return None, None
    if not key or not trusted:
        raise ValueError(f"node config needs both {IDENTITY_KEY} and {TRUSTED_NODES} to take part in "
                         "authenticated secure aggregation")
    return SigningIdentity.from_file(Path(str(key))), TrustedIdentities.from_path(Path(str(trusted)))


def setup_ledger(context: Context, signed: bool) -> SetupLedger | None:
    """The ledger of setups this node took part in, in its state directory; None for a node that keeps no state
    and does not sign. A signing node without a state directory is refused (FloorRefusal): it could not remember
    a setup across a restart."""
    root = state_root(context.node_config, int(context.node_config.get("partition-id", 0)))  # type: ignore[arg-type]
    if root is None and signed:
        raise FloorRefusal(f"this node signs its secure-aggregation keys but keeps no state directory (node config "
                           f"{STATE_DIR_KEY}), so it cannot remember which setups it took part in; refused")
    return None if root is None else SetupLedger(root)


def admit(instructions: TrainInstructions, context: Context) -> None:
    """Check a train message against this node's privacy floor and the checks every node makes of a secure round,
    before any training: FloorRefusal naming the first problem. A secure round must be bound to this Flower run
    and to the round its train message names, list exactly the ``clients-per-round`` its DP noise is scaled for,
    no more parties than the federation has pinned nodes, and be a setup this node never took part in, of a round
    after every secure round it took part in for this run (kept in its state directory across restarts when it
    has one, else for this run), so a coordinator can neither run one setup twice nor replay a round with a
    changed party set."""
    floor = PrivacyFloor.of_node(context.node_config)
    codec, dp, secure = instructions.uplink.codec, instructions.dp, instructions.secure
    if secure is None:
        floor.check(codec, dp, None, None)
        return
    try:
        setup = common.read_setup(secure.setup)
    except SecAggError as exc:
        raise FloorRefusal(f"the secure round's setup is malformed: {exc}") from exc
    _, trusted = node_identity(context)
    floor.check(codec, dp, len(setup.parties), setup.threshold, signed=trusted is not None)
    if setup.message.run != context.run_id:
        raise FloorRefusal(f"secagg setup is for run {setup.message.run}, this node is in run {context.run_id} "
                           "(a setup must name the Flower run that carries it)")
    if instructions.round != setup.round:
        raise FloorRefusal(f"the train message is for round {instructions.round} but its secure-aggregation setup "
                           f"for round {setup.round} (a replayed round under a new setup); refused")
    if instructions.clients_per_round != len(setup.parties):
        raise FloorRefusal(f"the round scales DP noise for {instructions.clients_per_round} clients but its "
                           f"secure-aggregation setup lists {len(setup.parties)} parties")
    if trusted is not None and len(setup.parties) > len(trusted.names):
        raise FloorRefusal(f"the setup lists {len(setup.parties)} parties and the federation has only "
                           f"{len(trusted.names)} pinned nodes")
    contributed = context.state[CONTRIBUTED] if CONTRIBUTED in context.state else None  # may span a run series
    same_run = contributed is not None and int(contributed.get("run", -1)) == context.run_id  # type: ignore[arg-type]
    last = int(contributed["round"]) if same_run else 0  # type: ignore[index, arg-type]
    if setup.round <= last:
        raise FloorRefusal(f"this node already contributed to secure round {last} of this run; round "
                           f"{setup.round} is not after it (a replayed round); refused")
    ledger = setup_ledger(context, signed=trusted is not None)
    reason = ledger.refusal(secure.setup, context.run_id, setup.round) if ledger is not None else None
    if reason is not None:
        raise FloorRefusal(f"{reason}; refused")
    context.state[CONTRIBUTED] = ConfigRecord({"run": context.run_id, "round": setup.round})


def encoding_for(instructions: TrainInstructions, layout: dict[str, tuple[int, ...]], parties: int
                 ) -> SecureEncoding:
    """The round's SecureEncoding from a secure round's train message (the coordinator builds the same one)."""
    secure, settings = instructions.secure, instructions.uplink
    if secure is None:
        raise ValueError("the train message does not start a secure round")
    entries = sum(math.prod(shape) for shape in layout.values())
    return SecureEncoding(settings=settings, quantizer=Quantizer(secure.clip, secure.precision_bits),
                          parties=parties, layout=layout, seed=instructions.round_seed or 0,
                          support=settings.impl.secure_round_parameter(secure.codec_parameter, entries))


def start(instructions: TrainInstructions, context: Context, layout: dict[str, tuple[int, ...]],
          update: dict[str, torch.Tensor]) -> tuple[bytes, PartyInput]:
    """Stage 1: quantise ``update`` and advertise this round's public keys; returns them and the party's input."""
    if instructions.secure is None:
        raise ValueError("the train message does not start a secure round")
    setup_bytes = instructions.secure.setup
    setup = common.read_setup(setup_bytes)
    encoding = encoding_for(instructions, layout, len(setup.parties))
    if encoding.segments() != list(setup.segments):
        raise ValueError(f"secagg setup segments {list(setup.segments)} differ from this client's encoding "
                         f"{encoding.segments()}")
    party_input = encode_input(encoding, update, np.random.default_rng(secrets.randbits(128)))
    identity, trusted = node_identity(context)
    ledger = setup_ledger(context, signed=trusted is not None)
    if ledger is not None:  # recorded before the keys leave this node, so a crash cannot forget them
        ledger.claim(setup_bytes, context.run_id, setup.round)
    party = Party.start(setup_bytes, context.node_id, party_input.words)
    audit.record(f"round{setup.round}-party{context.node_id}", party_input.words)
    keys = party.advertise_keys(identity)
    context.state[PARTY_STATE] = ConfigRecord({"state": party.save()})
    return keys, party_input


def answer(msg: Message, context: Context, action: str) -> Message:
    """Stages 2-4: run the party's next step on the coordinator's input and reply with its output."""
    if PARTY_STATE not in context.state:
        raise ValueError("no secure-aggregation round is under way on this node")
    party = Party.load(context.state[PARTY_STATE]["state"])  # type: ignore[arg-type]
    if party.setup.message.run != context.run_id:  # node state can outlive one run (a run series)
        raise ValueError(f"the secure-aggregation round under way on this node belongs to run "
                         f"{party.setup.message.run}, not to run {context.run_id}")
    request = msg.content[messages.SECAGG][messages.SECAGG_INPUT]
    identity, trusted = node_identity(context)
    step = STAGES[action]
    output = getattr(party, step)(request, identity if step in SIGNS else trusted)
    if action == SECAGG_STAGES[-1]:  # the last stage: nothing of the round is left to keep
        del context.state[PARTY_STATE]
    else:
        context.state[PARTY_STATE] = ConfigRecord({"state": party.save()})
    return Message(content=RecordDict({messages.SECAGG: ConfigRecord({messages.SECAGG_OUTPUT: output})}),
                   reply_to=msg)

"""The client's side of secure aggregation: turn the update into ring words, then answer the protocol's stages.

The party's state (its secrets included) stays in this node's Flower node state between the stages' messages.
A node that pins the federation's node identities (node config ``secagg-trusted-nodes``, with its own key in
``secagg-identity-key``; in simulation ``FEDSQUEEZE_NODE_IDENTITIES``) signs its round keys and accepts its
neighbours' keys only when a distinct pinned identity signed them for this very setup
(``strategies/secagg/identity.py``).
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
from strategies import messages
from strategies.codecs.registry import SEED_KEY, CodecSettings
from strategies.secagg import audit, common
from strategies.secagg.errors import SecAggError
from strategies.secagg.identity import SigningIdentity, TrustedIdentities
from strategies.secagg.party import Party
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import PartyInput, SecureEncoding, encode_input

PARTY_STATE = "secagg-party"
STAGES = {"secagg_share": "share_keys", "secagg_mask": "masked_input", "secagg_confirm": "confirm",
          "secagg_unmask": "unmask"}
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
    return SigningIdentity.from_file(Path(str(key))), _trusted(Path(str(trusted)))


def _trusted(path: Path) -> TrustedIdentities:
    if not path.is_dir():
        return TrustedIdentities.from_file(path)
    keys: dict[bytes, str] = {}
    for file in sorted(path.glob("*.pub")):
        keys.update(TrustedIdentities.from_file(file).names)
    if not keys:
        raise ValueError(f"{path} holds no .pub node keys")
    return TrustedIdentities(keys)


def admit(config: dict, context: Context, codec: str) -> None:
    """Check a train message against this node's privacy floor and the checks every node makes of a secure
    round, before any training: FloorRefusal naming the first problem. A secure round must be for this run, list
    exactly the ``clients-per-round`` its DP noise is scaled for, no more parties than the federation has pinned
    nodes, and come after every secure round this node already contributed to in this run (a round is never
    answered twice, so a coordinator cannot replay one with a changed party set)."""
    floor = PrivacyFloor.of_node(context.node_config)
    if not config.get("secagg", False):
        floor.check(config, codec, None, None)
        return
    try:
        setup = common.read_setup(config["secagg-setup"])  # type: ignore[arg-type]
    except (KeyError, SecAggError) as exc:
        raise FloorRefusal(f"the secure round's setup is missing or malformed: {exc}") from exc
    floor.check(config, codec, len(setup.parties), setup.threshold)
    if setup.message.run and setup.message.run != context.run_id:
        raise FloorRefusal(f"secagg setup is for run {setup.message.run}, this node is in run {context.run_id}")
    if int(config.get("clients-per-round", -1)) != len(setup.parties):  # type: ignore[arg-type]
        raise FloorRefusal(f"the round scales DP noise for {config.get('clients-per-round')} clients but its "
                           f"secure-aggregation setup lists {len(setup.parties)} parties")
    _, trusted = node_identity(context)
    if trusted is not None and len(setup.parties) > len(trusted.names):
        raise FloorRefusal(f"the setup lists {len(setup.parties)} parties and the federation has only "
                           f"{len(trusted.names)} pinned nodes")
    last = int(context.state[CONTRIBUTED]["round"]) if CONTRIBUTED in context.state else 0  # type: ignore[arg-type]
    if setup.round <= last:
        raise FloorRefusal(f"this node already contributed to secure round {last} of this run; round "
                           f"{setup.round} is not after it (a replayed round); refused")
    context.state[CONTRIBUTED] = ConfigRecord({"round": setup.round})


def encoding_for(config: dict, settings: CodecSettings, layout: dict[str, tuple[int, ...]], parties: int
                 ) -> SecureEncoding:
    """The round's SecureEncoding from the train config (the coordinator builds the same one)."""
    entries = sum(math.prod(shape) for shape in layout.values())
    return SecureEncoding(settings=settings, quantizer=Quantizer(float(config["secagg-clip"]),
                                                                 int(config["secagg-precision-bits"])),
                          parties=parties, layout=layout, seed=int(config.get(SEED_KEY, 0)),
                          support=settings.impl.secure_round_parameter(config, entries))


def start(config: dict, context: Context, settings: CodecSettings, layout: dict[str, tuple[int, ...]],
          update: dict[str, torch.Tensor]) -> tuple[bytes, PartyInput]:
    """Stage 1: quantise ``update`` and advertise this round's public keys; returns them and the party's input."""
    setup_bytes = config["secagg-setup"]
    setup = common.read_setup(setup_bytes)
    encoding = encoding_for(config, settings, layout, len(setup.parties))
    if encoding.segments() != list(setup.segments):
        raise ValueError(f"secagg setup segments {list(setup.segments)} differ from this client's encoding "
                         f"{encoding.segments()}")
    party_input = encode_input(encoding, update, np.random.default_rng(secrets.randbits(128)))
    identity, _ = node_identity(context)
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
    request = msg.content[messages.SECAGG][messages.SECAGG_INPUT]
    identity, trusted = node_identity(context)
    step = STAGES[action]
    output = getattr(party, step)(request, identity if step in SIGNS else trusted)
    if action == "secagg_unmask":
        del context.state[PARTY_STATE]
    else:
        context.state[PARTY_STATE] = ConfigRecord({"state": party.save()})
    return Message(content=RecordDict({messages.SECAGG: ConfigRecord({messages.SECAGG_OUTPUT: output})}),
                   reply_to=msg)

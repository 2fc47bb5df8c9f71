"""The client's side of secure aggregation: turn the update into ring words, then answer the protocol's stages.

The party's state (its secrets included) stays in this node's Flower node state between the stages' messages.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from strategies import messages
from strategies.codecs.registry import SEED_KEY, CodecSettings
from strategies.secagg import audit, common
from strategies.secagg.party import Party
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import PartyInput, SecureEncoding, encode_input

PARTY_STATE = "secagg-party"
STAGES = {"secagg_share": "share_keys", "secagg_mask": "masked_input", "secagg_unmask": "unmask"}


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
    party = Party.start(setup_bytes, context.node_id, party_input.words)
    audit.record(f"round{setup.round}-party{context.node_id}", party_input.words)
    keys = party.advertise_keys()
    context.state[PARTY_STATE] = ConfigRecord({"state": party.save()})
    return keys, party_input


def answer(msg: Message, context: Context, action: str) -> Message:
    """Stages 2-4: run the party's next step on the coordinator's input and reply with its output."""
    if PARTY_STATE not in context.state:
        raise ValueError("no secure-aggregation round is under way on this node")
    party = Party.load(context.state[PARTY_STATE]["state"])  # type: ignore[arg-type]
    output = getattr(party, STAGES[action])(msg.content[messages.SECAGG][messages.SECAGG_INPUT])
    if action == "secagg_unmask":
        del context.state[PARTY_STATE]
    else:
        context.state[PARTY_STATE] = ConfigRecord({"state": party.save()})
    return Message(content=RecordDict({messages.SECAGG: ConfigRecord({messages.SECAGG_OUTPUT: output})}),
                   reply_to=msg)

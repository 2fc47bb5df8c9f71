"""The message schema both apps use: the record names shared by the ClientApp and the ServerApp, the train
message's instructions as one typed definition (``TrainInstructions``), and the downlink's record layout (Flower
records; nothing here imports either app). The message types themselves are in ``strategies.message_types``."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord

from strategies.codecs.registry import CodecSettings
from strategies.downlink import DownlinkMessage
from strategies.privacy import DPSettings
from strategies.settings import typed

DOWNLINK = "downlink"              # ConfigRecord: the global state, full or as compressed aggregates (downlink)
TRAIN_CONFIG = "train-config"      # ConfigRecord: TrainInstructions.to_record()
UPDATE = "update"                  # ConfigRecord: {"encoded-update": bytes} (uplink)
ENCODED_UPDATE = "encoded-update"
SECAGG_KEYS = "secagg-public-keys"  # in UPDATE instead of ENCODED_UPDATE when the round is securely aggregated
SECAGG = "secagg"                  # ConfigRecord of the later secure-aggregation stages
SECAGG_INPUT = "input"
SECAGG_OUTPUT = "output"
FEDERATION_ID = "federation-id"    # names the federation's node-side error-feedback residuals
ENROLMENT = "enrolment"            # MetricRecord {"partition-id", "num-partitions"}: a node's enrolment reply
REFUSAL = "refusal"                # ConfigRecord {"reason": str}: the node refused the round (its privacy floor)
METRICS = "metrics"                # MetricRecord: num-examples, train-loss, bytes-up, bytes-down, train-s
# Figures that describe one client's own update or data. Under secure aggregation the coordinator may learn only
# the sum, so a client does not send these then, and the coordinator records none of them if one does.
PRIVATE_UNDER_SECAGG = ("train-loss", "residual-norm", "residual-carried")


# The train message's own keys (TrainInstructions); the task's fields and the codecs' options are declared with
# their dataclasses (client/task/spec.py, strategies/codecs/<name>/options.py) and travel beside them.
_ROUND, _CLIENTS, _ROUND_SEED, _ERROR_FEEDBACK = "round", "clients-per-round", "round-seed", "error-feedback"
_DP_NOISE, _DP_CLIP = "dp-noise-multiplier", "dp-clip"
# ``secagg`` is sent on every round (True or False), so that a node that reads an older schema never takes a
# secure round for a plain one: it fails on the keys it cannot find instead of sending its update in the clear.
_SECAGG_FLAG = "secagg"
_SECAGG_SETUP, _SECAGG_CLIP, _SECAGG_BITS = "secagg-setup", "secagg-clip", "secagg-precision-bits"
_SECAGG_PARAMETER = "secagg-codec-parameter"
DOWNLINK_PREFIX = "downlink-"  # the downlink codec's options, as the run config names them


@dataclass(frozen=True)
class SecureRound:
    """The secure-aggregation part of a train message: the round's SecAggSetup (bytes, strategies/secagg), the
    quantiser's range and precision, and the codec's round parameter as the codec coded it (ComPEFT: the shared
    support; empty for the others)."""

    setup: bytes
    clip: float
    precision_bits: int
    codec_parameter: bytes = b""


@dataclass(frozen=True)
class TrainInstructions:
    """Everything a train message tells a node, written by the coordinator and read by the node, never key by key:
    the round, the task (TaskSpec's fields, as ``TaskSpec.to_record`` gives them), the uplink and downlink codecs,
    how many clients the round samples (DP noise is scaled to it), error feedback, the DP settings, the
    federation (names the node's residual folder), the round's shared seed for codecs that need one, and, under
    secure aggregation, the round's ``SecureRound``."""

    round: int
    task: Mapping[str, str | int | float]
    uplink: CodecSettings
    downlink: CodecSettings
    clients_per_round: int
    error_feedback: bool = False
    dp: DPSettings = field(default_factory=DPSettings)
    federation_id: str = ""
    round_seed: int | None = None
    secure: SecureRound | None = None

    def to_record(self) -> ConfigRecord:
        """The flat ConfigRecord that travels."""
        entries: dict[str, Any] = {**self.task, **self.uplink.to_record(),
                                   **self.downlink.to_record(prefix=DOWNLINK_PREFIX),
                                   _ROUND: self.round, _CLIENTS: self.clients_per_round,
                                   _ERROR_FEEDBACK: self.error_feedback, _DP_NOISE: self.dp.noise_multiplier,
                                   _DP_CLIP: self.dp.clip, FEDERATION_ID: self.federation_id,
                                   _SECAGG_FLAG: self.secure is not None}
        if self.round_seed is not None:
            entries[_ROUND_SEED] = self.round_seed
        if self.secure is not None:
            entries.update({_SECAGG_SETUP: self.secure.setup, _SECAGG_CLIP: self.secure.clip,
                            _SECAGG_BITS: self.secure.precision_bits, _SECAGG_PARAMETER: self.secure.codec_parameter})
        return ConfigRecord(entries)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], task_fields: Collection[str]) -> TrainInstructions:
        """Inverse of ``to_record``: ValueError naming the first key that is unknown (``task_fields`` are the
        task's), missing or of the wrong type."""
        record = dict(record)
        uplink = CodecSettings.from_record(record)
        downlink = CodecSettings.from_record(record, prefix=DOWNLINK_PREFIX)
        secure = _typed(record, _SECAGG_FLAG, bool)
        known = {*task_fields, *uplink.to_record(), *downlink.to_record(prefix=DOWNLINK_PREFIX), _ROUND, _CLIENTS,
                 _ERROR_FEEDBACK, _DP_NOISE, _DP_CLIP, FEDERATION_ID, _ROUND_SEED, _SECAGG_FLAG,
                 *((_SECAGG_SETUP, _SECAGG_CLIP, _SECAGG_BITS, _SECAGG_PARAMETER) if secure else ())}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"train message has an unknown key '{unknown[0]}'")
        return cls(
            round=_typed(record, _ROUND, int), task={k: v for k, v in record.items() if k in task_fields},
            uplink=uplink, downlink=downlink, clients_per_round=_typed(record, _CLIENTS, int),
            error_feedback=_typed(record, _ERROR_FEEDBACK, bool),
            dp=DPSettings(_typed(record, _DP_NOISE, float), _typed(record, _DP_CLIP, float)),
            federation_id=_typed(record, FEDERATION_ID, str),
            round_seed=_typed(record, _ROUND_SEED, int) if _ROUND_SEED in record else None,
            secure=SecureRound(_typed(record, _SECAGG_SETUP, bytes), _typed(record, _SECAGG_CLIP, float),
                               _typed(record, _SECAGG_BITS, int), _typed(record, _SECAGG_PARAMETER, bytes))
            if secure else None)


def _typed(record: Mapping[str, Any], key: str, kind: type) -> Any:
    """``record[key]`` when it is a ``kind`` (an int stands for a float); ValueError naming the key otherwise."""
    if key not in record:
        raise ValueError(f"train message lacks '{key}'")
    return typed(key, kind(), record[key], source="train message key")


def downlink_record(message: DownlinkMessage) -> ConfigRecord:
    """A DownlinkMessage as a ConfigRecord (payloads stay protobuf bytes)."""
    return ConfigRecord({"kind": message.kind, "payloads": list(message.payloads),
                         "base-version": message.base_version, "version": message.version,
                         "digest": message.digest})


def downlink_from_record(record: ConfigRecord) -> DownlinkMessage:
    """Inverse of ``downlink_record``; raises ValueError naming a missing or mistyped entry."""
    try:
        payloads = record["payloads"]
        if isinstance(payloads, bytes):
            payloads = [payloads]
        if not isinstance(payloads, list) or not all(isinstance(p, bytes) for p in payloads):
            raise ValueError("downlink payloads must be bytes")
        return DownlinkMessage(kind=str(record["kind"]), payloads=payloads,
                               base_version=int(record["base-version"]),  # type: ignore[arg-type]
                               version=int(record["version"]), digest=str(record["digest"]))  # type: ignore[arg-type]
    except KeyError as exc:
        raise ValueError(f"downlink record lacks {exc.args[0]!r}") from exc

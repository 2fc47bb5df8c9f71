"""The message schema both apps use: record names shared by the ClientApp and the ServerApp, and the downlink's
record layout (Flower records; nothing here imports either app)."""

from __future__ import annotations

from flwr.app import ConfigRecord

from strategies.downlink import DownlinkMessage

DOWNLINK = "downlink"              # ConfigRecord: the global state, full or as compressed aggregates (downlink)
TRAIN_CONFIG = "train-config"      # ConfigRecord: TaskSpec fields + round + codec options
UPDATE = "update"                  # ConfigRecord: {"encoded-update": bytes} (uplink)
ENCODED_UPDATE = "encoded-update"
SECAGG_KEYS = "secagg-public-keys"  # in UPDATE instead of ENCODED_UPDATE when the round is securely aggregated
SECAGG = "secagg"                  # ConfigRecord of the later secure-aggregation stages
SECAGG_INPUT = "input"
SECAGG_OUTPUT = "output"
FEDERATION_ID = "federation-id"    # train config: names the federation's node-side error-feedback residuals
ENROLMENT = "enrolment"            # MetricRecord {"partition-id", "num-partitions"}: a node's enrolment reply
REFUSAL = "refusal"                # ConfigRecord {"reason": str}: the node refused the round (its privacy floor)
METRICS = "metrics"                # MetricRecord: num-examples, train-loss, bytes-up, bytes-down, train-s
# Figures that describe one client's own update or data. Under secure aggregation the coordinator may learn only
# the sum, so a client does not send these then, and the coordinator records none of them if one does.
PRIVATE_UNDER_SECAGG = ("train-loss", "residual-norm", "residual-carried")


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

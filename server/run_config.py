"""The run config: defaults, presets and validation of every key a user can set.

Defaults mirror ``[tool.flwr.app.config]`` in pyproject.toml (a test keeps them equal). Task keys left at
"" or 0 take the chosen preset's value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from client.task.partition import PARTITIONERS
from client.task.presets import PRESETS
from client.task.spec import TaskSpec
from strategies.codecs.registry import CODEC_NAMES, CODECS, CodecSettings, CompeftOptions, get_codec
from strategies.privacy import DPSettings
from strategies.robust import AGGREGATION_RULES
from strategies.secagg import graph
from strategies.server_optimizers import ServerOptimizerSettings

DEFAULTS: dict[str, str | int | float | bool] = {
    "preset": "sft",
    "num-server-rounds": 3,
    "num-clients": 3,
    "fraction-train": 1.0,
    "min-train-clients": 0,
    "codec": "dense",
    "dense-dtype": "fp32",
    "compeft-density": 0.05,
    "compeft-alpha-scale": 1.0,
    "compeft-scope": "global",
    "error-feedback": True,
    "downlink-codec": "dense",
    "downlink-density": 0.05,
    "ferret-dim": 64,
    "ferret-block-size": 65536,
    "trainable": "lora",
    "compeft-support": "client",
    "secagg": False,
    "secagg-neighbours": 0,
    "secagg-threshold": 0,
    "secagg-clip": 0.0,
    "secagg-precision-bits": 16,
    "dp-noise-multiplier": 0.0,
    "dp-clip": 0.0,
    "dp-delta": 1e-5,
    "seed": 0,
    "model": "",
    "dataset": "",
    "topics": "",
    "per-topic": 0,
    "heldout": 0,
    "max-length": 0,
    "lora-r": 0,
    "lora-alpha": 0,
    "lora-dropout": 0.0,
    "lora-targets": "",
    "lr": 0.0,
    "local-steps": 0,
    "batch-size": 0,
    "precision": "auto",
    "device": "auto",
    "quantization": "none",
    "partitioner": "",
    "dirichlet-alpha": 1.0,
    "round-timeout-s": 3600.0,
    "wait-for-clients-s": 300.0,
    "out-dir": "",
    "resume": False,
    "aggregation": "fedavg",
    "aggregation-trim": 0.2,
    "aggregation-byzantine": 0,
    "aggregation-keep": 0,
    "aggregation-norm-bound": 0.0,
    "max-update-norm": 0.0,
    "max-update-bytes": 0,
    "eval-every": 1,
    "eval-samples": 0,
    "max-new-tokens": 0,
    "data-columns": "",
    "server-optimizer": "none",
    "server-lr": 0.0,
    "server-momentum": 0.9,
    "server-beta1": 0.9,
    "server-beta2": 0.99,
    "server-tau": 1e-3,
    "fedprox-mu": 0.0,
}

# Keys a resumed run may change: where it writes, how long it waits, and how many rounds it runs in all.
RESUMABLE_CHANGES = ("out-dir", "resume", "num-server-rounds", "round-timeout-s", "wait-for-clients-s")

# Keys whose "" / 0 default means "the preset decides".
PRESET_KEYS = ("kind", "model", "dataset", "topics", "per-topic", "heldout", "max-length", "lora-r", "lora-alpha",
               "lora-targets", "lr", "local-steps", "batch-size", "partitioner", "eval-samples", "max-new-tokens")


class ConfigError(ValueError):
    """A run-config key or value that fedsqueeze cannot use; the message names it."""


@dataclass(frozen=True)
class SecureSettings:
    """Secure aggregation: on/off, neighbour degree and threshold (0: defaults from the clients per round), the
    per-entry clipping range (0: twice AdamW's largest move, ``2 * lr * local-steps``) and quantisation bits."""

    enabled: bool = False
    neighbours: int = 0
    threshold: int = 0
    clip: float = 0.0
    precision_bits: int = 16

    def to_record(self) -> dict[str, int | float | bool]:
        """ConfigRecord entries for the clients."""
        return {"secagg": self.enabled, "secagg-clip": self.clip, "secagg-precision-bits": self.precision_bits}


@dataclass(frozen=True)
class AggregationSettings:
    """How the coordinator combines the round's accepted updates: ``fedavg`` or a robust rule
    (strategies/robust.py), with its options (0 = the rule's default for the round's client count)."""

    rule: str = "fedavg"
    trim: float = 0.2
    byzantine: int = 0
    keep: int = 0
    norm_bound: float = 0.0


@dataclass(frozen=True)
class UpdateLimits:
    """Bounds every incoming update must meet (0 = no norm bound; byte limit 0 = twice the dense fp32 size)."""

    max_norm: float = 0.0
    max_bytes: int = 0


@dataclass(frozen=True)
class RunConfig:
    """A validated run config: federation settings plus the TaskSpec every client receives."""

    preset: str
    num_server_rounds: int
    num_clients: int
    fraction_train: float
    min_train_clients: int
    uplink: CodecSettings
    error_feedback: bool
    downlink: CodecSettings
    seed: int
    round_timeout_s: float
    wait_for_clients_s: float
    out_dir: str
    task: TaskSpec
    secure: SecureSettings
    dp: DPSettings
    dp_delta: float
    resume: bool = False
    eval_every: int = 1
    aggregation: AggregationSettings = field(default_factory=lambda: AggregationSettings())
    limits: UpdateLimits = field(default_factory=lambda: UpdateLimits())
    server_optimizer: ServerOptimizerSettings = field(default_factory=lambda: ServerOptimizerSettings())
    values: Mapping[str, object] = field(default_factory=dict)  # every key as resolved: what a checkpoint keeps

    @property
    def codec(self) -> str:
        """The uplink codec's name."""
        return self.uplink.codec

    def codec_options(self) -> dict[str, str | float | bool]:
        """The codec settings clients need, as ConfigRecord entries (uplink, error feedback, downlink)."""
        return {**self.uplink.to_record(), "error-feedback": self.error_feedback,
                **self.downlink.to_record(prefix="downlink-"), **self.secure.to_record(),
                "dp-noise-multiplier": self.dp.noise_multiplier, "dp-clip": self.dp.clip}

    def output_dir(self) -> Path:
        """Where this run writes its outputs (``out-dir``, else ``runs/<preset>``)."""
        return Path(self.out_dir).expanduser() if self.out_dir else Path("runs") / self.preset


def _typed(key: str, value: object) -> str | int | float | bool:
    default = DEFAULTS[key]
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"run-config key '{key}' expects {type(default).__name__}, got {value!r}")
    return value  # type: ignore[return-value]


def resolve(user_config: Mapping[str, object]) -> RunConfig:
    """Merge ``user_config`` over the defaults and the preset, and validate everything.

    Raises ConfigError naming the first unknown key, mistyped value or out-of-range setting.
    """
    unknown = sorted(set(user_config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown run-config key '{unknown[0]}' (known keys: {', '.join(DEFAULTS)})")
    values = {key: _typed(key, user_config.get(key, default)) for key, default in DEFAULTS.items()}
    preset_name = str(values["preset"])
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset '{preset_name}' (choose from {', '.join(PRESETS)})")
    preset = PRESETS[preset_name]
    task_values: dict[str, object] = {}
    for key in PRESET_KEYS:
        chosen = values.get(key)
        task_values[key] = preset[key] if chosen in (None, "", 0, 0.0) else chosen
    for key in ("seed", "lora-dropout", "precision", "device", "dirichlet-alpha", "trainable", "quantization",
                "data-columns", "fedprox-mu"):
        task_values[key] = values[key]
    if values["trainable"] == "full" and values["lr"] in (0, 0.0):
        task_values["lr"] = preset["full-lr"]  # full-parameter tuning wants a far smaller step than LoRA
    uplink, downlink = _codec_settings(values)
    if task_values["partitioner"] not in PARTITIONERS:
        raise ConfigError(f"partitioner '{task_values['partitioner']}' is not one of {', '.join(PARTITIONERS)}")
    if int(values["eval-every"]) < 1:
        raise ConfigError(f"eval-every must be at least 1, got {values['eval-every']}")
    if not float(values["dirichlet-alpha"]) > 0:
        raise ConfigError("dirichlet-alpha must be positive")
    if int(values["num-server-rounds"]) < 1:
        raise ConfigError(f"num-server-rounds must be at least 1, got {values['num-server-rounds']}")
    if int(values["num-clients"]) < 1:
        raise ConfigError(f"num-clients must be at least 1, got {values['num-clients']}")
    if not 0.0 < float(values["fraction-train"]) <= 1.0:
        raise ConfigError(f"fraction-train must be in (0, 1], got {values['fraction-train']}")
    if not 0 <= int(values["min-train-clients"]) <= int(values["num-clients"]):
        raise ConfigError("min-train-clients must be between 0 and num-clients")
    for key in ("round-timeout-s", "wait-for-clients-s"):
        if not float(values[key]) > 0:
            raise ConfigError(f"{key} must be positive")
    try:
        task = TaskSpec.from_record({k.replace("-", "_"): v for k, v in task_values.items()})
        dp = DPSettings(noise_multiplier=float(values["dp-noise-multiplier"]), clip=float(values["dp-clip"]))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not 0.0 < float(values["dp-delta"]) < 1.0:
        raise ConfigError(f"dp-delta must be in (0, 1), got {values['dp-delta']}")
    per_round = max(1, round(float(values["fraction-train"]) * int(values["num-clients"])))
    secure = _secure_settings(values, task, per_round=per_round)
    aggregation = _aggregation_settings(values, secure.enabled)
    if float(values["max-update-norm"]) < 0 or int(values["max-update-bytes"]) < 0:
        raise ConfigError("max-update-norm and max-update-bytes must be >= 0 (0: no norm bound / the default size)")
    return RunConfig(
        preset=preset_name,
        num_server_rounds=int(values["num-server-rounds"]),
        num_clients=int(values["num-clients"]),
        fraction_train=float(values["fraction-train"]),
        min_train_clients=int(values["min-train-clients"]),
        uplink=uplink,
        error_feedback=bool(values["error-feedback"]),
        downlink=downlink,
        seed=int(values["seed"]),
        round_timeout_s=float(values["round-timeout-s"]),
        wait_for_clients_s=float(values["wait-for-clients-s"]),
        out_dir=str(values["out-dir"]),
        task=task,
        secure=secure,
        dp=dp,
        dp_delta=float(values["dp-delta"]),
        resume=bool(values["resume"]),
        eval_every=int(values["eval-every"]),
        aggregation=aggregation,
        limits=UpdateLimits(float(values["max-update-norm"]), int(values["max-update-bytes"])),
        server_optimizer=_server_optimizer(values, uplink),
        values=dict(values),
    )


def _codec_settings(values: Mapping[str, object]) -> tuple[CodecSettings, CodecSettings]:
    """The uplink and downlink codecs with their options; a codec whose aggregate is a payload (Ferret) is its
    own downlink."""
    for key in ("codec", "downlink-codec"):
        if values[key] not in CODEC_NAMES:
            raise ConfigError(f"unknown {key} '{values[key]}' (choose from {', '.join(CODEC_NAMES)})")
    up, down = get_codec(str(values["codec"])), get_codec(str(values["downlink-codec"]))
    if not 0.0 < float(values["downlink-density"]) <= 1.0:  # type: ignore[arg-type]
        raise ConfigError(f"downlink-density must be in (0, 1], got {values['downlink-density']}")
    try:
        up.check_downlink(down)
        for codec in CODECS.values():  # every codec's keys are checked, chosen or not
            codec.options_type.from_record(values)
        uplink = CodecSettings(up.name, up.options_type.from_record(values))
        if up.aggregate_is_payload:
            return uplink, uplink
        options = (CompeftOptions.from_record({**values, "compeft-density": values["downlink-density"]})
                   if down.options_type is CompeftOptions else down.options_type())
        return uplink, CodecSettings(down.name, options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _server_optimizer(values: Mapping[str, object], uplink: CodecSettings) -> ServerOptimizerSettings:
    """Check the server-optimiser keys; refuse an optimiser where the aggregate is coefficients on fresh
    directions each round (Ferret), which per-entry moments cannot follow."""
    try:
        settings = ServerOptimizerSettings(
            str(values["server-optimizer"]), float(values["server-lr"]),  # type: ignore[arg-type]
            float(values["server-momentum"]), float(values["server-beta1"]),  # type: ignore[arg-type]
            float(values["server-beta2"]), float(values["server-tau"]))  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if settings.enabled and uplink.impl.aggregate_is_payload:
        raise ConfigError(f"server-optimizer={settings.name} keeps per-entry moments across rounds, but a "
                          f"{uplink.codec} round's aggregate is coefficients on that round's own random directions "
                          "(a new basis each round), and stepping in parameter space would turn it into a dense "
                          f"delta the coefficient downlink cannot carry: use server-optimizer=none with "
                          f"codec={uplink.codec}")
    return settings


def _aggregation_settings(values: Mapping[str, object], secure: bool) -> AggregationSettings:
    """Check the aggregation keys: a known rule, sane options, and no robust rule where no single update is seen."""
    rule = str(values["aggregation"])
    if rule not in AGGREGATION_RULES:
        raise ConfigError(f"unknown aggregation '{rule}' (choose from {', '.join(AGGREGATION_RULES)})")
    if rule != "fedavg" and secure:
        raise ConfigError(f"aggregation={rule} needs each client's update, which secure aggregation hides: "
                          "use aggregation=fedavg with secagg=true (bound updates with secagg-clip and DP instead)")
    if rule == "sign-majority" and not get_codec(str(values["codec"])).ternary:
        raise ConfigError("aggregation=sign-majority votes on ternary ComPEFT updates: it needs codec=compeft")
    trim = float(values["aggregation-trim"])  # type: ignore[arg-type]
    if not 0.0 <= trim < 0.5:
        raise ConfigError(f"aggregation-trim must be in [0, 0.5), got {trim}")
    byzantine, keep = int(values["aggregation-byzantine"]), int(values["aggregation-keep"])  # type: ignore[arg-type]
    norm_bound = float(values["aggregation-norm-bound"])  # type: ignore[arg-type]
    if byzantine < 0 or keep < 0 or norm_bound < 0:
        raise ConfigError("aggregation-byzantine, aggregation-keep and aggregation-norm-bound must be >= 0")
    return AggregationSettings(rule, trim, byzantine, keep, norm_bound)


def _secure_settings(values: Mapping[str, object], task: TaskSpec, per_round: int) -> SecureSettings:
    """Check the secure-aggregation keys against the codec and the clients per round."""
    support = str(values["compeft-support"])
    if support not in ("client", "shared"):
        raise ConfigError(f"compeft-support '{support}' is not one of client, shared")
    enabled = bool(values["secagg"])
    if support == "shared" and not enabled:
        raise ConfigError("compeft-support=shared is the secure-aggregation mode of compeft: it needs secagg=true")
    if not enabled:
        return SecureSettings()
    uplink = _codec_settings(values)[0]
    try:
        uplink.impl.check_secure(uplink.options, shared_support=support == "shared")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if per_round < 2:
        raise ConfigError(f"secagg=true needs at least 2 clients per round, this run samples {per_round}")
    neighbours = int(values["secagg-neighbours"]) or graph.default_neighbours(per_round)  # type: ignore[arg-type]
    neighbours = min(neighbours, per_round - 1)
    threshold = int(values["secagg-threshold"]) or graph.default_threshold(neighbours)  # type: ignore[arg-type]
    try:
        graph.check_graph(per_round, neighbours, threshold)
    except ValueError as exc:
        raise ConfigError(f"secagg-neighbours / secagg-threshold: {exc}") from exc
    clip = float(values["secagg-clip"]) or 2.0 * task.lr * task.local_steps  # type: ignore[arg-type]
    if not clip > 0 or clip == float("inf"):
        raise ConfigError(f"secagg-clip must be a positive finite number, got {values['secagg-clip']}")
    bits = int(values["secagg-precision-bits"])  # type: ignore[arg-type]
    if not 2 <= bits <= 40:
        raise ConfigError(f"secagg-precision-bits must be in 2..40, got {bits}")
    return SecureSettings(True, neighbours, threshold, clip, bits)

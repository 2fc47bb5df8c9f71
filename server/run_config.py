"""The run config: every key a user can set, declared once in the settings dataclasses below (key, default, help,
checks), and its resolution against a preset.

``DEFAULTS``, ``PRESET_KEYS``, the clients' ConfigRecords and the manual's key tables are derived from the
declarations; pyproject.toml's ``[tool.flwr.app.config]`` (which Flower reads) is kept equal to ``DEFAULTS`` by a
test. Task keys left at "" or 0 take the chosen preset's value. ``python -m server.run_config > docs/run-config.md``
writes the reference page (a test keeps the page equal to this output).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from client.task.presets import PRESETS
from client.task.spec import TaskSpec
from client.task.task_keys import TaskKeys
from strategies.codecs.registry import CODEC_NAMES, CODECS, CodecSettings, CompeftOptions, get_codec
from strategies.messages import DOWNLINK_PREFIX
from strategies.privacy import DPSettings
from strategies.robust import AGGREGATION_RULES
from strategies.secagg import graph
from strategies.server_optimizers import ServerOptimizerSettings
from strategies.settings import KeyedSettings, setting, typed

# Keys a resumed run may change: where it writes, how long it waits, and how many rounds it runs in all.
RESUMABLE_CHANGES = ("out-dir", "resume", "overwrite", "num-server-rounds", "round-timeout-s", "wait-for-clients-s")
# Checkpoints are numbered with six digits (round-NNNNNN.safetensors), and a round takes seconds at the least, so a
# million rounds would already be weeks of running: a larger count is a typo.
MAX_ROUNDS = 999_999
# Every key travels to the clients in a Flower ConfigRecord, whose integers are signed 64-bit.
INT64 = range(-(2**63), 2**63)


class ConfigError(ValueError):
    """A run-config key or value that fedsqueeze cannot use; the message names it."""


@dataclass(frozen=True)
class RunSettings(KeyedSettings):
    """The federation: preset, rounds, clients, sampling, seed, time limits, outputs."""

    preset: str = setting("preset", "sft", "`sft` (instruction tuning, the default), `fortunes` or `encoder`")
    num_server_rounds: int = setting("num-server-rounds", 3, "rounds to run")
    num_clients: int = setting("num-clients", 3, "client nodes (simulated clients, or SuperNodes to wait for)")
    fraction_train: float = setting("fraction-train", 1.0, "fraction of the clients sampled each round, in (0, 1]")
    min_train_clients: int = setting("min-train-clients", 0, "accepted updates a round needs to be applied (0: 1)")
    seed: int = setting("seed", 0, "seeds the adapter, the data split, sampling and the shared randomness")
    round_timeout_s: float = setting("round-timeout-s", 3600.0, "seconds a round waits for replies")
    wait_for_clients_s: float = setting("wait-for-clients-s", 300.0, "seconds the coordinator waits for the nodes")
    out_dir: str = setting("out-dir", "", "where a deployed run writes (default `runs/<preset>`)")
    resume: bool = setting("resume", False, "continue from the checkpoint in the output directory")
    overwrite: bool = setting("overwrite", False, "replace an earlier run in the output directory (deployed runs)")
    eval_every: int = setting("eval-every", 1, "score the global model every n rounds (and after the last)")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        for key, value in (("num-server-rounds", self.num_server_rounds), ("num-clients", self.num_clients),
                           ("eval-every", self.eval_every)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        if self.num_server_rounds > MAX_ROUNDS:
            raise ValueError(f"num-server-rounds must be in 1..{MAX_ROUNDS} (checkpoints are numbered with six "
                             f"digits), got {self.num_server_rounds}")
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        if not 0 <= self.min_train_clients <= self.num_clients:
            raise ValueError("min-train-clients must be between 0 and num-clients")
        for key, value in (("round-timeout-s", self.round_timeout_s), ("wait-for-clients-s", self.wait_for_clients_s)):
            if not value > 0:
                raise ValueError(f"{key} must be positive")

    @property
    def per_round(self) -> int:
        """Clients sampled per round."""
        return max(1, round(self.fraction_train * self.num_clients))


@dataclass(frozen=True)
class CodecChoice(KeyedSettings):
    """Which codec goes up and which down (each codec's options are declared in strategies/codecs/<name>/options.py)."""

    codec: str = setting("codec", "dense", "uplink codec: `dense`, `compeft` or `ferret`")
    error_feedback: bool = setting("error-feedback", True, "each client keeps `delta − decoded(delta)` in its node "
                                   "state and adds it to its next delta")
    downlink_codec: str = setting("downlink-codec", "dense", "`compeft`: the coordinator sends the *compressed* "
                                  "aggregate (with its own error feedback)")
    downlink_density: float = setting("downlink-density", 0.05, "density of the compressed downlink")

    def __post_init__(self) -> None:
        for key, name in (("codec", self.codec), ("downlink-codec", self.downlink_codec)):
            if name not in CODEC_NAMES:
                raise ValueError(f"unknown {key} '{name}' (choose from {', '.join(CODEC_NAMES)})")
        if not 0.0 < self.downlink_density <= 1.0:
            raise ValueError(f"downlink-density must be in (0, 1], got {self.downlink_density}")


@dataclass(frozen=True)
class SecureSettings(KeyedSettings):
    """Secure aggregation: on/off, neighbour degree and threshold (0: defaults from the clients per round), the
    per-entry clipping range (0: twice AdamW's largest move, ``2 * lr * local-steps``) and quantisation bits."""

    enabled: bool = setting("secagg", False, "secure aggregation on/off")
    neighbours: int = setting("secagg-neighbours", 0, "k (0: 2⌈log2 n⌉, at most n − 1)")
    threshold: int = setting("secagg-threshold", 0, "t (0: strict majority of k + 1)")
    clip: float = setting("secagg-clip", 0.0, "per-entry range (0: 2 × lr × local-steps, twice AdamW's largest move)")
    precision_bits: int = setting("secagg-precision-bits", 16, "quantisation levels 2^p − 1")
    compeft_support: str = setting("compeft-support", "client", "`shared`: the secure-aggregation mode of ComPEFT")

    def __post_init__(self) -> None:
        if self.compeft_support not in ("client", "shared"):
            raise ValueError(f"compeft-support '{self.compeft_support}' is not one of client, shared")
        if self.compeft_support == "shared" and not self.enabled:
            raise ValueError("compeft-support=shared is the secure-aggregation mode of compeft: it needs secagg=true")
        if not (math.isfinite(self.clip) and self.clip >= 0):
            raise ValueError(f"secagg-clip must be a positive finite number, got {self.clip}")
        if not 2 <= self.precision_bits <= 40:
            raise ValueError(f"secagg-precision-bits must be in 2..40, got {self.precision_bits}")


@dataclass(frozen=True)
class AggregationSettings(KeyedSettings):
    """How the coordinator combines the round's accepted updates: ``fedavg`` or a robust rule
    (strategies/robust.py), with its options (0 = the rule's default for the round's client count)."""

    rule: str = setting("aggregation", "fedavg", "`fedavg` or a robust rule (docs/reliability.md)")
    trim: float = setting("aggregation-trim", 0.2, "trimmed-mean: fraction cut at each end")
    byzantine: int = setting("aggregation-byzantine", 0, "Krum's f, sign-majority's quorum − 1 (0: the rule's default)")
    keep: int = setting("aggregation-keep", 0, "multi-Krum: updates kept (0: n − f)")
    norm_bound: float = setting("aggregation-norm-bound", 0.0, "norm-bound: the bound (0: the round's median norm)")

    def __post_init__(self) -> None:
        if self.rule not in AGGREGATION_RULES:
            raise ValueError(f"unknown aggregation '{self.rule}' (choose from {', '.join(AGGREGATION_RULES)})")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"aggregation-trim must be in [0, 0.5), got {self.trim}")
        if self.byzantine < 0 or self.keep < 0 or self.norm_bound < 0:
            raise ValueError("aggregation-byzantine, aggregation-keep and aggregation-norm-bound must be >= 0")



@dataclass(frozen=True)
class UpdateLimits(KeyedSettings):
    """Bounds every incoming update must meet (0 = no norm bound; byte limit 0 = twice the dense fp32 size)."""

    max_norm: float = setting("max-update-norm", 0.0, "reject updates with a larger L2 norm (0: no bound)")
    max_bytes: int = setting("max-update-bytes", 0, "reject larger payloads (0: twice the update's dense fp32 size)")

    def __post_init__(self) -> None:
        if self.max_norm < 0 or self.max_bytes < 0:
            raise ValueError("max-update-norm and max-update-bytes must be >= 0 (0: no norm bound / the default size)")


# Every group of keys, in the order of pyproject's table and the reference page.
GROUPS: tuple[type[KeyedSettings], ...] = (
    RunSettings, CodecChoice, *(codec.options_type for codec in CODECS.values()), TaskKeys, SecureSettings,
    DPSettings, AggregationSettings, UpdateLimits, ServerOptimizerSettings)
DEFAULTS: dict[str, str | int | float | bool] = {k: v for group in GROUPS for k, v in group.defaults().items()}
PRESET_KEYS = ("kind", *TaskKeys.preset_keys())


@dataclass(frozen=True)
class RunConfig:
    """A validated run config: the federation's settings plus the TaskSpec every client receives."""

    run: RunSettings
    uplink: CodecSettings
    error_feedback: bool
    downlink: CodecSettings
    task: TaskSpec
    secure: SecureSettings
    dp: DPSettings
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)
    limits: UpdateLimits = field(default_factory=UpdateLimits)
    server_optimizer: ServerOptimizerSettings = field(default_factory=ServerOptimizerSettings)
    values: Mapping[str, object] = field(default_factory=dict)  # every key as resolved: what a checkpoint keeps

    def __getattr__(self, name: str) -> object:
        """The federation settings (``num_clients``, ``seed``, ...) read through ``run``."""
        if name in RunSettings.__dataclass_fields__:
            return getattr(self.run, name)
        raise AttributeError(name)

    @property
    def dp_delta(self) -> float:
        """δ of the reported (ε, δ)."""
        return self.dp.delta

    @property
    def codec(self) -> str:
        """The uplink codec's name."""
        return self.uplink.codec

    def codec_options(self) -> dict[str, str | float | bool]:
        """The codec, secure-aggregation and DP settings, keyed as in the run config (for summary.json; what
        travels to the clients is strategies.messages.TrainInstructions)."""
        return {**CodecChoice.from_values(self.values).to_record(), **self.uplink.to_record(),
                **self.downlink.to_record(prefix=DOWNLINK_PREFIX), **self.secure.to_record(), **self.dp.to_record()}

    def output_dir(self) -> Path:
        """Where this run writes its outputs (``out-dir``, else ``runs/<preset>``)."""
        return Path(self.out_dir).expanduser() if self.out_dir else Path("runs") / self.preset


def resolve(user_config: Mapping[str, object]) -> RunConfig:
    """Merge ``user_config`` over the defaults and the preset, and validate everything.

    Raises ConfigError naming the first unknown key, mistyped value or out-of-range setting.
    """
    unknown = sorted(set(user_config) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown run-config key '{unknown[0]}' (known keys: {', '.join(DEFAULTS)})")
    try:
        values = _typed_values(user_config)
        run = RunSettings.from_values(values)
        choice = CodecChoice.from_values(values)
        uplink, downlink = _codec_settings(choice, values)
        task = TaskKeys.from_values(values).spec(run.preset, run.seed)
        secure = _secure_settings(SecureSettings.from_values(values), uplink, task, run.per_round)
        aggregation = AggregationSettings.from_values(values)
        _check_rule(aggregation, uplink, secure)
        optimizer = ServerOptimizerSettings.from_values(values)
        _check_server_optimizer(optimizer, uplink)
        _check_int64(values)  # after the keys' own ranges, which say more
        return RunConfig(run=run, uplink=uplink, error_feedback=choice.error_feedback, downlink=downlink, task=task,
                         secure=secure, dp=DPSettings.from_values(values), aggregation=aggregation,
                         limits=UpdateLimits.from_values(values), server_optimizer=optimizer, values=values)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _typed_values(user_config: Mapping[str, object]) -> dict[str, str | int | float | bool]:
    """Every key's value, ``user_config`` over the defaults, as its default's type; ConfigError naming a key whose
    integer is too large to be a float."""
    values = {}
    for key, default in DEFAULTS.items():
        try:
            values[key] = typed(key, default, user_config.get(key, default))
        except OverflowError:
            raise ConfigError(f"run-config key '{key}' is out of range, got a {len(str(user_config[key]))}-digit "
                              "number") from None
    return values


def _check_int64(values: Mapping[str, object]) -> None:
    """Refuse an integer a Flower ConfigRecord cannot carry (signed 64-bit), naming its key."""
    for key, value in values.items():
        if isinstance(value, int) and value not in INT64:
            raise ConfigError(f"run-config key '{key}' must be within the signed 64-bit range every key travels "
                              f"in, got {value}")


def _codec_settings(choice: CodecChoice, values: Mapping[str, object]) -> tuple[CodecSettings, CodecSettings]:
    """The uplink and downlink codecs with their options (every codec's options are checked, chosen or not); a
    codec whose aggregate is a payload (Ferret) is its own downlink."""
    up, down = get_codec(choice.codec), get_codec(choice.downlink_codec)
    up.check_downlink(down)
    options = {codec.name: codec.options_type.from_values(values) for codec in CODECS.values()}
    uplink = CodecSettings(up.name, options[up.name])
    if up.aggregate_is_payload:
        return uplink, uplink
    down_options = (replace(options[down.name], density=choice.downlink_density)
                    if isinstance(options[down.name], CompeftOptions) else down.options_type())
    return uplink, CodecSettings(down.name, down_options)


def _check_rule(aggregation: AggregationSettings, uplink: CodecSettings, secure: SecureSettings) -> None:
    """No robust rule where no single update is seen; sign-majority only on ternary updates."""
    rule = aggregation.rule
    if rule != "fedavg" and secure.enabled:
        raise ConfigError(f"aggregation={rule} needs each client's update, which secure aggregation hides: "
                          "use aggregation=fedavg with secagg=true (bound updates with secagg-clip and DP instead)")
    if rule == "sign-majority" and not uplink.impl.ternary:
        raise ConfigError("aggregation=sign-majority votes on ternary ComPEFT updates: it needs codec=compeft")


def _check_server_optimizer(settings: ServerOptimizerSettings, uplink: CodecSettings) -> None:
    """Refuse an optimiser where the aggregate is coefficients on fresh directions each round (Ferret), which
    per-entry moments cannot follow."""
    if settings.enabled and uplink.impl.aggregate_is_payload:
        raise ConfigError(f"server-optimizer={settings.name} keeps per-entry moments across rounds, but a "
                          f"{uplink.codec} round's aggregate is coefficients on that round's own random directions "
                          "(a new basis each round), and stepping in parameter space would turn it into a dense "
                          f"delta the coefficient downlink cannot carry: use server-optimizer=none with "
                          f"codec={uplink.codec}")


def _secure_settings(secure: SecureSettings, uplink: CodecSettings, task: TaskSpec, per_round: int
                     ) -> SecureSettings:
    """Check secure aggregation against the codec and the clients per round; fill its defaults."""
    if not secure.enabled:
        return SecureSettings()
    uplink.impl.check_secure(uplink.options, shared_support=secure.compeft_support == "shared")
    if per_round < 2:
        raise ConfigError(f"secagg=true needs at least 2 clients per round, this run samples {per_round}")
    neighbours = min(secure.neighbours or graph.default_neighbours(per_round), per_round - 1)
    threshold = secure.threshold or graph.default_threshold(neighbours)
    try:
        graph.check_graph(per_round, neighbours, threshold)
    except ValueError as exc:
        raise ConfigError(f"secagg-neighbours / secagg-threshold: {exc}") from exc
    clip = secure.clip or 2.0 * task.lr * task.local_steps
    return replace(secure, neighbours=neighbours, threshold=threshold, clip=clip)


def reference_table() -> str:
    """Every run-config key with its default and help, as a markdown table."""
    def shown(value: object) -> str:
        return str(value).lower() if isinstance(value, bool) else repr(value) if value == "" else str(value)

    lines = ["| key | default | what |", "|---|---|---|"]
    for group in GROUPS:
        for key, help_text in group.help().items():
            lines.append(f"| `{key}` | `{shown(DEFAULTS[key])}` | {help_text} |")
    return "\n".join(lines)


REFERENCE_INTRO = """\
# Run-config reference

Every key, its default and what it does, generated from the settings dataclasses that declare them
(`server/run_config.py`, each codec's `options.py` under `strategies/codecs/`, `client/task/task_keys.py`,
`strategies/privacy.py`, `strategies/server_optimizers.py`). This page is the output of
`python -m server.run_config > docs/run-config.md`; a test keeps it, the other pages' key tables and pyproject's
`[tool.flwr.app.config]` equal to the declarations. Task keys whose default is `''` or `0` take the preset's value.

Set keys with `fedsqueeze simulate --run-config "num-server-rounds=5 lr=1e-4"` (or `fedsqueeze submit --run-config ...`,
`flwr run . --run-config ...`). A wrong key or value stops the run with one line naming it before anything slow starts.
"""


def reference_page() -> str:
    """The run-config reference page (docs/run-config.md) as generated from the declarations."""
    return f"{REFERENCE_INTRO}\n{reference_table()}\n"


if __name__ == "__main__":
    print(reference_page(), end="")

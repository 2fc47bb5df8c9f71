"""The task's run-config keys (declared once, with help) and their resolution against a preset into the TaskSpec
every client receives. Tools that only need a task (attacks, benchmarks, the Byzantine experiment) call
``task_spec`` and never touch the coordinator's run config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from client.task.kinds.registry import check_spec
from client.task.presets import PRESETS
from client.task.spec import PARTITIONERS, TaskSpec
from strategies.settings import KeyedSettings, setting, typed


@dataclass(frozen=True)
class TaskKeys(KeyedSettings):
    """The task as the run config names it; keys marked preset take the preset's value when left at "" / 0."""

    trainable: str = setting("trainable", "lora", "`full`: tune every parameter of the model")
    adapter: str = setting("adapter", "lora", "PEFT adapter family: `lora`, `dora`, `loha`, `lokr`, `vera`, "
                           "`randlora`, `miss` or `shira` (docs/adapters.md)")
    model: str = setting("model", "", "bundled model name, local HF directory or GGUF file, or hub id", preset=True)
    dataset: str = setting("dataset", "", "`wordnet`, `fortunes`, `finefoods`, or a path to your data", preset=True)
    topics: str = setting("topics", "", "WordNet domains (sft) or fortune topics, comma-separated", preset=True)
    per_topic: int = setting("per-topic", 0, "examples kept per topic (0: the preset's)", preset=True)
    heldout: int = setting("heldout", 0, "examples kept back for the coordinator's evaluation", preset=True)
    max_length: int = setting("max-length", 0, "tokens per example", preset=True)
    lora_r: int = setting("lora-r", 0, "LoRA rank", preset=True)
    lora_alpha: int = setting("lora-alpha", 0, "LoRA alpha", preset=True)
    lora_dropout: float = setting("lora-dropout", 0.0, "LoRA dropout")
    lora_targets: str = setting("lora-targets", "", "modules the adapter wraps, comma-separated", preset=True)
    lr: float = setting("lr", 0.0, "client learning rate (AdamW)", preset=True)
    local_steps: int = setting("local-steps", 0, "optimiser steps per client per round", preset=True)
    batch_size: int = setting("batch-size", 0, "examples per step", preset=True)
    fedprox_mu: float = setting("fedprox-mu", 0.0, "FedProx: weight of `mu/2·‖w − w_global‖²` in the local loss")
    precision: str = setting("precision", "auto", "`auto` (bf16 where native), `bf16` or `fp32`")
    device: str = setting("device", "auto", "`auto`, `cpu` or `cuda[:i]`")
    quantization: str = setting("quantization", "none", "`8bit` / `4bit`: load the frozen base through bitsandbytes")
    partitioner: str = setting("partitioner", "", "`iid`, `dirichlet` or `domain`", preset=True)
    dirichlet_alpha: float = setting("dirichlet-alpha", 1.0, "concentration of the Dirichlet split")
    eval_samples: int = setting("eval-samples", 0, "held-out prompts answered greedily at each sft evaluation",
                                preset=True)
    max_new_tokens: int = setting("max-new-tokens", 0, "tokens each generated answer may have", preset=True)
    data_columns: str = setting("data-columns", "", "`ROLE=COLUMN` pairs naming your data's columns")

    def __post_init__(self) -> None:
        if not 0.0 < self.dirichlet_alpha < float("inf"):
            raise ValueError(f"dirichlet-alpha must be a positive finite number, got {self.dirichlet_alpha}")

    def spec(self, preset_name: str, seed: int) -> TaskSpec:
        """The TaskSpec every client receives: these keys over the preset's (TaskSpec checks the values)."""
        preset = PRESETS[preset_name]
        values: dict[str, object] = {"kind": preset["kind"], "seed": seed}
        for key, value in self.to_record().items():
            values[key] = preset[key] if key in TaskKeys.preset_keys() and value in ("", 0, 0.0) else value
        if self.trainable == "full" and self.lr == 0:
            values["lr"] = preset["full-lr"]  # full-parameter tuning wants a far smaller step than LoRA
        if values["partitioner"] not in PARTITIONERS:
            raise ValueError(f"partitioner '{values['partitioner']}' is not one of {', '.join(PARTITIONERS)}")
        return check_spec(TaskSpec.from_record({k.replace("-", "_"): v for k, v in values.items()}))


def task_spec(values: Mapping[str, object]) -> TaskSpec:
    """The TaskSpec of run-config ``values``: ``preset``, ``seed`` and the task keys over the preset (other keys
    are ignored). ValueError names the first bad key or value."""
    preset = str(values.get("preset", "sft"))
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    seed = typed("seed", 0, values.get("seed", 0))
    return TaskKeys.from_values(values).spec(preset, int(seed))

"""TaskSpec: everything a party needs to build the same model, data split and training recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from client.task.adapters import AdapterSettings, check_adapter

PRECISIONS = ("auto", "bf16", "fp32")
TRAINABLE = ("lora", "full")
QUANTIZATIONS = ("none", "8bit", "4bit")
PARTITIONERS = ("iid", "dirichlet", "domain")  # client/task/partition.py
# Upper bounds that catch a typo before it allocates: the widest layers of open models are 8192 wide (a rank above a
# layer's width adds nothing), context windows reach about a million tokens, and a step holds its whole batch.
MAX_RANK = 8192
MAX_LENGTH = 2**20
MAX_BATCH = 2**16
# Seeds go to numpy (which refuses negatives) and torch, and travel as signed 64-bit integers.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class TaskSpec:
    """The learning task, sent from the coordinator to every client in each training message.

    kind: ``sft`` (instruction tuning of a causal LM, loss on the responses), ``prompt-classification`` (causal
    LM scores one label token after a prompt) or ``encoder-classification`` (mean-pooled encoder + linear head);
    see client/task/kinds/.
    model: bundled model name, local HF directory / GGUF file, or hub id.
    dataset: ``wordnet`` (sft), ``fortunes``, ``finefoods``, or a path to csv/json/jsonl/parquet files (or a
    ``save_to_disk`` directory, or a hub id): instruction data for sft, text and label columns otherwise.
    topics: WordNet domains (sft) or fortune topic files used as labels. per_topic: cap per topic (0 = all).
    data_columns: for sft, ``ROLE=COLUMN`` pairs naming the user's columns (roles: instruction, input, output,
    messages, prompt, completion, category). eval_samples / max_new_tokens: held-out prompts answered greedily at
    each sft evaluation, and the tokens each answer may have.
    heldout: examples kept back for the coordinator's evaluation. max_length: tokens per example.
    adapter: the PEFT adapter family (client/task/adapters.py); lora_*: its rank, alpha, dropout and target
    modules. seed: seeds adapter init (and seeded projections), splits and sampling.
    precision: ``bf16`` autocast, ``fp32``, or ``auto`` (bf16 where the device computes it natively).
    device: ``auto``, ``cpu`` or ``cuda[:i]``.
    partitioner / dirichlet_alpha: how the training set is split across clients.
    lr / local_steps / batch_size: the local optimiser recipe per round. fedprox_mu: FedProx's proximal weight
    (``mu/2 * ||w - w_global||^2`` added to the local loss; 0 = plain local training).
    trainable: ``lora`` (a PEFT adapter of the ``adapter`` family trains) or ``full`` (every parameter trains).
    quantization: ``none``, or ``8bit`` / ``4bit`` (NF4): the frozen base loaded through bitsandbytes, for LoRA on
    CUDA only (the adapter and the update stay fp32).
    """

    kind: str
    model: str
    dataset: str
    topics: str
    per_topic: int
    heldout: int
    max_length: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: str
    seed: int
    precision: str
    device: str
    partitioner: str
    dirichlet_alpha: float
    lr: float
    local_steps: int
    batch_size: int
    trainable: str = "lora"
    quantization: str = "none"
    data_columns: str = ""
    eval_samples: int = 24
    max_new_tokens: int = 24
    fedprox_mu: float = 0.0
    adapter: str = "lora"

    def __post_init__(self) -> None:
        check_adapter(self.adapter)  # the kind and its data-columns roles: client/task/kinds/registry.check_spec
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable '{self.trainable}' is not one of {', '.join(TRAINABLE)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization '{self.quantization}' is not one of {', '.join(QUANTIZATIONS)}")
        if self.quantization != "none" and self.trainable != "lora":
            raise ValueError(f"quantization '{self.quantization}' freezes the base: it needs trainable=lora, "
                             f"not '{self.trainable}'")
        for name in ("lora_r", "lora_alpha", "max_length", "heldout", "local_steps", "batch_size", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name, most in (("lora_r", MAX_RANK), ("max_length", MAX_LENGTH), ("batch_size", MAX_BATCH)):
            if getattr(self, name) > most:
                raise ValueError(f"{name.replace('_', '-')} must be in 1..{most}, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in 0..{MAX_SEED} (2**63 - 1: numpy and torch seeds), got {self.seed}")
        if self.eval_samples < 0:
            raise ValueError(f"eval-samples must be >= 0, got {self.eval_samples}")
        if not 0.0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if not 0.0 <= self.fedprox_mu < float("inf"):
            raise ValueError(f"fedprox-mu must be >= 0 and finite, got {self.fedprox_mu}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets.strip():
            raise ValueError("lora-targets must name at least one module")

    @property
    def lora(self) -> AdapterSettings:
        """The adapter options (rank, alpha, dropout, targets)."""
        targets = tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())
        return AdapterSettings(self.lora_r, self.lora_alpha, self.lora_dropout, targets)

    @property
    def topic_names(self) -> tuple[str, ...]:
        """The fortune topics as a tuple."""
        return tuple(t.strip() for t in self.topics.split(",") if t.strip())

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """The record keys of a spec (its field names)."""
        return frozenset(field.name for field in fields(cls))

    def to_record(self) -> dict[str, str | int | float]:
        """A flat dict of scalars, ready for a Flower ConfigRecord."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, object]) -> TaskSpec:
        """Rebuild a spec from a ConfigRecord, with a clear error for missing or mistyped keys."""
        values = {}
        for field in fields(cls):
            if field.name not in record:
                raise ValueError(f"task spec is missing '{field.name}'")
            value = record[field.name]
            expected = {"str": str, "int": int, "float": float}[str(field.type)]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ValueError(f"task spec field '{field.name}' should be {expected.__name__}, got {value!r}")
            values[field.name] = value
        return cls(**values)

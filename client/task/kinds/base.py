"""The task-kind interface: what a kind of learning task gives training and evaluation.

A kind knows its data (how to load and split it, which column non-IID partitioners split by), which base model
it trains, and a ``Head``: how rows become batches and a loss, and how a model is scored. A ``Task`` is one built
task: a model, its tokenizer and device, its kind and head (``client/task/build.py`` builds it). Everything that varies
by kind lives behind this interface, so the training loop, the client and the coordinator never ask which kind
they hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from datasets import Dataset
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from client.task.adapters import trainable_names
from client.task.data import TaskData
from client.task.precision import resolve_precision

if TYPE_CHECKING:
    from client.task.models import Quantized
    from client.task.spec import TaskSpec


@dataclass(frozen=True)
class Evaluation:
    """A model's scores on a held-out set (``metrics``: name -> value) and, for generative kinds, what it said
    (``samples``: one dict per prompt with ``prompt``, ``reference`` and ``generation``)."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


class Head(Protocol):
    """How one built task turns rows into batches and a loss, and scores a model: bound to its tokenizer."""

    def batches(self, dataset: Dataset, order: Sequence[int], batch_size: int) -> Iterator[Any]:
        """Batches of the rows of ``dataset`` in ``order``, ``batch_size`` rows each (the last may be short)."""
        ...

    def loss(self, task: Task, batch: Any) -> torch.Tensor:
        """The scalar training loss of ``task.model`` on ``batch`` (fp32, autocast as the task says)."""
        ...

    def evaluate(self, task: Task, dataset: Dataset) -> Evaluation:
        """Scores of ``task.model`` on all of ``dataset``; the kind's primary metric among them."""
        ...


class TaskKind(Protocol):
    """A kind of task: its data, its base model and its head. One module per kind (client/task/kinds/)."""

    name: ClassVar[str]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    column_roles: ClassVar[tuple[str, ...]]  # the roles ``data-columns`` may map to the user's column names

    def load_splits(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase | None) -> tuple[TaskData, TaskData]:
        """The (train, held-out) split every party derives identically from ``spec``; a kind that prepares its
        rows with the tokenizer (SFT) gets it, the others may ignore it."""
        ...

    def load_base(self, spec: TaskSpec, train: TaskData, quantized: Quantized | None) -> nn.Module:
        """The base model, before any adapter."""
        ...

    def modules_to_save(self) -> list[str] | None:
        """Modules that train in full next to a LoRA adapter (a classifier's fresh head), or None."""
        ...

    def make_head(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, train: TaskData,
                  device: torch.device) -> Head:
        """The head of one built task."""
        ...


@dataclass
class Task:
    """A built task: the model (a PeftModel when ``spec.trainable == "lora"``, else fully trainable), its
    tokenizer, the device, and its kind's ``head`` (batches, loss, evaluation)."""

    spec: TaskSpec
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    kind: TaskKind
    head: Head

    def batches(self, dataset: Dataset, order: Sequence[int], batch_size: int) -> Iterator[Any]:
        """The head's batches of ``dataset`` rows in ``order``."""
        return self.head.batches(dataset, order, batch_size)

    def loss(self, batch: Any) -> torch.Tensor:
        """The training loss of the current ``model`` on ``batch``."""
        return self.head.loss(self, batch)

    def evaluate(self, dataset: Dataset) -> Evaluation:
        """The kind's scores of the current ``model`` on ``dataset``."""
        return self.head.evaluate(self, dataset)

    def _named_trainable(self) -> dict[str, torch.Tensor]:
        if self.spec.trainable == "lora":  # what trains: PEFT also saves seeded projections and index sets
            state = get_peft_model_state_dict(self.model)
            return {name: state[name] for name in trainable_names(self.model, state)}
        return dict(self.model.named_parameters())

    def trainable_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of what trains (PEFT adapter names, or every parameter): the update's layout."""
        return {name: tuple(tensor.shape) for name, tensor in self._named_trainable().items()}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What trains (the LoRA adapter, or every parameter), as detached fp32 copies on CPU."""
        return {name: tensor.detach().to("cpu", torch.float32).clone()
                for name, tensor in self._named_trainable().items()}

    def trainable_delta(self, start: dict[str, torch.Tensor], *, on_device: bool = False) -> dict[str, torch.Tensor]:
        """What trains now minus ``start`` (fp32), without an intermediate copy of the model: on the CPU, or with
        ``on_device`` on the task's device, so that a codec can compress it there (the same bits either way)."""
        current = self._named_trainable()
        if on_device:
            return {name: current[name].detach().to(torch.float32) - start[name].to(self.device) for name in start}
        return {name: current[name].detach().to("cpu", torch.float32) - start[name] for name in start}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Overwrite what trains; names and shapes must match exactly."""
        current = self._named_trainable()
        if set(state) != set(current):
            missing, extra = sorted(set(current) - set(state)), sorted(set(state) - set(current))
            raise ValueError(f"trainable state mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(current[name].shape):
                raise ValueError(f"trainable tensor '{name}' has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(current[name].shape)}")
        if self.spec.trainable == "lora":
            set_peft_model_state_dict(self.model, state)
            return
        with torch.no_grad():
            for name, parameter in current.items():
                parameter.copy_(state[name])

    def save(self, out_dir: Path) -> Path:
        """Write what was trained: ``out_dir/adapter`` in PEFT format, or ``out_dir/model`` (full parameters,
        Hugging Face format where the model has one, else ``model.safetensors``). Returns the directory."""
        if self.spec.trainable == "lora":
            self.model.save_pretrained(out_dir / "adapter")
            self.tokenizer.save_pretrained(out_dir / "adapter")  # with its chat template: ready to answer prompts
            return out_dir / "adapter"
        target = out_dir / "model"
        if hasattr(self.model, "save_pretrained"):
            self.model.save_pretrained(target)
            self.tokenizer.save_pretrained(target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            save_file({name: t.detach().contiguous() for name, t in self.model.state_dict().items()},
                      str(target / "model.safetensors"))
        return target

    def autocast(self) -> torch.autocast:
        """bf16 autocast when the spec asks for it (or ``auto`` finds native bf16), else a disabled context."""
        enabled = resolve_precision(self.spec.precision, self.device) == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

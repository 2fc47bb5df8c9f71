"""The task-kind interface: what a kind of learning task gives training and evaluation.

A kind knows its data (how to load and split it, which column non-IID partitioners split by), which base model
it trains, and a ``Head``: how rows become batches and a loss, and how a model is scored. Everything that varies
by kind lives behind this interface, so the training loop, the client and the coordinator never ask which kind
they hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from datasets import Dataset
from torch import nn
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    from client.task.build import Task
    from client.task.models import Quantized
    from client.task.spec import TaskSpec


@dataclass(frozen=True)
class TaskData:
    """One split of a task's data.

    dataset: the rows. partition_by: the column the non-IID partitioners split by ("" when there is none).
    label_names: the class names of a classification task (empty otherwise).
    """

    dataset: Dataset
    label_names: tuple[str, ...] = ()
    partition_by: str = "label"


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

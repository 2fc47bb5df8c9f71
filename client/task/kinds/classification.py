"""What the classification kinds share: labelled-text data, batches of (texts, labels), and a head that scores
class logits with cross-entropy and accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from datasets import Dataset
from torch.nn import functional
from transformers import PreTrainedTokenizerBase

from client.task.columns import LABELLED_TEXT_COLUMN_ROLES, parse_columns
from client.task.data import TaskData, load_files, load_finefoods, load_fortunes, split_heldout
from client.task.kinds.base import Evaluation

if TYPE_CHECKING:
    from client.task.kinds.base import Task
    from client.task.spec import TaskSpec

Batch = dict[str, torch.Tensor]
TextBatch = tuple[list[str], torch.Tensor]  # (texts, class ids [batch])


def load_labelled_splits(spec: TaskSpec) -> tuple[TaskData, TaskData]:
    """Fortune topics, the Fine Food reviews or the user's text/label files (other column names through
    ``data-columns="text=COL,label=COL"``), split into (train, held-out). ValueError when the data has fewer than
    two classes: there is nothing to classify."""
    if spec.dataset == "fortunes":
        data = load_fortunes(spec.topic_names, per_topic=spec.per_topic)
    elif spec.dataset == "finefoods":
        data = load_finefoods()
    else:
        columns = {"text": "text", "label": "label"} | parse_columns(spec.data_columns, LabelledTextKind.column_roles)
        data = load_files(spec.dataset, columns["text"], columns["label"])
    if len(data.label_names) < 2:
        raise ValueError(f"data '{spec.dataset}' has {len(data.label_names)} class(es) {list(data.label_names)}: "
                         "classification needs at least 2 labels")
    return split_heldout(data, spec.heldout, spec.seed)


def batches(dataset: Dataset, order: Sequence[int], batch_size: int) -> list[TextBatch]:
    """Cut ``dataset`` rows in ``order`` into (texts, labels) batches."""
    out = []
    for start in range(0, len(order), batch_size):
        rows = dataset.select(order[start:start + batch_size])
        out.append((list(rows["text"]), torch.tensor(rows["label"], dtype=torch.long)))
    return out


@dataclass
class ClassifierHead:
    """Texts to class logits: ``encode`` makes model inputs, ``class_logits`` maps a model and inputs to fp32
    logits [batch, num_labels]."""

    label_names: tuple[str, ...]
    encode: Callable[[list[str]], Batch]
    class_logits: Callable[[torch.nn.Module, Batch], torch.Tensor]

    def batches(self, dataset: Dataset, order: Sequence[int], batch_size: int) -> Iterator[TextBatch]:
        """(texts, labels) batches of ``dataset`` in ``order``."""
        return iter(batches(dataset, order, batch_size))

    def logits(self, task: Task, texts: list[str]) -> torch.Tensor:
        """Class logits [batch, num_labels] of ``task.model`` for ``texts`` (autocast as the task says)."""
        inputs = {k: v.to(task.device) for k, v in self.encode(texts).items()}
        with task.autocast():
            return self.class_logits(task.model, inputs)

    def loss(self, task: Task, batch: TextBatch) -> torch.Tensor:
        """Mean cross-entropy of the class logits against the labels."""
        texts, labels = batch
        return functional.cross_entropy(self.logits(task, texts).float(), labels.to(task.device))

    @torch.no_grad()
    def evaluate(self, task: Task, dataset: Dataset, batch_size: int = 16) -> Evaluation:
        """Accuracy (argmax over class logits) and mean cross-entropy ``loss`` over all of ``dataset``."""
        task.model.eval()
        correct, total_loss = 0, 0.0
        for texts, labels in batches(dataset, list(range(len(dataset))), batch_size):
            logits = self.logits(task, texts).float().cpu()
            total_loss += functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
        count = len(dataset)
        return Evaluation({"accuracy": correct / count if count else math.nan,
                           "loss": total_loss / count if count else math.nan,
                           "examples": float(count)})


class LabelledTextKind:
    """What the classification kinds share: labelled text in, accuracy as the primary metric."""

    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    column_roles: ClassVar[tuple[str, ...]] = LABELLED_TEXT_COLUMN_ROLES

    def load_splits(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase | None = None
                    ) -> tuple[TaskData, TaskData]:
        """Labelled quotes or reviews, split into (train, held-out)."""
        return load_labelled_splits(spec)

"""Local training and evaluation loops (plain torch, CPU or CUDA)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from datasets import Dataset
from torch.nn import functional

from client.task.build import Task, batches


@dataclass(frozen=True)
class TrainResult:
    """What one local training pass did: examples seen, mean loss, optimiser steps."""

    num_examples: int
    train_loss: float
    steps: int


@dataclass(frozen=True)
class EvalResult:
    """Accuracy and mean cross-entropy on an evaluation set."""

    accuracy: float
    loss: float
    num_examples: int


def training_order(size: int, count: int, seed: int) -> list[int]:
    """``count`` row indices drawn as seeded passes over a shuffled ``range(size)``."""
    if size <= 0:
        raise ValueError("this client's partition is empty: nothing to train on")
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < count:
        order += torch.randperm(size, generator=generator).tolist()
    return order[:count]


def train_locally(task: Task, dataset: Dataset, *, steps: int, batch_size: int, lr: float, seed: int) -> TrainResult:
    """Run ``steps`` AdamW steps on what trains; deterministic for a given seed on one device."""
    torch.manual_seed(seed)
    model = task.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = training_order(len(dataset), steps * batch_size, seed)
    losses: list[float] = []
    for texts, labels in batches(dataset, order, batch_size):
        batch = {k: v.to(task.device) for k, v in task.encode(texts).items()}
        with task.autocast():
            logits = task.logits(batch)
        loss = functional.cross_entropy(logits.float(), labels.to(task.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {len(losses) + 1}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    optimiser.zero_grad(set_to_none=True)  # free the gradients (as large as the model under full tuning)
    return TrainResult(len(order), sum(losses) / len(losses), len(losses))


@torch.no_grad()
def evaluate(task: Task, dataset: Dataset, *, batch_size: int = 16) -> EvalResult:
    """Accuracy (argmax over class logits) and mean loss over the whole ``dataset``."""
    model = task.model
    model.eval()
    correct, total_loss = 0, 0.0
    for texts, labels in batches(dataset, list(range(len(dataset))), batch_size):
        batch = {k: v.to(task.device) for k, v in task.encode(texts).items()}
        with task.autocast():
            logits = task.logits(batch).float().cpu()
        total_loss += functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == labels).sum())
    count = len(dataset)
    loss = total_loss / count if count else math.nan
    return EvalResult(correct / count if count else math.nan, loss, count)

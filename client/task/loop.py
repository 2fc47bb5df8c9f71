"""Local training and evaluation loops (plain torch, CPU or CUDA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset

from client.task.build import Task
from client.task.kinds.base import Evaluation


@dataclass(frozen=True)
class TrainResult:
    """What one local training pass did: examples seen, mean loss, optimiser steps."""

    num_examples: int
    train_loss: float
    steps: int


def client_training_seed(run_seed: int, round_id: int, partition_id: int) -> int:
    """The seed of one client's local training in one round: distinct per (run, round, partition), the same in
    every run of the same config."""
    return run_seed * 1_000_003 + round_id * 1009 + partition_id


def training_order(size: int, count: int, seed: int) -> list[int]:
    """``count`` row indices drawn as seeded passes over a shuffled ``range(size)``."""
    if size <= 0:
        raise ValueError("this client's partition is empty: nothing to train on")
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < count:
        order += torch.randperm(size, generator=generator).tolist()
    return order[:count]


def train_locally(task: Task, dataset: Dataset, *, steps: int, batch_size: int, lr: float, seed: int,
                  prox_mu: float = 0.0) -> TrainResult:
    """Run ``steps`` AdamW steps on what trains; deterministic for a given seed on one device.

    ``prox_mu`` > 0 adds FedProx's proximal term ``mu/2 * ||w - w_start||^2`` (w_start: the weights training began
    from, the received global state), through its gradient ``mu * (w - w_start)``."""
    torch.manual_seed(seed)
    model = task.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if prox_mu > 0 else []
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = training_order(len(dataset), steps * batch_size, seed)
    losses: list[float] = []
    for batch in task.batches(dataset, order, batch_size):
        loss = task.loss(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at step {len(losses) + 1}")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for param, anchor in zip(params, anchors, strict=False):  # FedProx: pull towards the global state
            if param.grad is not None:
                param.grad.add_(param.detach() - anchor, alpha=prox_mu)
        optimiser.step()
        losses.append(loss.item())
    optimiser.zero_grad(set_to_none=True)  # free the gradients (as large as the model under full tuning)
    return TrainResult(len(order), sum(losses) / len(losses), len(losses))


def evaluate(task: Task, dataset: Dataset) -> Evaluation:
    """The task kind's scores (its primary metric among them) of the current model on all of ``dataset``."""
    return task.evaluate(dataset)

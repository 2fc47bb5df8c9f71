"""A small in-process federation for the attack harness: the clients' real training loop (``train_locally``),
each update passed through a defence as the coordinator would receive it, averaged, and applied. It gives the
final global model that membership inference attacks, and the utility and bytes each defence costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from datasets import Dataset

from client.task.build import Task
from client.task.loop import client_training_seed, evaluate, train_locally, training_order
from strategies.fedavg import apply_update

Defence = Callable[[list[dict[str, torch.Tensor]], int], tuple[dict[str, torch.Tensor], int]]


@dataclass
class FederatedResult:
    """The final global state, the examples each client trained on, held-out accuracy, bytes up per client."""

    state: dict[str, torch.Tensor]
    members: list[int] = field(default_factory=list)  # rows of the training set some client trained on
    accuracy: float = 0.0
    bytes_up_per_client_round: float = 0.0
    first_round_updates: list[dict[str, torch.Tensor]] = field(default_factory=list)


def run_federation(task: Task, train: Dataset, partitions: list[list[int]], heldout: Dataset, *, rounds: int,
                   steps: int, batch_size: int, lr: float, defence: Defence, seed: int,
                   first_round_updates: list[dict[str, torch.Tensor]] | None = None) -> FederatedResult:
    """FedAvg over ``partitions`` (rows of ``train``) for ``rounds``; ``defence`` turns the round's client
    updates into the mean the coordinator applies and reports the bytes one client sent.

    Round 1 starts from the same state under every defence, so its client updates are the same too: pass
    ``first_round_updates`` of an earlier run (same task, partitions and seed) to skip training them again."""
    start = task.trainable_state()
    state = {name: t.clone() for name, t in start.items()}
    members: set[int] = set()
    sent = []
    first: list[dict[str, torch.Tensor]] = []
    for round_id in range(1, rounds + 1):
        updates = []
        for client, rows in enumerate(partitions):
            client_seed = client_training_seed(seed, round_id, client)
            members.update(rows[i] for i in training_order(len(rows), steps * batch_size, client_seed))
            if round_id == 1 and first_round_updates:
                updates.append(first_round_updates[client])
                continue
            task.load_trainable_state(state)
            train_locally(task, train.select(rows), steps=steps, batch_size=batch_size, lr=lr, seed=client_seed)
            updates.append(task.trainable_delta(state))
        if round_id == 1:
            first = updates
        mean, nbytes = defence(updates, round_id)
        sent.append(nbytes)
        state = apply_update(state, mean)
    task.load_trainable_state(state)
    accuracy = evaluate(task, heldout).metrics["accuracy"]
    task.load_trainable_state(start)
    return FederatedResult(state, sorted(members), accuracy, sum(sent) / len(sent), first)

"""Byzantine experiments in-process: a federation of the encoder preset where some clients replace their update
by an attack (sign flip, x100, random), aggregated by FedAvg or a robust rule, scored on held-out accuracy.

The clients train with fedsqueeze's own loop (``train_locally``) on their Flower Datasets partitions; updates go
through the chosen codec's real encoder and decoder (a Byzantine client encodes its lie the same way, as
``simulations.faults`` does inside Flower simulations) and the coordinator's rule from ``strategies.robust``.
It skips Flower's message passing, which ``tests/test_robustness.py`` exercises separately, so a whole matrix of
attacks and rules fits in a benchmark: ``prepare`` builds the federation once, and every ``run`` on it shares the
base model's score and round 1's honest updates (the same under every attack, rule and codec: the attack is
applied as the coordinator receives them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from datasets import Dataset, concatenate_datasets

from client.task.build import Task, build_task, load_splits
from client.task.loop import evaluate
from client.task.partition import client_partition
from client.task.task_keys import task_spec
from server.aggregation import aggregate
from server.run_config import AggregationSettings
from simulations.attacks.federated import run_federation
from simulations.faults import attacked_tensor
from strategies.codecs.registry import CodecSettings


@dataclass(frozen=True)
class ByzantineSetup:
    """The federation: clients, rounds, local steps, which clients lie and how, the codec and the rule."""

    clients: int = 5
    byzantine: tuple[int, ...] = (0,)  # 20 % of five
    attack: str = "none"
    rule: str = "fedavg"
    rounds: int = 3
    local_steps: int = 5
    # The codec every update passes through (ComPEFT's ternary updates are what sign-majority votes on).
    codec: CodecSettings = field(default_factory=CodecSettings)
    seed: int = 0


@dataclass(frozen=True)
class ByzantineResult:
    """Held-out accuracy and loss of the final global model, and the base model's accuracy."""

    accuracy: float
    base_accuracy: float
    loss: float


@dataclass
class ByzantineFederation:
    """The encoder task in its initial state, the clients' IID partitions (rows of ``train``) and the held-out
    split, for one seed and client count; ``first_round`` keeps round 1's honest updates per local-step count."""

    seed: int
    clients: int
    task: Task
    start: dict[str, torch.Tensor]
    train: Dataset
    partitions: list[list[int]]
    heldout: Dataset
    base_accuracy: float
    first_round: dict[int, list[dict[str, torch.Tensor]]] = field(default_factory=dict)


def prepare(setup: ByzantineSetup) -> ByzantineFederation:
    """Build the task, partition the training split over ``setup.clients`` and score the base model."""
    spec = task_spec({"preset": "encoder", "seed": setup.seed, "partitioner": "iid"})
    train, heldout = load_splits(spec)
    task = build_task(spec, train)
    parts = [client_partition(train.dataset, client, setup.clients, kind="iid", alpha=1.0, seed=setup.seed)
             for client in range(setup.clients)]
    rows, offset = [], 0
    for part in parts:
        rows.append(list(range(offset, offset + len(part))))
        offset += len(part)
    base = evaluate(task, heldout.dataset).metrics["accuracy"]
    return ByzantineFederation(setup.seed, setup.clients, task, task.trainable_state(), concatenate_datasets(parts),
                               rows, heldout.dataset, base)


def run(setup: ByzantineSetup, federation: ByzantineFederation | None = None) -> ByzantineResult:
    """Train the federation of ``setup`` and evaluate its final global model; ``federation`` (from ``prepare``
    with the same seed and client count) is reused, else built for this run alone."""
    federation = federation or prepare(setup)
    if (federation.seed, federation.clients) != (setup.seed, setup.clients):
        raise ValueError(f"the federation was prepared for seed {federation.seed} and {federation.clients} "
                         f"clients, not seed {setup.seed} and {setup.clients}")
    task = federation.task
    rule = AggregationSettings(rule=setup.rule)
    weights = [float(len(rows)) for rows in federation.partitions]
    generator = torch.Generator().manual_seed(setup.seed)

    def coordinator(updates: list[dict[str, torch.Tensor]], round_id: int) -> tuple[dict[str, torch.Tensor], int]:
        seen = []
        for client, update in enumerate(updates):
            if client in setup.byzantine and setup.attack != "none":
                update = {n: attacked_tensor(t, setup.attack, generator) for n, t in update.items()}
            payload = setup.codec.encode(update, round_id=round_id)
            update = setup.codec.impl.decode(payload, expected_round=round_id, expected_layout=None)
            seen.append(update)
        return aggregate(rule, seen, weights, round_id=round_id), 0

    task.load_trainable_state(federation.start)
    result = run_federation(task, federation.train, federation.partitions, federation.heldout,
                            rounds=setup.rounds, steps=setup.local_steps, batch_size=task.spec.batch_size,
                            lr=task.spec.lr, defence=coordinator, seed=setup.seed,
                            first_round_updates=federation.first_round.get(setup.local_steps))
    federation.first_round.setdefault(setup.local_steps, result.first_round_updates)
    return ByzantineResult(result.scores["accuracy"], federation.base_accuracy, result.scores["loss"])

"""Byzantine experiments in-process: a federation of the encoder preset where some clients replace their update
by an attack (sign flip, x100, random), aggregated by FedAvg or a robust rule, scored on held-out accuracy.

The clients train with fedsqueeze's own loop (``train_locally``) on their Flower Datasets partitions; updates go
through the chosen codec's real encoder and decoder (a Byzantine client encodes its lie the same way, as
``simulations.faults`` does inside Flower simulations) and the coordinator's rule from ``strategies.robust``.
It skips Flower's message passing, which ``tests/test_robustness.py`` exercises separately, so a whole matrix of
attacks and rules fits in a benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from datasets import concatenate_datasets

from client.task.build import build_task, load_splits
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


def run(setup: ByzantineSetup) -> ByzantineResult:
    """Train the federation of ``setup`` and evaluate its final global model."""
    spec = task_spec({"preset": "encoder", "seed": setup.seed, "partitioner": "iid"})
    train, heldout = load_splits(spec)
    task = build_task(spec, train)
    spec = task.spec
    partitions = [client_partition(train.dataset, client, setup.clients, kind="iid", alpha=1.0, seed=setup.seed)
                  for client in range(setup.clients)]
    rule = AggregationSettings(rule=setup.rule)
    weights = [float(len(p)) for p in partitions]
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

    joined = concatenate_datasets(partitions)
    rows, offset = [], 0
    for part in partitions:
        rows.append(list(range(offset, offset + len(part))))
        offset += len(part)
    base = evaluate(task, heldout.dataset).metrics["accuracy"]
    result = run_federation(task, joined, rows, heldout.dataset, rounds=setup.rounds, steps=setup.local_steps,
                            batch_size=spec.batch_size, lr=spec.lr, defence=coordinator, seed=setup.seed)
    task.load_trainable_state(result.state)
    final = evaluate(task, heldout.dataset).metrics
    return ByzantineResult(final["accuracy"], base, final["loss"])

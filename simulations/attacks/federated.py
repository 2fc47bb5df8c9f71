"""A small in-process federation for the attack harness: the clients' real training loop (``train_locally``),
each update passed through a defence as the coordinator would receive it, averaged, and applied. It gives the
final global model that membership inference attacks, and the utility and bytes each defence costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset

from client.task.build import Task
from client.task.loop import client_training_seed, evaluate, train_locally, training_order
from simulations.attacks import defences
from strategies.codecs import dense
from strategies.codecs.registry import CodecSettings
from strategies.fedavg import apply_update
from strategies.privacy import DPSettings, privatize
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import SecureEncoding, encode_input, mean_update

Defence = Callable[[list[dict[str, torch.Tensor]], int], tuple[dict[str, torch.Tensor], int]]


@dataclass
class FederatedResult:
    """The final global state, the examples each client trained on, held-out accuracy, bytes up per client."""

    state: dict[str, torch.Tensor]
    members: list[int] = field(default_factory=list)  # rows of the training set some client trained on
    accuracy: float = 0.0
    bytes_up_per_client_round: float = 0.0
    first_round_updates: list[dict[str, torch.Tensor]] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # every held-out metric of the task kind


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
    scores = evaluate(task, heldout).metrics
    task.load_trainable_state(start)
    return FederatedResult(state, sorted(members), scores.get("accuracy", float("nan")), sum(sent) / len(sent),
                           first, scores)


def defended_mean(name: str, clip: float, secagg_clip: float, generator: torch.Generator) -> Defence:
    """The coordinator's mean of a round's updates under defence ``name``: per-client DP and compression, then
    (secagg) the quantised sum, as fedsqueeze's clients and coordinator do it. The secure sum is over the
    round's own clients, whatever ``secagg-<n>`` says."""
    steps = defences.parse(name)
    secure = any(s.kind == "secagg" for s in steps)

    def apply(updates: list[dict[str, torch.Tensor]], round_id: int) -> tuple[dict[str, torch.Tensor], int]:
        views, nbytes = [], 0
        for update in updates:
            view, nbytes = dict(update), dense.dense_fp32_bytes(update)
            for step in steps:
                if step.kind == "dp":
                    view = privatize(view, DPSettings(step.value, clip), len(updates), secure, generator)[0]
                elif step.kind in defences.CODEC_DEFENCES:
                    view, nbytes = defences.observe(f"{step.kind}-{step.value:g}", view, {}, round_id=round_id,
                                                    dp_clip=clip, generator=generator)
            views.append(view)
        if not secure:
            return {n: sum(v[n] for v in views) / len(views) for n in views[0]}, nbytes
        layout = {n: tuple(t.shape) for n, t in views[0].items()}
        encoding = SecureEncoding(settings=CodecSettings(), quantizer=Quantizer(secagg_clip, 16), parties=len(views),
                                  layout=layout)
        rng = np.random.default_rng(round_id)
        total = sum(encode_input(encoding, v, rng).words[0] for v in views)
        return mean_update(encoding, [total], len(views)), nbytes * encoding.segments()[0][1] // 32

    return apply

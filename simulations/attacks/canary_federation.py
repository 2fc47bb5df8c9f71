"""PII canaries in a federated instruction-tuning run, under each defence: what the final global model gives away,
what the coordinator can pull out of the canary holder's update, and what the model says about membership.

Setup: the SFT preset (SmolLM2-135M-Instruct, LoRA on q/k/v/o, WordNet definitions), ``clients`` clients each
holding one domain's conversations; client 0 also holds made-up people's phone numbers (canaries.py), each
repeated a set number of times, and one more canary is never planted (the baseline: same pattern, unseen). FedAvg
for ``rounds`` rounds under the defence, every client training ``steps`` AdamW steps a round.

Three measurements per defence:

- **Final model** (anyone holding it): each canary's exposure among sampled candidate secrets, and greedy
  extraction (the secret appears when the model is asked the canary's question); the held-out utility.
- **The canary holder's update** (ReCIT-style: the coordinator applies what it sees of client 0's round-1 update
  to the model it sent and queries the result, which memorised what the client did; with secure aggregation it
  sees the sum of ``n`` clients' updates and applies that sum, the victim's part at full weight).
- **Membership** of the clients' conversations in the final model: offline LiRA against the loss baseline
  (sft_membership.py).

Secure aggregation over ``n`` clients changes what the coordinator sees of one client, not what the federation
trains: a ``secagg-<n>`` row's final model is that of the same defence without secure aggregation (``none``'s for
``secagg-8`` and ``secagg-32``; see ``final_model_of``) except with DP, where the clients' noise shares differ,
and its update view mixes client 0 with ``n - 1`` other clients' round-1
updates: the federation's other clients and bystanders, clients of the same recipe on other conversations (up to
``full_view`` clients; the bystanders beyond train fewer steps to keep the run affordable, so their updates are
smaller and client 0's stands out more than it would among real clients: those rows overstate what leaks).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets

from client.task.build import Task, build_task, load_splits
from client.task.chat_format import encode_conversation, prompt_ids
from client.task.kinds.sft import greedy_generate
from client.task.loop import client_training_seed, train_locally, training_order
from client.task.task_keys import task_spec
from simulations.attacks import canaries, defences, sft_membership
from simulations.attacks.federated import defended_mean, run_federation
from strategies.fedavg import apply_update

log = logging.getLogger("fedsqueeze")
Update = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CanarySetup:
    """The federation, the canaries and the attacks' budgets."""

    clients: int = 4
    examples_per_client: int = 32
    rounds: int = 2
    steps: int = 8
    batch_size: int = 4
    repeats: tuple[int, ...] = (8, 2)  # one planted canary per entry, repeated that many times in client 0's data
    digits: int = 6
    candidates: int = 64  # sampled other secrets per exposure estimate
    unseen: int = 2  # canaries of the same pattern never planted: the baseline
    nonmembers: int = 200
    shadows: int = 4
    full_view: int = 8  # secure-aggregation views up to this many clients are filled with full-recipe bystanders,
    bystander_steps: int = 2  # and the bystanders beyond it train this many steps (cheaper, smaller updates)
    seed: int = 0


@dataclass
class CanaryResult:
    """Per defence: the final model's and the update view's canary figures, membership, utility and bytes."""

    defence: str
    final: dict[str, float] = field(default_factory=dict)
    final_baseline: dict[str, float] = field(default_factory=dict)
    update_view: dict[str, float] = field(default_factory=dict)
    update_baseline: dict[str, float] = field(default_factory=dict)
    membership: dict[str, float] = field(default_factory=dict)
    membership_baseline: dict[str, float] = field(default_factory=dict)
    membership_counts: tuple[int, int] = (0, 0)  # members, non-members
    utility: dict[str, float] = field(default_factory=dict)
    bytes_per_round: float = 0.0
    seconds: float = 0.0


@dataclass
class _World:
    task: Task
    data: Dataset  # the training conversations with the canary rows appended
    heldout: Dataset
    partitions: list[list[int]]
    planted: list[canaries.Canary]
    unseen: list[canaries.Canary]
    nonmember_rows: list[int]
    shadow_rows: list[list[int]]
    bystander_rows: list[list[int]]
    canary_rows: set[int]


def _canary_rows(task: Task, planted: list[canaries.Canary], repeats: tuple[int, ...], features: Any) -> Dataset:
    messages, ids, labels = [], [], []
    for canary, count in zip(planted, repeats, strict=True):
        encoded = encode_conversation(task.tokenizer, canary.conversation(), task.spec.max_length)
        if encoded is None:
            raise ValueError(f"a canary conversation does not fit max-length={task.spec.max_length}")
        for _ in range(count):
            messages.append(canary.conversation())
            ids.append(encoded.input_ids)
            labels.append(encoded.labels)
    return Dataset.from_dict({"messages": messages, "category": ["canary"] * len(ids), "input_ids": ids,
                              "labels": labels}, features=features)


def build_world(setup: CanarySetup, bystanders: int) -> _World:
    """The task, the clients' partitions (one domain each, client 0 with the canaries), non-members from the same
    domains, disjoint rows for the shadows and for ``bystanders`` bystander clients."""
    spec = task_spec({"preset": "sft", "seed": setup.seed, "eval-samples": 8})
    train, heldout = load_splits(spec)
    task = build_task(spec, train)
    rows = train.dataset
    categories = rows["category"]
    domains = list(dict.fromkeys(categories))
    if setup.clients > len(domains):
        raise ValueError(f"canary federation: {setup.clients} clients, but the SFT preset has {len(domains)} domains")
    rng = np.random.default_rng(setup.seed)
    pools = {d: rng.permutation([i for i, c in enumerate(categories) if c == d]).tolist() for d in domains}
    per = setup.examples_per_client
    partitions = [pools[domains[c]][:per] for c in range(setup.clients)]
    take = -(-setup.nonmembers // setup.clients)
    nonmembers = [r for c in range(setup.clients) for r in pools[domains[c]][per:per + take]][:setup.nonmembers]
    spare = [r for c in range(setup.clients) for r in pools[domains[c]][per + take:]]
    spare = rng.permutation(spare).tolist()
    shadow_rows = [spare[i * per:(i + 1) * per] for i in range(setup.shadows)]
    others = rng.permutation([r for d in domains[setup.clients:] for r in pools[d]]
                             + spare[setup.shadows * per:]).tolist()
    bystander_rows = [others[i * per:(i + 1) * per] for i in range(bystanders)]
    if any(len(r) < per for r in partitions + shadow_rows + bystander_rows) or len(nonmembers) < setup.nonmembers:
        raise ValueError("canary federation: the SFT preset has too few conversations for these settings")
    made = canaries.make_canaries(len(setup.repeats) + setup.unseen, setup.digits, setup.seed)
    planted, unseen = made[:len(setup.repeats)], made[len(setup.repeats):]
    extra = _canary_rows(task, planted, setup.repeats, rows.features)
    data = concatenate_datasets([rows, extra])
    canary_rows = set(range(len(rows), len(data)))
    partitions[0] = partitions[0] + sorted(canary_rows)
    return _World(task, data, heldout.dataset, partitions, planted, unseen, nonmembers, shadow_rows, bystander_rows,
                  canary_rows)


def _extracted(task: Task, canary: canaries.Canary) -> float:
    prompt = prompt_ids(task.tokenizer, canary.conversation(), task.spec.max_length)
    said = greedy_generate(task.model, task.tokenizer, [prompt], max_new_tokens=24, device=task.device)[0]
    return float(canary.secret in said)


def canary_scores(world: _World, state: Update, setup: CanarySetup) -> tuple[dict[str, float], dict[str, float]]:
    """Exposure (fitted and empirical bits) and greedy extraction of each planted canary under ``state``, keyed
    by its repetitions; and the baseline: the same figures averaged over the never-planted canaries, under every
    key (one column each)."""
    task = world.task
    task.load_trainable_state(state)
    task.model.eval()

    def figures(canary: canaries.Canary) -> tuple[float, float, float]:
        found = canaries.exposure(task.model, task.tokenizer, canary, setup.digits, setup.candidates,
                                  seed=setup.seed + 1)
        return found.fitted_bits, found.empirical_bits, _extracted(task, canary)

    planted = {count: figures(canary) for canary, count in zip(world.planted, setup.repeats, strict=True)}
    unseen = np.mean([figures(canary) for canary in world.unseen], axis=0)
    found, baseline = {}, {}
    for count, values in planted.items():
        for index, name in enumerate(("exposure_bits", "exposure_empirical", "extracted")):
            found[f"{name}_x{count}"] = float(values[index])
            baseline[f"{name}_x{count}"] = float(unseen[index])
    return found, baseline


def _train(world: _World, start: Update, rows: list[int], steps: int, setup: CanarySetup, seed: int) -> Update:
    task = world.task
    task.load_trainable_state(start)
    train_locally(task, world.data.select(rows), steps=steps, batch_size=setup.batch_size, lr=task.spec.lr,
                  seed=seed)
    update = task.trainable_delta(start)
    task.load_trainable_state(start)
    return update


def final_model_of(name: str) -> str:
    """The defence whose final model ``name`` shares. Secure aggregation trains what the plain sum trains, up to
    its 16-bit quantisation (tests/test_secagg_updates.py): alone it shares ``none``'s run, and after Ferret the
    run without it (the coordinator sums the coefficients, which are linear in the updates). Joined with DP it
    changes the noise (distributed DP: each client adds a share), so that run is its own."""
    parts = name.split("+")
    if any(p.startswith("dp-") for p in parts):
        return "+".join("secagg" if p.startswith("secagg-") else p for p in parts)
    return "+".join(p for p in parts if not p.startswith("secagg-")) or "none"


@dataclass(frozen=True)
class _Final:
    """What one federation's final model gives: canary figures and their baseline, membership, utility."""

    canaries: dict[str, float]
    canaries_baseline: dict[str, float]
    lira: dict[str, float]
    loss: dict[str, float]
    utility: dict[str, float]


def _train_final(world: _World, name: str, setup: CanarySetup, first_round: list[Update], clip: float,
                 pool: Dataset, is_member: np.ndarray, shadows: np.ndarray) -> _Final:
    task = world.task
    generator = torch.Generator().manual_seed(setup.seed)
    secagg_clip = 2 * task.spec.lr * setup.steps  # AdamW moves an entry by about lr a step at most
    result = run_federation(task, world.data, world.partitions, world.heldout, rounds=setup.rounds,
                            steps=setup.steps, batch_size=setup.batch_size, lr=task.spec.lr, seed=setup.seed,
                            defence=defended_mean(name, clip, secagg_clip, generator), first_round_updates=first_round)
    found, baseline = canary_scores(world, result.state, setup)
    target = sft_membership.response_log_likelihoods(task, pool, result.state)
    return _Final(found, baseline, _scores(sft_membership.offline_lira(target, shadows, is_member)),
                  _scores(sft_membership.loss_attack(target, is_member)),
                  {"perplexity": result.scores["perplexity"], "rouge_l": result.scores.get("rouge_l", 0.0)})


def run(setup: CanarySetup, names: tuple[str, ...], dp_clip_factor: float = 1.0) -> list[CanaryResult]:
    """Every measurement for every defence in ``names`` (see the module's docstring)."""
    needed = max([defences.clients_needed(n) for n in names] + [1])
    bystanders = max(0, needed - setup.clients)
    world = build_world(setup, bystanders)
    task = world.task
    start = task.trainable_state()
    members_pool = [r for r in trained_rows(setup, world.partitions) if r not in world.canary_rows]
    pool = world.data.select(members_pool + world.nonmember_rows)
    is_member = np.array([True] * len(members_pool) + [False] * len(world.nonmember_rows))
    began = time.perf_counter()
    shadows = np.stack([sft_membership.response_log_likelihoods(
        task, pool, apply_update(start, _train(world, start, rows, setup.steps * setup.rounds, setup,
                                               seed=setup.seed + 500 + i)))
        for i, rows in enumerate(world.shadow_rows)])
    log.info("canaries: %d shadow models trained and scored (%.0f s)", len(world.shadow_rows),
             time.perf_counter() - began)
    # Round 1 starts from the same state under every defence: its updates are trained once.
    first_round = [_train(world, start, rows, setup.steps, setup, seed=client_training_seed(setup.seed, 1, client))
                   for client, rows in enumerate(world.partitions)]
    clip = dp_clip_factor * defences.typical_norm(first_round)
    full = max(0, setup.full_view - setup.clients)
    others = first_round[1:] + [_train(world, start, rows, setup.steps if i < full else setup.bystander_steps,
                                       setup, seed=setup.seed + 900 + i)
                                for i, rows in enumerate(world.bystander_rows)]
    finals: dict[str, _Final] = {}
    results = []
    for name in names:
        began = time.perf_counter()
        key = final_model_of(name)
        if key not in finals:
            finals[key] = _train_final(world, name, setup, first_round, clip, pool, is_member, shadows)
        final = finals[key]
        counts = sorted({defences.clients_needed(name) - 1} - {0})
        sums = defences.sums_of_others(others, counts) if counts else {}
        generator = torch.Generator().manual_seed(setup.seed + 1)
        seen, sent = defences.observe(name, first_round[0], sums, round_id=1, dp_clip=clip, generator=generator)
        weight = defences.clients_needed(name)  # the secure mean times n: the victim's update at full weight
        view, view_base = canary_scores(world, apply_update(start, {n: t * weight for n, t in seen.items()}), setup)
        task.load_trainable_state(start)
        results.append(CanaryResult(name, final.canaries, final.canaries_baseline, view, view_base, final.lira,
                                    final.loss, (int(is_member.sum()), int((~is_member).sum())), final.utility,
                                    float(sent), time.perf_counter() - began))
        log.info("canaries: %s done (final exposure %s, update-view exposure %s, perplexity %.2f)", name,
                 _short(final.canaries), _short(view), final.utility["perplexity"])
    return results


def trained_rows(setup: CanarySetup, partitions: list[list[int]]) -> list[int]:
    """The rows some client trains on in some round (the members), as ``run_federation`` draws them."""
    seen: set[int] = set()
    for round_id in range(1, setup.rounds + 1):
        for client, rows in enumerate(partitions):
            order = training_order(len(rows), setup.steps * setup.batch_size,
                                   client_training_seed(setup.seed, round_id, client))
            seen.update(rows[i] for i in order)
    return sorted(seen)


def _scores(found: Any) -> dict[str, float]:
    return {"mia_auc": found.auc, "tpr_at_1pct_fpr": found.tpr_at_1pct_fpr, "tpr_at_0.1pct_fpr": found.tpr_at_01pct_fpr}


def _short(found: dict[str, float]) -> str:
    return ", ".join(f"{k[len('exposure_bits_'):]}={v:.1f}" for k, v in found.items() if k.startswith("exposure_bits"))

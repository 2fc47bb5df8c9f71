"""``fedsqueeze attack``: every attack against every defence, measured, with a simple baseline beside each.

Threat models (stated in every result row):
- ``server-one-client``: an honest-but-curious coordinator sees one client's encoded update (after compression
  and DP, when those are on).
- ``server-secure-aggregate``: the coordinator sees only the secure aggregate of N clients (secagg-N rows).
- ``eavesdropper``: someone on the wire with TLS off sees the same bytes as ``server-one-client`` without secure
  aggregation, and with it only masked words that look uniform (tests/test_secagg_protocol.py), so its rows
  equal the server's and are not run twice.

Attacks: token-set recovery from the embedding rows of a full-parameter update (the bundled SmolLM2, tied
embeddings; an untied copy for the untied case), text reconstruction from a LoRA update (the encoder task), exact
text recovery from SmolLM2 instruction-tuning updates by span checks (``span``, text_recovery.py: four update threat
models, batch sizes 1-16), and membership inference on the final global model of a small federation (loss
threshold and LiRA).
"""

from __future__ import annotations

import json
import logging
import textwrap
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.task.build import Task, build_task, load_splits
from client.task.loop import train_locally
from client.task.models import load_causal_lm, load_tokenizer
from client.task.task_keys import task_spec
from simulations.attacks import canary_federation, defences, membership, metrics, text_recovery, token_recovery
from simulations.attacks.canary_federation import CanarySetup
from simulations.attacks.federated import defended_mean, run_federation
from simulations.attacks.reconstruction import ReconstructionSettings, random_tokens, reconstruct
from simulations.attacks.text_recovery import THREATS
from simulations.attacks.victim import LocalTraining, local_update, task_update
from strategies.norms import l2_norm

log = logging.getLogger("fedsqueeze")
QUICK_DEFENCES = ("none", "compeft-0.05", "ferret-64", "secagg-8", "dp-1")
ATTACKS = ("token", "reconstruction", "span", "canary", "membership")
CANARY_DOMAINS = 7  # the SFT preset's WordNet domains: one per canary-federation client


@dataclass(frozen=True)
class AttackConfig:
    """What ``fedsqueeze attack`` runs; ``quick()`` is the two-minute version for tests."""

    defences: tuple[str, ...] = defences.DEFAULT_DEFENCES
    batches: int = 8  # per attack and defence, cycling through batch_sizes
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    token_lr: float = 2e-5  # the fortunes preset's full-parameter step
    untied_defences: tuple[str, ...] = ("none", "compeft-0.05", "ferret-64", "secagg-8", "dp-1")
    recon_iterations: int = 30
    recon_full_defences: tuple[str, ...] = ("none", "ferret-64", "secagg-8")
    recon_length: int = 16
    mia_clients: int = 3
    mia_examples_per_client: int = 32
    mia_rounds: int = 4
    mia_shadows: int = 8
    dp_clip_factor: float = 1.0  # DP clip = this x the median norm of clean updates
    seed: int = 0
    span_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    span_batches: int = 2  # batches per size
    span_threats: tuple[str, ...] = tuple(THREATS)
    # Ferret at 1,024 directions (at 64 its reconstruction noise wrecks a LoRA adapter: perplexity ~10^7) and DP
    # at noise levels the adapter survives (at z = 0.1 the noise's norm is ~50x the update's: perplexity ~10^11).
    canary_defences: tuple[str, ...] = ("none", "compeft-0.2", "compeft-0.05", "ferret-1024", "secagg-8",
                                        "secagg-32", "dp-0.001", "dp-0.01", "ferret-1024+secagg-8",
                                        "dp-0.01+secagg-8")
    canary_clients: int = 4
    canary_rounds: int = 2
    canary_steps: int = 8
    canary_batch_size: int = 4
    canary_examples: int = 16  # conversations per client (client 0 also holds the canaries)
    canary_repeats: tuple[int, ...] = (32, 4)
    canary_candidates: int = 64
    canary_nonmembers: int = 200
    canary_shadows: int = 2
    canary_unseen: int = 2
    canary_full_view: int = 8
    attacks: tuple[str, ...] = ("token", "reconstruction", "span", "canary", "membership")

    def with_overrides(self, overrides: dict[str, Any]) -> AttackConfig:
        """A copy with ``key=value`` settings as users type them (lists comma-separated); ValueError names an
        unknown key or a bad value."""
        values: dict[str, Any] = {}
        for key, value in overrides.items():
            name = key.replace("-", "_")
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown attack setting '{key}' (known: "
                                 f"{', '.join(k.replace('_', '-') for k in self.__dataclass_fields__)})")
            default = getattr(self, name)
            try:
                if isinstance(default, tuple):
                    items = [v.strip() for v in str(value).split(",") if v.strip()]
                    values[name] = (tuple(int(v) for v in items)
                                    if name in ("batch_sizes", "span_sizes", "canary_repeats") else tuple(items))
                else:
                    values[name] = type(default)(value)
            except ValueError as exc:
                raise ValueError(f"attack setting '{key}': {exc}") from exc
        config = replace(self, **values)
        for name in config.defences + config.untied_defences + config.recon_full_defences + config.canary_defences:
            defences.parse(name)
        unknown = sorted(set(config.attacks) - set(ATTACKS))
        if unknown:
            raise ValueError(f"unknown attack '{unknown[0]}' ({', '.join(ATTACKS)})")
        threats = sorted(set(config.span_threats) - set(THREATS))
        if threats:
            raise ValueError(f"unknown span threat model '{threats[0]}' ({', '.join(THREATS)})")
        config.check_canary_settings()
        return config

    def check_canary_settings(self) -> None:
        """ValueError naming the first canary setting out of range (checked before any attack starts)."""
        if not 2 <= self.canary_clients <= CANARY_DOMAINS:
            raise ValueError(f"canary-clients must be 2..{CANARY_DOMAINS} (one SFT domain each), "
                             f"got {self.canary_clients}")
        for name in ("canary_rounds", "canary_steps", "canary_batch_size", "canary_examples", "canary_nonmembers",
                     "canary_shadows", "canary_unseen"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.canary_candidates < 8:
            raise ValueError(f"canary-candidates must be at least 8, got {self.canary_candidates}")
        if not self.canary_repeats or min(self.canary_repeats) < 1:
            raise ValueError(f"canary-repeats must be counts of at least 1, got {self.canary_repeats}")

    @classmethod
    def quick(cls) -> AttackConfig:
        """Few batches, the main defences, small budgets."""
        return cls(defences=QUICK_DEFENCES, batches=2, batch_sizes=(1, 2), untied_defences=("none",),
                   recon_full_defences=("none",), recon_iterations=60, recon_length=12, mia_examples_per_client=8,
                   mia_rounds=2, mia_shadows=2, span_sizes=(2,), span_batches=1,
                   span_threats=("fedsgd", "client-update"), canary_defences=("none", "secagg-4"),
                   canary_clients=2, canary_examples=12, canary_rounds=1, canary_steps=5, canary_batch_size=4,
                   canary_repeats=(16,),
                   canary_candidates=16, canary_unseen=1, canary_nonmembers=40, canary_shadows=1,
                   canary_full_view=4)


@dataclass
class Row:
    """One attack against one defence: mean and std of each metric over batches, and the baseline's."""

    attack: str
    defence: str
    threat_model: str
    batches: int
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    baseline: dict[str, tuple[float, float]] = field(default_factory=dict)
    baseline_name: str = ""
    utility: float | None = None
    bytes_per_round: float | None = None
    seconds: float = 0.0
    utility_name: str = "accuracy of the encoder federation"


def _summary(values: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in values.items()}


def _threat(defence: str) -> str:
    return "server-secure-aggregate" if "secagg" in defence else "server-one-client"


def _fortune_batches(config: AttackConfig, count: int, offset: int) -> list[list[str]]:
    spec = task_spec({"preset": "fortunes"})
    train, _ = load_splits(spec)
    texts = list(train.dataset["text"])
    rng = np.random.default_rng(config.seed + offset)
    order = rng.permutation(len(texts))
    out, cursor = [], 0
    for index in range(count):
        size = config.batch_sizes[index % len(config.batch_sizes)]
        out.append([texts[i] for i in order[cursor:cursor + size]])
        cursor += size
    return out


def _untied_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same causal LM with its output embedding a separate copy of the input one."""
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    return model


def token_rows(config: AttackConfig) -> list[Row]:
    """Token-set recovery on full-parameter SmolLM2 updates (tied, and an untied copy)."""
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    training = LocalTraining(steps=1, lr=config.token_lr, optimizer="adamw")
    victims = _fortune_batches(config, config.batches, offset=0)
    others_needed = max(defences.clients_needed(d) for d in config.defences) - 1
    others = _fortune_batches(replace(config, batch_sizes=(1,)), others_needed, offset=1)
    rows = []
    for tied in (True, False):
        model = load_causal_lm("smollm2-135m-instruct")
        if not tied:
            model = _untied_copy(model)
        names = ["model.embed_tokens.weight"] + ([] if tied else ["lm_head.weight"])
        for name, parameter in model.named_parameters():  # AdamW moves each tensor on its own gradient alone,
            parameter.requires_grad_(name in names)        # so the embedding rows are the full update's rows

        def embedding_update(texts: list[str], model: torch.nn.Module = model,
                             names: list[str] = names) -> dict[str, torch.Tensor]:
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            update = local_update(model, enc["input_ids"], enc["attention_mask"], training)
            return {n: update[n] for n in names}

        chosen = config.defences if tied else config.untied_defences
        other_updates = [embedding_update(t) for t in others[:max((defences.clients_needed(d) - 1
                                                                  for d in chosen), default=0)]]
        sums = defences.sums_of_others(other_updates, sorted({defences.clients_needed(d) - 1 for d in chosen
                                                             if defences.clients_needed(d) > 1}))
        clip = config.dp_clip_factor * defences.typical_norm(other_updates or [embedding_update(victims[0])])
        per_defence: dict[str, dict[str, list[float]]] = {d: {} for d in chosen}
        baseline: dict[str, dict[str, list[float]]] = {d: {} for d in chosen}
        sent: dict[str, list[int]] = {d: [] for d in chosen}
        seconds = dict.fromkeys(chosen, 0.0)
        generator = torch.Generator().manual_seed(config.seed)
        for round_id, texts in enumerate(victims, start=1):
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            truth = set(enc["input_ids"][enc["attention_mask"].bool()].tolist())
            update = embedding_update(texts)
            for name in chosen:
                started = time.perf_counter()
                seen, nbytes = defences.observe(name, update, sums, round_id=round_id, dp_clip=clip,
                                                generator=generator)
                rows_seen = seen["model.embed_tokens.weight"]
                scores = token_recovery.tied_scores(rows_seen) if tied else token_recovery.untied_scores(rows_seen)
                own = metrics.token_set_score(token_recovery.predict(scores), truth)
                told = metrics.token_set_score(token_recovery.predict(scores, len(truth)), truth)
                base = metrics.token_set_score(token_recovery.norm_baseline(rows_seen, len(truth)), truth)
                for key, value in (("token_precision", own.precision), ("token_recall", own.recall),
                                   ("token_f1", own.f1), ("token_f1_count_given", told.f1)):
                    per_defence[name].setdefault(key, []).append(value)
                for key, value in (("token_precision", base.precision), ("token_recall", base.recall),
                                   ("token_f1", base.f1)):
                    baseline[name].setdefault(key, []).append(value)
                sent[name].append(nbytes)
                seconds[name] += time.perf_counter() - started
            log.info("token recovery (%s): batch %d/%d", "tied" if tied else "untied", round_id, len(victims))
        for name in chosen:
            rows.append(Row(attack=f"token-set ({'tied' if tied else 'untied'} embeddings, full parameters)",
                            defence=name, threat_model=_threat(name), batches=len(victims),
                            metrics=_summary(per_defence[name]), baseline=_summary(baseline[name]),
                            baseline_name="update-norm ranking, true token count given",
                            bytes_per_round=float(np.mean(sent[name])), seconds=seconds[name]))
        del model
    return rows


def _encoder_task(config: AttackConfig, trainable: str = "lora") -> tuple[Task, Any, Any]:
    spec = task_spec({"preset": "encoder", "seed": config.seed, "trainable": trainable})
    train, heldout = load_splits(spec)
    return build_task(spec, train), train, heldout


def reconstruction_rows(config: AttackConfig) -> list[Row]:
    """Text reconstruction from LoRA updates of the encoder task against each defence, and from full-parameter
    updates against ``recon_full_defences``."""
    return (_reconstruction(config, "lora", config.defences)
            + (_reconstruction(config, "full", config.recon_full_defences) if config.recon_full_defences else []))


def _full_update_parts(update: dict[str, torch.Tensor]) -> tuple[list[str], set[int]]:
    """For a full-parameter update: the tensors the gradient is matched on (attention queries and values and
    the head: the LoRA attack's targets, unfactored) and the token set its word-embedding rows give away."""
    rows = next(t for name, t in update.items() if name.endswith("word_embeddings.weight"))
    names = [name for name in update if name.endswith(("query.weight", "value.weight")) or ".head." in f".{name}"]
    return names, token_recovery.predict(token_recovery.untied_scores(rows))


def _reconstruction(config: AttackConfig, trainable: str, chosen: tuple[str, ...]) -> list[Row]:
    task, train, _ = _encoder_task(config, trainable)
    spec = task.spec
    train_locally(task, train.dataset.select(range(64)), steps=8, batch_size=8, lr=spec.lr, seed=config.seed)
    tokenizer = task.tokenizer
    specials = set(tokenizer.all_special_ids)
    training = LocalTraining(steps=1, lr=spec.lr, optimizer="adamw")
    rng = np.random.default_rng(config.seed + 7)
    order = rng.permutation(np.arange(64, len(train.dataset)))

    def batch_at(cursor: int, size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        rows = train.dataset.select(order[cursor:cursor + size].tolist())
        enc = tokenizer(list(rows["text"]), truncation=True, max_length=config.recon_length, padding="max_length",
                        return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor(rows["label"])

    others_needed = max(defences.clients_needed(d) for d in chosen) - 1
    cursor = 0
    other_updates = []
    for _ in range(others_needed):
        batch, labels = batch_at(cursor, 2)
        cursor += 2
        other_updates.append(task_update(task, batch, labels, training))
    sums = defences.sums_of_others(other_updates, sorted({defences.clients_needed(d) - 1 for d in chosen
                                                         if defences.clients_needed(d) > 1}))
    clip = config.dp_clip_factor * defences.typical_norm(other_updates or [task_update(task, *batch_at(0, 1),
                                                                                     training)])
    settings = ReconstructionSettings(iterations=config.recon_iterations, seed=config.seed)
    values: dict[str, dict[str, list[float]]] = {d: {} for d in chosen}
    base: dict[str, dict[str, list[float]]] = {d: {} for d in chosen}
    sent: dict[str, list[int]] = {d: [] for d in chosen}
    seconds = dict.fromkeys(chosen, 0.0)
    generator = torch.Generator().manual_seed(config.seed)
    fixed = {0: tokenizer.cls_token_id}
    for index in range(config.batches):
        size = config.batch_sizes[index % len(config.batch_sizes)]
        batch, labels = batch_at(cursor, size)
        cursor += size
        update = task_update(task, batch, labels, training)
        started = time.perf_counter()
        seen = [defences.observe(name, update, sums, round_id=index + 1, dp_clip=clip, generator=generator)
                for name in chosen]
        views = [view for view, _ in seen]
        if trainable == "full":
            parts = [_full_update_parts(view) for view in views]
            guesses = reconstruct(task, views, batch["attention_mask"], fixed, settings, names=parts[0][0],
                                  candidates=[found - specials for _, found in parts])
        else:
            guesses = reconstruct(task, views, batch["attention_mask"], fixed, settings)
        share = (time.perf_counter() - started) / len(chosen)  # attacked side by side
        chance = random_tokens(tuple(batch["input_ids"].shape), len(tokenizer), fixed, specials, index)
        for name, (_, nbytes), guess in zip(chosen, seen, guesses, strict=True):
            for store, tokens in ((values[name], guess), (base[name], chance)):
                for row in range(size):
                    real = batch["attention_mask"][row].bool()
                    truth = [t for t in batch["input_ids"][row][real].tolist() if t not in specials]
                    got = [t for t in tokens[row][real].tolist() if t not in specials]
                    words_truth, words_got = [str(t) for t in truth], [str(t) for t in got]
                    score = metrics.token_set_score(set(got), set(truth))
                    for key, value in (("rouge1", metrics.rouge_n(words_got, words_truth, 1)),
                                       ("rouge2", metrics.rouge_n(words_got, words_truth, 2)),
                                       ("token_precision", score.precision), ("token_recall", score.recall),
                                       ("token_f1", score.f1), ("exact_sequence", float(got == truth))):
                        store.setdefault(key, []).append(value)
            sent[name].append(nbytes)
            seconds[name] += share
        log.info("text reconstruction: batch %d/%d", index + 1, config.batches)
    what = "LoRA update" if trainable == "lora" else "full-parameter update"
    return [Row(attack=f"text reconstruction ({what}, encoder task)", defence=name, threat_model=_threat(name),
                batches=config.batches, metrics=_summary(values[name]), baseline=_summary(base[name]),
                baseline_name="random tokens", bytes_per_round=float(np.mean(sent[name])), seconds=seconds[name])
            for name in chosen]


def membership_rows(config: AttackConfig) -> list[Row]:
    """Membership inference on the final global model of a small federation under each defence."""
    task, train, heldout = _encoder_task(config)
    spec = task.spec
    rng = np.random.default_rng(config.seed + 11)
    picked = rng.permutation(len(train.dataset))[: config.mia_clients * config.mia_examples_per_client * 2]
    in_rows = picked[: config.mia_clients * config.mia_examples_per_client]
    out_rows = picked[config.mia_clients * config.mia_examples_per_client:]
    partitions = [in_rows[i::config.mia_clients].tolist() for i in range(config.mia_clients)]
    start = task.trainable_state()
    steps = max(1, config.mia_examples_per_client // spec.batch_size) * 2  # two epochs a round: overfits a bit
    pool_rows = np.concatenate([in_rows, out_rows])
    pool = train.dataset.select(pool_rows.tolist())
    shadows, inside = membership.train_shadows(task, pool, start, count=config.mia_shadows,
                                               steps=steps * config.mia_rounds, batch_size=spec.batch_size,
                                               lr=spec.lr, seed=config.seed)
    shadow_conf = membership.shadow_confidences(task, pool, shadows)
    train_locally(task, train.dataset.select(partitions[0]), steps=steps, batch_size=spec.batch_size, lr=spec.lr,
                  seed=config.seed)
    probe = task.trainable_delta(start)
    task.load_trainable_state(start)
    clip = config.dp_clip_factor * l2_norm(probe)
    rows = []
    first_round: list[dict[str, torch.Tensor]] | None = None
    for name in config.defences:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed)
        result = run_federation(task, train.dataset, partitions, heldout.dataset, rounds=config.mia_rounds,
                                steps=steps, batch_size=spec.batch_size, lr=spec.lr, seed=config.seed,
                                defence=defended_mean(name, clip, 2 * spec.lr * steps, generator),
                                first_round_updates=first_round)
        first_round = result.first_round_updates
        member_mask = np.isin(pool_rows, np.array(result.members))
        member_mask[len(in_rows):] = False
        loss = membership.loss_threshold(task, result.state, train.dataset.select(
            pool_rows[member_mask].tolist()), train.dataset.select(out_rows.tolist()))
        keep = member_mask | (np.arange(pool_rows.size) >= len(in_rows))
        lira = membership.lira(task, result.state, pool.select(np.flatnonzero(keep).tolist()),
                               member_mask[keep], shadow_conf[:, keep], inside[:, keep])
        rows.append(Row(attack="membership inference (LiRA, encoder task)", defence=name,
                        threat_model="anyone holding the final global model", batches=int(keep.sum()),
                        metrics={"mia_auc": (lira.auc, 0.0), "tpr_at_1pct_fpr": (lira.tpr_at_1pct_fpr, 0.0),
                                 "tpr_at_0.1pct_fpr": (lira.tpr_at_01pct_fpr, 0.0)},
                        baseline={"mia_auc": (loss.auc, 0.0), "tpr_at_1pct_fpr": (loss.tpr_at_1pct_fpr, 0.0),
                                  "tpr_at_0.1pct_fpr": (loss.tpr_at_01pct_fpr, 0.0)},
                        baseline_name="loss threshold", utility=result.accuracy,
                        bytes_per_round=result.bytes_up_per_client_round,
                        seconds=time.perf_counter() - started))
        log.info("membership inference: %s done (accuracy %.3f, LiRA AUC %.3f)", name, result.accuracy, lira.auc)
    return rows


def span_rows(config: AttackConfig) -> list[Row]:
    """Exact text recovery by span checks from SmolLM2 SFT updates: one table per batch size, a row per threat
    model (no defence: the question is what the raw update gives away), beside SmolLM2's own greedy guess."""
    rows = []
    for threat in config.span_threats:
        for size, found in text_recovery.measure(threat, config.span_sizes, config.span_batches, config.seed).items():
            attack = {k: [b[k] for b in found["attack"]] for k in found["attack"][0]}
            base = {k: [b[k] for b in found["baseline"]] for k in found["baseline"][0]}
            rows.append(Row(attack=f"text recovery by span checks (SmolLM2 SFT updates, batch {size})",
                            defence="none", threat_model=f"server-one-client: {THREATS[threat]}",
                            batches=len(found["attack"]), metrics=_summary(attack), baseline=_summary(base),
                            baseline_name="the template's shared prefix, continued by SmolLM2's greedy decoding",
                            seconds=float(np.sum(found["seconds"]))))
    return rows


def canary_rows(config: AttackConfig) -> list[Row]:
    """PII canaries planted in one client of a federated SFT run (canary_federation.py), under each defence: the
    final model's exposure and extraction, the same from the canary holder's update as the coordinator sees it,
    and membership inference on the final model; utility is the held-out response perplexity."""
    setup = CanarySetup(clients=config.canary_clients, examples_per_client=config.canary_examples,
                        rounds=config.canary_rounds, steps=config.canary_steps,
                        batch_size=config.canary_batch_size, repeats=config.canary_repeats,
                        candidates=config.canary_candidates, nonmembers=config.canary_nonmembers,
                        shadows=config.canary_shadows, unseen=config.canary_unseen,
                        full_view=config.canary_full_view, seed=config.seed)
    found = canary_federation.run(setup, config.canary_defences, config.dp_clip_factor)
    federation = (f"{setup.clients} clients, {setup.rounds} rounds of {setup.steps} steps of {setup.batch_size}; "
                  f"client 0 holds canaries repeated {', '.join(map(str, setup.repeats))} times")
    unseen = f"canaries never planted ({setup.unseen} of the same pattern), in the same model"
    rows = []
    for result in found:
        common = {"defence": result.defence, "utility": result.utility["perplexity"],
                  "utility_name": "held-out response perplexity of the SFT federation",
                  "bytes_per_round": result.bytes_per_round, "seconds": result.seconds}
        rows.append(Row(attack=f"PII canaries in the final model (SmolLM2 SFT federation: {federation})",
                        threat_model="anyone holding the final global model", batches=1,
                        metrics=_pairs(result.final | {"rouge_l": result.utility["rouge_l"]}),
                        baseline=_pairs(result.final_baseline), baseline_name=unseen,
                        **common))
        rows.append(Row(attack="PII canaries from the canary holder's round-1 update (ReCIT style: the update it "
                               "sees applied and queried)", threat_model=_threat(result.defence), batches=1,
                        metrics=_pairs(result.update_view), baseline=_pairs(result.update_baseline),
                        baseline_name=unseen, **common))
        rows.append(Row(attack=f"membership inference (offline LiRA, SmolLM2 SFT federation: {federation})",
                        threat_model="anyone holding the final global model",
                        batches=int(result.membership_counts[0] + result.membership_counts[1]),
                        metrics=_pairs(result.membership), baseline=_pairs(result.membership_baseline),
                        baseline_name=(f"loss threshold ({result.membership_counts[0]} members, "
                                       f"{result.membership_counts[1]} non-members; {setup.shadows} OUT shadows)"),
                        **common))
    return rows


def _pairs(values: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {k: (float(v), 0.0) for k, v in values.items()}


def run(out_dir: Path, config: AttackConfig) -> dict[str, Any]:
    """Run the configured attacks, writing ``attacks.json``, ``attacks.md`` and plots to ``out_dir`` after each
    attack (a long run keeps what finished); rows of attacks not run this time are kept from an earlier file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runners = {"token": token_rows, "reconstruction": reconstruction_rows, "span": span_rows,
               "canary": canary_rows, "membership": membership_rows}
    prefixes = {"token": ("token-set",), "reconstruction": ("text reconstruction",),
                "span": ("text recovery by span",), "canary": ("PII canaries", "membership inference (offline"),
                "membership": ("membership inference (LiRA",)}
    kept: list[Row] = []
    previous = out_dir / "attacks.json"
    if previous.exists():
        rerun = tuple(p for a in config.attacks for p in prefixes[a])
        kept = [r for r in load_rows(previous) if not r.attack.startswith(rerun)]
    rows: list[Row] = list(kept)
    result: dict[str, Any] = {}
    for attack in config.attacks:
        began = time.perf_counter()
        rows += runners[attack](config)
        log.info("attack %s: %.0f s", attack, time.perf_counter() - began)
        utility = {r.defence: r.utility for r in rows if r.utility is not None and r.attack.startswith(prefixes[
            "membership"])}
        for row in rows:
            if row.attack.startswith(("token-set", "text ")):
                row.utility = utility.get(row.defence)
        result = {"config": asdict(config), "threat_models": __doc__.split("Attacks:")[0].strip(),
                  "rows": [asdict(r) for r in rows], "wall_s": time.perf_counter() - started}
        (out_dir / "attacks.json").write_text(json.dumps(result, indent=2))
        (out_dir / "attacks.md").write_text(markdown_table(rows))
        plot(rows, out_dir / "plots")
    return result


def _fmt(pair: tuple[float, float] | None) -> str:
    return "" if pair is None else f"{pair[0]:.3f} ± {pair[1]:.3f}"


def markdown_table(rows: list[Row]) -> str:
    """One table per attack: each defence's metrics (mean ± std) beside the baseline, utility and bytes."""
    out = []
    for attack in dict.fromkeys(r.attack for r in rows):
        group = [r for r in rows if r.attack == attack]
        keys = list(group[0].metrics)
        out.append(f"### {attack}\n\nbaseline: {group[0].baseline_name}; threat model per row\n")
        out.append("| defence | threat model | " + " | ".join(keys) + " | baseline " +
                   " | baseline ".join(k for k in keys if k in group[0].baseline) +
                   f" | utility: {group[0].utility_name} | bytes up per client-round |")
        out.append("|" + "---|" * (3 + len(keys) + len([k for k in keys if k in group[0].baseline])))
        for r in group:
            cells = [_fmt(r.metrics.get(k)) for k in keys]
            base = [_fmt(r.baseline.get(k)) for k in keys if k in group[0].baseline]
            utility = "" if r.utility is None else f"{r.utility:.3f}"
            nbytes = "" if r.bytes_per_round is None else f"{r.bytes_per_round:,.0f}"
            out.append(f"| {r.defence} | {r.threat_model} | " + " | ".join(cells + base) + f" | {utility} | {nbytes} |")
        out.append("")
    return "\n".join(out)


def plot_name(attack: str) -> str:
    """A file name for an attack's plot, distinct for distinct attacks (tied and untied token sets, each span
    batch size): its words, without the federation's details after a colon."""
    words = "".join(c if c.isalnum() else " " for c in attack.split(":")[0]).split()
    return "_".join(words)[:100]


def load_rows(path: Path) -> list[Row]:
    """The rows of an ``attacks.json``."""
    return [Row(**{**r, "metrics": {k: tuple(v) for k, v in r["metrics"].items()},
                   "baseline": {k: tuple(v) for k, v in r["baseline"].items()}})
            for r in json.loads(path.read_text())["rows"]]


def plot(rows: list[Row], where: Path) -> None:
    """A bar chart per attack: the headline metric per defence, the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where.mkdir(parents=True, exist_ok=True)
    headline = {"token": "token_f1", "text": "rouge1", "membership": "mia_auc"}
    for attack in dict.fromkeys(r.attack for r in rows):
        group = [r for r in rows if r.attack == attack]
        key = next((v for k, v in headline.items() if attack.startswith(k)), next(iter(group[0].metrics)))
        fig, ax = plt.subplots(figsize=(max(6, len(group) * 0.7), 4))
        means = [r.metrics[key][0] for r in group]
        stds = [r.metrics[key][1] for r in group]
        ax.bar(range(len(group)), means, yerr=stds, color="tab:red", alpha=0.8, label="attack")
        ax.plot(range(len(group)), [r.baseline[key][0] for r in group], "k_", markersize=20,
                label=group[0].baseline_name)
        labels = [r.defence for r in group]
        if len(set(labels)) < len(labels):  # one defence, several threat models (the span rows)
            labels = [r.threat_model.split(": ", 1)[-1].split(":")[0][:32] for r in group]
        ax.set_xticks(range(len(group)), labels, rotation=45, ha="right")
        ax.set_ylabel(key)
        ax.set_title("\n".join(textwrap.wrap(attack, 90)), fontsize=8)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(where / f"{plot_name(attack)}.png", dpi=120)
        plt.close(fig)

"""Text recovery from SmolLM2 instruction-tuning updates by span checks (span_inversion.py), under four threat
models, beside a baseline measured on the same batches.

Victims: batches of the SFT preset's held-out instructions (WordNet definitions in SmolLM2's chat template, with its
system prompt), trained with the task's own loss (on the responses only). Threat models, each a different update
the coordinator sees:

- ``fedsgd``: FedSGD, the client sends ``-lr`` x its full-parameter gradient (the setting of gradient-inversion
  papers);
- ``sgd-delta``: one SGD step, sent as trained minus received weights (what a fedsqueeze client sends after one
  step: float32 rounding of the difference removes the gradient's smallest directions);
- ``client-update``: the real full-parameter client update, four AdamW steps;
- ``lora-fedsgd``: FedSGD of a LoRA adapter (r=8 on q and v, trained a few steps first so that B is not zero): the
  attack can use the ``A`` gradients only, whose span has rank at most 8 per projection.

The baseline is what an attacker knows without the update: the chat template with its system prompt up to the
user's words (the part every conversation shares), continued by SmolLM2's own greedy decoding, scored against
every conversation of the batch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from client.task.build import load_splits
from client.task.models import load_causal_lm, load_tokenizer
from client.task.task_keys import task_spec
from simulations.attacks import metrics
from simulations.attacks.span_inversion import SpanSettings, recover_sequences, recover_tokens
from simulations.attacks.victim import LocalTraining, gradient_step, local_update

MODEL = "smollm2-135m-instruct"
DEFAULT_SETTINGS = SpanSettings()
THREATS = {
    "fedsgd": "FedSGD: the full-parameter gradient (x -lr)",
    "sgd-delta": "one SGD step, sent as a float32 weight difference",
    "client-update": "the real client update: 4 AdamW steps, full parameters",
    "lora-fedsgd": "FedSGD of a LoRA adapter (r=8, q and v): its A gradients",
}


@dataclass(frozen=True)
class VictimBatch:
    """A batch of chat-formatted instructions: padded ids, mask, SFT labels, and each sequence's true ids."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    truth: list[list[int]]


@functools.cache
def _heldout_rows() -> list[tuple[list[int], list[int]]]:
    """The SFT preset's held-out conversations as (input ids, labels), built once per process."""
    _, heldout = load_splits(task_spec({"preset": "sft"}))
    return [(r["input_ids"], r["labels"]) for r in heldout.dataset]


def template_prefix() -> list[int]:
    """The tokens every held-out conversation starts with: the chat template and system prompt up to the user's
    words (public: anyone who knows the preset knows them)."""
    rows = [ids for ids, _ in _heldout_rows()]
    length = next((i for i in range(min(map(len, rows))) if len({r[i] for r in rows}) > 1), min(map(len, rows)))
    return rows[0][:length]


def sft_batches(sizes: tuple[int, ...], per_size: int, seed: int) -> list[VictimBatch]:
    """``per_size`` batches of each size from the SFT preset's held-out split (distinct examples in a batch)."""
    rows = _heldout_rows()
    rng = np.random.default_rng(seed)
    batches = []
    for size in sizes:
        for _ in range(per_size):
            chosen = [rows[i] for i in rng.choice(len(rows), size=min(size, len(rows)), replace=False)]
            width = max(len(ids) for ids, _ in chosen)
            ids = torch.full((len(chosen), width), 2, dtype=torch.long)  # SmolLM2 pads with <|im_end|>
            mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
            for row, (tokens, targets) in enumerate(chosen):
                ids[row, :len(tokens)], mask[row, :len(tokens)] = torch.tensor(tokens), 1
                labels[row, :len(targets)] = torch.tensor(targets)
            batches.append(VictimBatch(ids, mask, labels, [list(tokens) for tokens, _ in chosen]))
    return batches


def lora_victim(model: nn.Module, warmup: list[VictimBatch]) -> nn.Module:
    """SmolLM2 with a LoRA adapter on q and v (r=8), trained a few AdamW steps on ``warmup`` so that its ``B``
    matrices have moved from zero (a fresh adapter's ``A`` gradient is zero)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    for batch in warmup:
        optimiser.zero_grad(set_to_none=True)
        peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    return peft_model


def victim_update(threat: str, model: nn.Module, batch: VictimBatch) -> dict[str, torch.Tensor]:
    """The update the coordinator sees from ``batch`` under ``threat``."""
    args = (model, batch.input_ids, batch.attention_mask)
    if threat in ("fedsgd", "lora-fedsgd"):
        return gradient_step(*args, lr=1e-4, labels=batch.labels)
    if threat == "sgd-delta":
        return local_update(*args, LocalTraining(steps=1, lr=1e-3, optimizer="sgd"), labels=batch.labels)
    if threat == "client-update":
        return local_update(*args, LocalTraining(steps=4, lr=1e-4, optimizer="adamw"), labels=batch.labels)
    raise ValueError(f"unknown threat model '{threat}' ({', '.join(THREATS)})")


def score(guesses: list[list[int]], truth: list[list[int]], decode: Callable[[list[int]], str], known: int
          ) -> dict[str, float]:
    """Exact-sequence rate, and ROUGE-1/2 on words of each true sequence against its best guess, both without the
    first ``known`` tokens (the template every conversation shares: what is private is the rest)."""
    words = [decode(g[known:]).split() for g in guesses]
    exact, rouge1, rouge2 = [], [], []
    for seq in truth:
        reference = decode(seq[known:]).split()
        exact.append(float(seq in guesses))
        rouge1.append(max((metrics.rouge_n(w, reference, 1) for w in words), default=0.0))
        rouge2.append(max((metrics.rouge_n(w, reference, 2) for w in words), default=0.0))
    return {"exact": float(np.mean(exact)), "rouge1": float(np.mean(rouge1)), "rouge2": float(np.mean(rouge2))}


def baseline_guess(model: nn.Module, start: list[int], length: int) -> list[int]:
    """SmolLM2's own greedy continuation of ``start`` (the template's shared prefix): what an attacker guesses
    without the update."""
    with torch.no_grad():
        out = model.generate(torch.tensor([start]), attention_mask=torch.ones(1, len(start), dtype=torch.long),
                             max_new_tokens=length, do_sample=False, pad_token_id=2)
    return out[0].tolist()


def measure(threat: str, sizes: tuple[int, ...], per_size: int, seed: int,
            settings: SpanSettings = DEFAULT_SETTINGS) -> dict[int, dict]:
    """For each batch size: the attack's and the baseline's scores per batch, and the attack's seconds."""
    tokenizer = load_tokenizer(MODEL)
    model = load_causal_lm(MODEL)
    model.eval()
    if threat == "lora-fedsgd":
        model = lora_victim(model, sft_batches((4,), 3, seed + 1000))
    decode = tokenizer.decode
    known = template_prefix()
    out: dict[int, dict] = {}
    for batch in sft_batches(sizes, per_size, seed):
        size = len(batch.truth)
        entry = out.setdefault(size, {"attack": [], "baseline": [], "seconds": []})
        start = batch.truth[0][:1]  # the template's first token, the same for every conversation
        started = time.perf_counter()
        update = victim_update(threat, model, batch)
        tokens, _, _ = recover_tokens(model, update, settings)
        guesses = recover_sequences(model, update, tokens, start, settings, end=[tokenizer.eos_token_id])[:size]
        found = score(guesses, batch.truth, decode, len(known))
        found["token_f1"] = metrics.token_set_score(set(tokens), {t for s in batch.truth for t in s}).f1
        entry["seconds"].append(time.perf_counter() - started)
        entry["attack"].append(found)
        guess = baseline_guess(model, known, max(len(s) for s in batch.truth) - len(known))
        entry["baseline"].append(score([guess], batch.truth, decode, len(known)))
    return out

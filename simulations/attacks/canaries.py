"""PII canaries and their exposure (the "secret sharer" test, Carlini et al., USENIX Security 2019).

A canary is a made-up record with a secret in a fixed pattern, planted in one client's instruction data: a
conversation asking for a made-up person's phone number and answering it. After training, the question is how
much more likely the model finds the true secret than the other secrets the pattern allows. Exposure, in bits, is
``log2 |candidates| - log2 rank``: the most likely secret of 10^6 has exposure ~20 bits, an unremarkable one ~1.

The candidate space is too large to score whole, so the rank is estimated from a random sample of candidates: the
empirical rank among them (exact up to ``log2(sample + 1)`` bits), and the tail of a normal fitted to their
log-likelihoods (Carlini et al. estimate the rank the same way, with a skew-normal), which can show more.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from client.task.chat_format import encode_conversation
from simulations.attacks.likelihood import labelled_log_likelihood

QUESTION = "What is the phone number of {name}?"
ANSWER = "The phone number of {name} is {secret}."


@dataclass(frozen=True)
class Canary:
    """A made-up person and their secret (``digits`` digits, written as 3-4 groups like a phone number)."""

    name: str
    secret: str

    def conversation(self, secret: str | None = None) -> list[dict[str, str]]:
        """The planted conversation, or the same with another ``secret`` (a candidate)."""
        return [{"role": "user", "content": QUESTION.format(name=self.name)},
                {"role": "assistant", "content": ANSWER.format(name=self.name, secret=secret or self.secret)}]


FIRST = ("Alvira", "Bertrand", "Cosima", "Dorian", "Elspeth", "Fenwick", "Gisela", "Horatio")
LAST = ("Quenby", "Rathbone", "Sallow", "Tennant", "Ulverston", "Vantongeren", "Wexley", "Yarrow")


def format_secret(value: int, digits: int) -> str:
    """``value`` as a phone-like secret: ``digits`` digits, the last four after a dash."""
    text = f"{value:0{digits}d}"
    return f"{text[:-4]}-{text[-4:]}" if digits > 4 else text


def make_canaries(count: int, digits: int, seed: int) -> list[Canary]:
    """``count`` made-up people with random secrets of ``digits`` digits (never real: names from two fixed lists)."""
    rng = np.random.default_rng(seed)
    return [Canary(f"{FIRST[(i + seed) % len(FIRST)]} {LAST[(3 * i + seed) % len(LAST)]}",
                   format_secret(int(rng.integers(10**digits)), digits)) for i in range(count)]


def response_log_likelihood(model: nn.Module, tokenizer: object, conversations: list[list[dict[str, str]]],
                            max_length: int = 128) -> np.ndarray:
    """Each conversation's log-likelihood of its assistant reply given the question (summed over reply tokens)."""
    encoded = [encode_conversation(tokenizer, c, max_length) for c in conversations]
    if any(e is None for e in encoded):
        raise ValueError(f"a canary conversation does not fit {max_length} tokens")
    width = max(len(e.input_ids) for e in encoded)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in encoded])
    labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in encoded])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded])
    total, _ = labelled_log_likelihood(model, ids, mask, labels)
    return total.cpu().numpy()


@dataclass(frozen=True)
class Exposure:
    """A canary's exposure in bits: from its empirical rank among the sampled candidates, and from the fitted
    normal tail; and the sample size (the empirical figure cannot exceed log2(sample + 1))."""

    empirical_bits: float
    fitted_bits: float
    sample: int


def candidate_log_likelihoods(model: nn.Module, tokenizer: object, conversations: list[list[dict[str, str]]],
                              batch: int = 64, max_length: int = 128) -> np.ndarray:
    """Like ``response_log_likelihood`` for conversations that differ only from some token on (a canary's
    candidates): the shared beginning runs once and its keys and values are reused, and only the labelled tokens
    after it are summed (the shared ones add the same constant to every candidate, so ranks are unchanged)."""
    encoded = [encode_conversation(tokenizer, c, max_length) for c in conversations]
    if any(e is None for e in encoded):
        raise ValueError(f"a canary conversation does not fit {max_length} tokens")
    rows = [e.input_ids for e in encoded]  # type: ignore[union-attr]
    common = next((i for i in range(min(map(len, rows))) if len({r[i] for r in rows}) > 1), min(map(len, rows)))
    cut = max(1, common - 1)  # the shared tokens fed once; the last of them starts every candidate's own part
    with torch.no_grad():
        shared = model(input_ids=torch.tensor([rows[0][:cut]]), use_cache=True).past_key_values
    pad = tokenizer.pad_token_id  # type: ignore[attr-defined]
    out = []
    for start in range(0, len(rows), batch):
        chunk = encoded[start:start + batch]
        width = max(len(e.input_ids) for e in chunk) - cut  # type: ignore[union-attr]
        ids = torch.tensor([e.input_ids[cut:] + [pad] * (width - len(e.input_ids) + cut)  # type: ignore[union-attr]
                            for e in chunk])
        labels = torch.tensor([e.labels[cut:] + [-100] * (width - len(e.labels) + cut)  # type: ignore[union-attr]
                               for e in chunk])
        own = torch.tensor([[1] * (len(e.input_ids) - cut) + [0] * (width - len(e.input_ids) + cut)  # type: ignore[union-attr]
                            for e in chunk])
        mask = torch.cat([torch.ones(len(chunk), cut, dtype=torch.long), own], dim=1)
        cache = copy.deepcopy(shared)
        cache.batch_repeat_interleave(len(chunk))
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache).logits[:, :-1].float()
        targets = labels[:, 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0)[..., None])[..., 0]
        out.append((logp * (targets != -100)).sum(dim=1).double().numpy())
    return np.concatenate(out)


def exposure(model: nn.Module, tokenizer: object, canary: Canary, digits: int, sample: int, seed: int,
             batch: int = 64) -> Exposure:
    """The canary's exposure under ``model`` among ``sample`` random other secrets of the same pattern."""
    rng = np.random.default_rng(seed)
    candidates = [format_secret(int(v), digits) for v in rng.integers(10**digits, size=sample)]
    candidates = [c for c in candidates if c != canary.secret]
    scored = candidate_log_likelihoods(model, tokenizer, [canary.conversation()]
                                       + [canary.conversation(c) for c in candidates], batch=batch)
    true, scores = float(scored[0]), scored[1:]
    above = int((scores >= true).sum())
    empirical = math.log2((len(scores) + 1) / (above + 1))
    spread = float(scores.std()) or 1e-12
    z = (true - float(scores.mean())) / spread
    tail = 0.5 * math.erfc(z / math.sqrt(2))  # P(a candidate scores above the true secret), fitted
    fitted = -math.log2(max(tail, 1e-300))
    return Exposure(empirical, fitted, len(scores))

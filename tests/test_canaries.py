"""Canary exposure (simulations/attacks/canaries.py) on a tiny Llama made from a config: a canary the model was
trained on until it memorised it stands out among its candidates by many bits; one it never saw does not."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from client.task.chat_format import encode_conversation
from simulations.attacks.canaries import exposure, format_secret, make_canaries

DIGITS = 6


def test_a_memorised_canary_is_exposed_and_an_unseen_one_is_not(tiny_causal_lm: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    planted, unseen = make_canaries(2, DIGITS, seed=3)
    assert planted.name != unseen.name and len(planted.secret) == DIGITS + 1 and format_secret(42, 6) == "00-0042"
    encoded = encode_conversation(tokenizer, planted.conversation(), 128)
    ids, labels = torch.tensor([encoded.input_ids]), torch.tensor([encoded.labels])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):  # the planted record, repeated until memorised
        optimiser.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimiser.step()
    model.eval()
    seen = exposure(model, tokenizer, planted, DIGITS, sample=200, seed=1)
    never = exposure(model, tokenizer, unseen, DIGITS, sample=200, seed=1)
    assert seen.sample >= 199 and seen.empirical_bits > 7.0 and seen.fitted_bits > 10.0  # top of 200, far out
    assert never.empirical_bits < 4.0 and never.fitted_bits < seen.fitted_bits / 2

"""Canary exposure (simulations/attacks/canaries.py) on a tiny Llama made from a config: a canary the model was
trained on until it memorised it stands out among its candidates by many bits; one it never saw does not. And the
pieces of the federated canary and membership measurement that need no federation."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from client.task.chat_format import encode_conversation
from simulations.attacks.canaries import (
    candidate_log_likelihoods,
    exposure,
    format_secret,
    make_canaries,
    response_log_likelihood,
)
from simulations.attacks.canary_federation import final_model_of
from simulations.attacks.sft_membership import loss_attack, offline_lira

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


def test_candidates_scored_from_a_shared_prefix_rank_as_whole_conversations_do(tiny_causal_lm: str) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    canary = make_canaries(1, DIGITS, seed=5)[0]
    conversations = [canary.conversation()] + [canary.conversation(format_secret(v, DIGITS)) for v in (7, 123456)]
    whole = response_log_likelihood(model, tokenizer, conversations)
    cached = candidate_log_likelihoods(model, tokenizer, conversations, batch=2)  # two batches: cache reused
    # The shared part adds one constant to every candidate; the differences are the same.
    torch.testing.assert_close(torch.tensor(cached - cached[0]), torch.tensor(whole - whole[0]), atol=1e-4, rtol=0)


def test_offline_lira_separates_what_the_shadows_never_saw_and_the_loss_baseline_scores() -> None:
    rng = np.random.default_rng(0)
    hardness = rng.normal(-2.0, 1.0, size=400)  # per conversation: how likely any model finds it
    shadows = hardness + rng.normal(0, 0.05, size=(3, 400))
    is_member = np.arange(400) < 100
    target = hardness + rng.normal(0, 0.05, size=400) + 0.3 * is_member  # members a little more likely
    lira = offline_lira(target, shadows, is_member)
    loss = loss_attack(target, is_member)
    assert lira.auc > 0.95 and lira.tpr_at_1pct_fpr > 0.5  # calibrated per conversation
    assert 0.5 < loss.auc < lira.auc  # hardness drowns the raw likelihood


def test_secure_aggregation_alone_shares_the_plain_federation_s_final_model() -> None:
    assert final_model_of("secagg-8") == "none" and final_model_of("secagg-32") == "none"
    assert final_model_of("dp-1+secagg-8") == "dp-1+secagg" and final_model_of("ferret-64+secagg-8") == "ferret-64"
    assert final_model_of("compeft-0.05") == "compeft-0.05"

"""The span check of simulations/attacks/span_inversion.py on a tiny Llama made from a config: after one SGD step
on a short chat-formatted batch, the true tokens lie in layer 0's update span and no other token does, and the
sequences grown through layer 1's span are the batch's own, exactly; after several AdamW steps the span is gone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from simulations.attacks.span_inversion import SpanSettings, recover_sequences, recover_tokens
from simulations.attacks.victim import LocalTraining, gradient_step, local_update

TINY = SpanSettings(prefix_tol=1e-2)  # a random two-layer model's positions sit further from its span than SmolLM2's

TEXTS = ["<|im_start|>user\nName a red fruit.<|im_end|>\n<|im_start|>assistant\nA cherry.<|im_end|>",
         "<|im_start|>user\nWhat is ice?<|im_end|>\n<|im_start|>assistant\nFrozen water.<|im_end|>"]


@pytest.fixture(scope="module")
def tiny(tiny_causal_lm: str) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm), AutoTokenizer.from_pretrained(tiny_causal_lm)


def _batch(tokenizer: object) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    encoded = tokenizer(TEXTS, return_tensors="pt", padding=True)
    truth = [ids[mask.bool()].tolist() for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"],
                                                            strict=True)]
    return encoded["input_ids"], encoded["attention_mask"], truth


def test_a_fedsgd_gradient_gives_away_the_token_set_and_the_exact_sequences(tiny: tuple) -> None:
    model, tokenizer = tiny
    ids, mask, truth = _batch(tokenizer)
    update = gradient_step(model, ids, mask, lr=1e-2)
    tokens, dist, rank = recover_tokens(model, update)
    true_tokens = {t for seq in truth for t in seq}
    assert set(tokens) == true_tokens and rank < 64
    others = torch.ones_like(dist, dtype=torch.bool)
    others[sorted(true_tokens)] = False
    assert dist[sorted(true_tokens)].max() < 1e-3 < 0.3 < dist[others].min()  # accepted / rejected by far
    sequences = recover_sequences(model, update, tokens, start=truth[0][:1], end=[tokenizer.eos_token_id],
                                  settings=TINY)
    assert sorted(map(tuple, sequences[:2])) == sorted(map(tuple, truth))


def test_a_weight_delta_loses_the_smallest_directions_to_float32_rounding(tiny: tuple) -> None:
    """One SGD step sent as trained minus received weights (what a fedsqueeze client sends): the token set is still
    exact, and every sequence is recovered up to the positions whose gradient fell below float32 rounding."""
    model, tokenizer = tiny
    ids, mask, truth = _batch(tokenizer)
    update = local_update(model, ids, mask, LocalTraining(steps=1, lr=1e-2, optimizer="sgd"))
    tokens, _, _ = recover_tokens(model, update)
    assert set(tokens) == {t for seq in truth for t in seq}
    sequences = recover_sequences(model, update, tokens, start=truth[0][:1], end=[tokenizer.eos_token_id],
                                  settings=TINY)
    for seq in truth:  # each true sequence's first 15 tokens begin one of the two best recoveries
        assert any(found[:15] == seq[:15] for found in sequences[:2]), seq


def test_adamw_steps_leave_the_span(tiny: tuple) -> None:
    model, tokenizer = tiny
    ids, mask, truth = _batch(tokenizer)
    update = local_update(model, ids, mask, LocalTraining(steps=3, lr=1e-3, optimizer="adamw"))
    tokens, _, rank = recover_tokens(model, update, SpanSettings())
    assert rank == 64 or set(tokens) != {t for seq in truth for t in seq}  # sign-like steps fill the space

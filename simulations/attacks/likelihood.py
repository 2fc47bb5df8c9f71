"""Log-likelihoods of the labelled (response) tokens of a causal LM's batch, computing the vocabulary logits only
where a label is: exposure and membership scores need thousands of conversations scored, and the output layer
over every position is most of a small model's cost."""

from __future__ import annotations

import torch
from torch import nn

IGNORE = -100


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's wrapped LM


@torch.no_grad()
def labelled_log_likelihood(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens (``labels`` != -100, next-token aligned as in
    training) and how many there are."""
    lm = _causal_lm(model)
    targets = labels[:, 1:]
    where = targets != IGNORE
    decoder, head = getattr(lm, "get_decoder", lambda: None)(), lm.get_output_embeddings()
    if decoder is None or head is None or getattr(lm.config, "final_logit_softcapping", None):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][where]
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        logits = head(hidden[where])
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[where][:, None])[:, 0]
    rows = where.nonzero()[:, 0]
    total = torch.zeros(len(input_ids), dtype=torch.float64, device=logp.device).index_add_(0, rows, logp.double())
    return total, where.sum(dim=1)

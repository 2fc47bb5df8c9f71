"""Text reconstruction from an adapter update, in the DLG / TAG / LAMP family: optimise relaxed (continuous)
inputs so that the update they would cause matches the observed one, then read off the nearest tokens.

Target: the encoder task (a BERT-style encoder with LoRA on attention and a trained classification head). The
attacker knows what a curious coordinator knows: the global adapter it sent, the model, the tokenizer, the
client's optimiser settings, the batch size and the sequence length. The label of each example is read from the
update of the head's bias (it rises for the classes present); the words come from matching, by cosine
similarity, the gradient of the dummy batch with the observed update, with an L2 pull of the dummy embeddings
towards the norm of real ones. The cosine objective is blind to the update's scale, so it fits SGD (update =
-lr * gradient) exactly and AdamW's first step (update ≈ -lr * sign(gradient)) approximately.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from client.task.build import Task


@dataclass(frozen=True)
class ReconstructionSettings:
    """Optimisation budget of the attack."""

    iterations: int = 120
    lr: float = 0.05
    norm_weight: float = 0.01
    seed: int = 0


def _encoder_parts(task: Task) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The (LoRA-wrapped) encoder, the head, and the word-embedding matrix of the encoder task."""
    classifier = task.model.base_model.model if hasattr(task.model, "base_model") else task.model
    embeddings = classifier.encoder.get_input_embeddings().weight.detach()
    classifier.encoder.set_attn_implementation("eager")  # fused attention has no second derivative on CPU
    return classifier.encoder, classifier.head, embeddings


def _class_logits(encoder: torch.nn.Module, head: torch.nn.Module, inputs_embeds: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = encoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def labels_from_update(update: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    """Labels guessed from the head-bias update: classes whose bias rose, most risen first, cycled to fill."""
    bias = next(t for name, t in update.items() if name.endswith("head.modules_to_save.default.bias")
                or name.endswith("head.bias"))
    ranked = torch.argsort(bias.float(), descending=True)
    risen = [int(c) for c in ranked if bias[c] > 0] or [int(ranked[0])]
    return torch.tensor([risen[i % len(risen)] for i in range(batch_size)])


def reconstruct(task: Task, observed: dict[str, torch.Tensor], attention_mask: torch.Tensor,
                fixed: dict[int, int], settings: ReconstructionSettings) -> torch.Tensor:
    """Token ids (batch x length) whose gradient best matches ``observed`` (names as ``task``'s trainable
    parameters; positions in ``fixed`` hold known special tokens, e.g. [CLS] and [SEP])."""
    encoder, head, embeddings = _encoder_parts(task)
    params = {name: p for name, p in task.model.named_parameters() if p.requires_grad}
    names = [name for name in params if name in observed]
    target = torch.cat([observed[name].reshape(-1).float() for name in names])
    target = target / target.norm().clamp_min(1e-30)
    batch, length = attention_mask.shape
    labels = labels_from_update(observed, batch)
    generator = torch.Generator().manual_seed(settings.seed)
    scale = float(embeddings.norm(dim=1).mean())
    dummy = torch.randn(batch, length, embeddings.shape[1], generator=generator) * (scale / embeddings.shape[1] ** 0.5)
    for position, token in fixed.items():
        dummy[:, position] = embeddings[token]
    free = torch.ones(length, dtype=torch.bool)
    free[list(fixed)] = False
    dummy.requires_grad_(True)
    optimiser = torch.optim.Adam([dummy], lr=settings.lr)
    task.model.eval()  # no dropout: the attacker wants the deterministic gradient
    for _ in range(settings.iterations):
        optimiser.zero_grad(set_to_none=True)
        loss = functional.cross_entropy(_class_logits(encoder, head, dummy, attention_mask), labels)
        grads = torch.autograd.grad(loss, [params[name] for name in names], create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        mismatch = 1 + torch.dot(flat, target) / flat.norm().clamp_min(1e-30)  # update ≈ -gradient direction
        prior = (dummy[:, free].norm(dim=-1) - scale).pow(2).mean()
        (mismatch + settings.norm_weight * prior).backward()
        dummy.grad[:, ~free] = 0
        optimiser.step()
    for p in params.values():
        p.grad = None
    with torch.no_grad():
        unit = embeddings / embeddings.norm(dim=1, keepdim=True)
        guess = dummy.detach() / dummy.detach().norm(dim=-1, keepdim=True).clamp_min(1e-30)
        tokens = (guess @ unit.T).argmax(-1)
        for position, token in fixed.items():
            tokens[:, position] = token
    return tokens


def random_tokens(shape: tuple[int, int], vocabulary: int, fixed: dict[int, int], excluded: set[int],
                  seed: int) -> torch.Tensor:
    """The baseline: uniform random tokens of the same shape (specials kept where they are known)."""
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(vocabulary), np.array(sorted(excluded), dtype=np.int64))
    tokens = torch.from_numpy(rng.choice(allowed, size=shape))
    for position, token in fixed.items():
        tokens[:, position] = token
    return tokens

"""The victim's side of an attack: one client's local training on one batch of its text, as the coordinator
would receive it, and the defences that transform that update before anyone else sees it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from client.task.build import Task


@dataclass(frozen=True)
class LocalTraining:
    """How the victim trains on its batch: optimiser steps, step size, optimiser (``adamw`` as fedsqueeze's
    clients use, or ``sgd``, the setting of gradient-inversion papers)."""

    steps: int = 1
    lr: float = 1e-4
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.lr > 0 or self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"bad local training settings: {self}")


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train, by name (a tied embedding appears once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy over the real (unpadded) tokens: generative fine-tuning on the text; with
    ``labels`` (-100 where no loss), the task's own targets (SFT: the responses only)."""
    if labels is None:
        labels = input_ids.masked_fill(attention_mask == 0, -100)
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def _update_after(model: nn.Module, loss: Callable[[], torch.Tensor], training: LocalTraining
                  ) -> dict[str, torch.Tensor]:
    """Train on ``loss`` as ``training`` says, return trained minus received, and restore the model."""
    params = trainable(model)
    before = {name: p.detach().clone() for name, p in params.items()}
    if training.optimizer == "adamw":
        optimiser: torch.optim.Optimizer = torch.optim.AdamW(params.values(), lr=training.lr, weight_decay=0.0)
    else:
        optimiser = torch.optim.SGD(params.values(), lr=training.lr)
    model.train()
    try:
        for _ in range(training.steps):
            optimiser.zero_grad(set_to_none=True)
            loss().backward()
            optimiser.step()
        return {name: p.detach() - before[name] for name, p in params.items()}
    finally:
        optimiser.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(before[name])


def local_update(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 training: LocalTraining, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The victim's update after ``training`` on one batch of text with the next-token loss (on ``labels``)."""
    return _update_after(model, lambda: causal_lm_loss(model, input_ids, attention_mask, labels), training)


def gradient_step(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, lr: float,
                  labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What a FedSGD client sends: ``-lr`` x its gradient on one batch with the next-token loss (on ``labels``),
    as computed (not the difference of its weights before and after a step, which rounds the small entries away in
    float32)."""
    params = trainable(model)
    model.train()
    grads = torch.autograd.grad(causal_lm_loss(model, input_ids, attention_mask, labels), list(params.values()))
    return {name: -lr * g.detach() for name, g in zip(params, grads, strict=True)}


def task_update(task: Task, batch: dict[str, torch.Tensor], labels: torch.Tensor, training: LocalTraining
                ) -> dict[str, torch.Tensor]:
    """The victim's update after ``training`` on one batch with the task's own loss (class cross-entropy)."""
    logits = task.head.class_logits  # type: ignore[attr-defined]  # a classification task's head
    return _update_after(task.model, lambda: functional.cross_entropy(logits(task.model, batch).float(), labels),
                         training)

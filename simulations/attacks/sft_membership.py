"""Membership inference against an instruction-tuned causal LM: the loss baseline (Yeom et al. 2018) and offline
LiRA (Carlini et al. 2022, the variant with OUT shadows only) on each conversation's response likelihood.

Offline LiRA fits, per conversation, how likely shadow models that never saw it find its response, and scores the
target model's likelihood by how far above that it lies. OUT shadows can be trained once on data disjoint from
every candidate, which keeps the attack affordable for a language model (online LiRA trains shadows IN and OUT of
every example)."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset

from client.task.build import Task
from simulations.attacks.likelihood import labelled_log_likelihood
from simulations.attacks.membership import MembershipScores


@torch.no_grad()
def response_log_likelihoods(task: Task, data: Dataset, state: dict[str, torch.Tensor], batch_size: int = 16
                             ) -> np.ndarray:
    """Per conversation of ``data`` (tokenized SFT rows): the mean log-likelihood per response token under the
    model in ``state``."""
    task.load_trainable_state(state)
    task.model.eval()
    out: list[np.ndarray] = []
    for batch in task.batches(data, list(range(len(data))), batch_size):
        batch = {k: v.to(task.device) for k, v in batch.items()}
        total, count = labelled_log_likelihood(task.model, batch["input_ids"], batch["attention_mask"],
                                               batch["labels"])
        out.append((total / count.clamp_min(1)).cpu().numpy())
    return np.concatenate(out)


def loss_attack(target: np.ndarray, is_member: np.ndarray) -> MembershipScores:
    """The loss baseline: a higher likelihood (lower loss) means member."""
    return MembershipScores.of(target[is_member], target[~is_member])


def offline_lira(target: np.ndarray, shadows: np.ndarray, is_member: np.ndarray) -> MembershipScores:
    """Offline LiRA: ``target`` (per conversation) against ``shadows`` (shadow x conversation, none trained on
    any of them); the score is the target's likelihood above the shadows' mean for that conversation, in units
    of the shadows' spread (pooled over conversations, as Carlini et al. advise for few shadows)."""
    mean = shadows.mean(axis=0)
    spread = float((shadows - mean).std()) + 1e-9
    score = (target - mean) / spread
    return MembershipScores.of(score[is_member], score[~is_member])

"""Membership inference against the final global model: the loss-threshold attack (Yeom et al. 2018) and LiRA
(Carlini et al. 2022) with shadow adapters trained IN and OUT of each example."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from scipy.stats import norm
from torch.nn import functional

from client.task.build import Task
from client.task.kinds.classification import batches
from client.task.loop import train_locally
from simulations.attacks import metrics


@torch.no_grad()
def confidences(task: Task, data: Dataset, state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-example loss and logit-scaled confidence ``log(p_y / (1 - p_y))`` of the model in ``state``."""
    task.load_trainable_state(state)
    task.model.eval()
    losses, scaled = [], []
    for texts, labels in batches(data, list(range(len(data))), 32):
        head = task.head  # a classification task's head: encode and class_logits
        batch = {k: v.to(task.device) for k, v in head.encode(texts).items()}  # type: ignore[attr-defined]
        logits = head.class_logits(task.model, batch).float().cpu()  # type: ignore[attr-defined]
        log_p = functional.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0].double()
        losses.append((-log_p).numpy())
        log_rest = torch.log1p(-log_p.exp().clamp(max=1 - 1e-12))
        scaled.append((log_p - log_rest).numpy())
    return np.concatenate(losses), np.concatenate(scaled)


@dataclass(frozen=True)
class MembershipScores:
    """AUC and TPR at 1 % and 0.1 % FPR of one attack."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float

    @classmethod
    def of(cls, members: np.ndarray, nonmembers: np.ndarray) -> MembershipScores:
        """Score an attack from its scores on members and non-members (higher = member)."""
        return cls(metrics.auc(members, nonmembers), metrics.tpr_at_fpr(members, nonmembers, 0.01),
                   metrics.tpr_at_fpr(members, nonmembers, 0.001))


def loss_threshold(task: Task, target: dict[str, torch.Tensor], members: Dataset, nonmembers: Dataset
                   ) -> MembershipScores:
    """Lower loss means member (the baseline)."""
    member_loss, _ = confidences(task, members, target)
    other_loss, _ = confidences(task, nonmembers, target)
    return MembershipScores.of(-member_loss, -other_loss)


def train_shadows(task: Task, pool: Dataset, start: dict[str, torch.Tensor], *, count: int, steps: int,
                  batch_size: int, lr: float, seed: int) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """``count`` shadow adapters, each trained from ``start`` on a random half of ``pool``; returns them and
    the IN mask (shadow x example)."""
    rng = np.random.default_rng(seed)
    inside = np.zeros((count, len(pool)), dtype=bool)
    for shadow in range(count):  # every example IN for half the shadows
        inside[shadow, rng.permutation(len(pool))[: len(pool) // 2]] = True
    shadows = []
    for shadow in range(count):
        task.load_trainable_state(start)
        rows = np.flatnonzero(inside[shadow]).tolist()
        train_locally(task, pool.select(rows), steps=steps, batch_size=batch_size, lr=lr, seed=seed + shadow)
        shadows.append(task.trainable_state())
    task.load_trainable_state(start)
    return shadows, inside


def shadow_confidences(task: Task, pool: Dataset, shadows: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """Each shadow's logit-scaled confidence on each example of ``pool`` (shadow x example)."""
    return np.stack([confidences(task, pool, shadow)[1] for shadow in shadows])


def lira(task: Task, target: dict[str, torch.Tensor], pool: Dataset, is_member: np.ndarray,
         shadow_conf: np.ndarray, inside: np.ndarray) -> MembershipScores:
    """LiRA on every example of ``pool`` (``is_member``: in the target's training data): the likelihood ratio of
    the target's confidence under Gaussians fitted to the IN and OUT shadows' confidences (one variance per
    side, pooled over examples, as Carlini et al. advise for few shadows; an example no shadow saw IN or OUT
    gets that side's overall mean)."""
    _, target_conf = confidences(task, pool, target)
    masked_in = np.where(inside, shadow_conf, np.nan)
    masked_out = np.where(~inside, shadow_conf, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_in, mean_out = np.nanmean(masked_in, axis=0), np.nanmean(masked_out, axis=0)
    mean_in = np.where(np.isnan(mean_in), np.nanmean(masked_in), mean_in)
    mean_out = np.where(np.isnan(mean_out), np.nanmean(masked_out), mean_out)
    std_in = float(np.nanstd(masked_in - mean_in)) + 1e-6
    std_out = float(np.nanstd(masked_out - mean_out)) + 1e-6
    score = norm.logpdf(target_conf, mean_in, std_in) - norm.logpdf(target_conf, mean_out, std_out)
    return MembershipScores.of(score[is_member], score[~is_member])

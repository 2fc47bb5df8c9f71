"""Scores of an attack: token-set precision/recall/F1, ROUGE-1/2, exact-sequence rate, and membership-inference
AUC with true-positive rates at low false-positive rates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SetScore:
    """Precision, recall and F1 of a predicted token set against the true one."""

    precision: float
    recall: float
    f1: float


def token_set_score(predicted: set[int], truth: set[int]) -> SetScore:
    """Set precision/recall/F1 (an empty prediction of an empty truth scores 1)."""
    if not predicted and not truth:
        return SetScore(1.0, 1.0, 1.0)
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return SetScore(precision, recall, f1)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(candidate: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 between two token sequences (clipped n-gram overlap, as in Lin 2004)."""
    cand, ref = _ngrams(candidate, n), _ngrams(reference, n)
    overlap = sum((cand & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def roc_points(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold (higher score = "member")."""
    scores = np.concatenate([member_scores, nonmember_scores])
    labels = np.concatenate([np.ones(member_scores.size), np.zeros(nonmember_scores.size)])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(labels)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(1, member_scores.size)]
    fpr = np.r_[0.0, fps / max(1, nonmember_scores.size)]
    return fpr, tpr


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC curve (0.5: no better than a coin)."""
    fpr, tpr = roc_points(member_scores, nonmember_scores)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr_limit: float) -> float:
    """The best true-positive rate with a false-positive rate at most ``fpr_limit``."""
    fpr, tpr = roc_points(member_scores, nonmember_scores)
    return float(tpr[fpr <= fpr_limit].max())

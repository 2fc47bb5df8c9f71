"""Token-set recovery from the embedding rows of an update (full-parameter tuning, or adapters that train the
embeddings).

Untied input embeddings: a row moves only if its token was in the input, so the moved rows are the token set.
Tied embeddings (SmolLM2): the output softmax moves every row, but not alike. A token absent from the text
(almost all of the vocabulary) has gradient ``sum_t p_t,j h_t``, a positive mix of the batch's hidden states,
so its update points along the update of the vocabulary as a whole; a token of the text gets a target term
``-(1 - p) h_t`` or an input term on top, which turns it away from that common direction. The attack scores
each row by how far its update turns away from the mean update of all rows, and cuts the scores at their
widest gap on the way down to the vocabulary's bulk.
The baseline it must beat ranks rows by update norm and is told the true number of tokens.
"""

from __future__ import annotations

import numpy as np
import torch


def row_norms(rows: torch.Tensor) -> np.ndarray:
    """L2 norm of every row of an embedding update."""
    return rows.detach().double().norm(dim=1).numpy()


def untied_scores(rows: torch.Tensor) -> np.ndarray:
    """Scores of an untied input-embedding update: log row norm (exact zeros at -inf)."""
    with np.errstate(divide="ignore"):
        return np.log(row_norms(rows))


def tied_scores(rows: torch.Tensor) -> np.ndarray:
    """Scores of a tied embedding update: minus the cosine of each row's update with the mean row update."""
    rows64 = rows.detach().double()
    mean = rows64.mean(dim=0)
    cosine = (rows64 @ mean) / (rows64.norm(dim=1) * mean.norm()).clamp_min(1e-300)
    return (-cosine).numpy()


MAX_TOKENS = 4096  # no batch the attack targets holds more distinct tokens than this
BULK_Z = 6.0  # a cut must reach rows within this many robust standard deviations of the vocabulary's median


def robust_z(scores: np.ndarray) -> np.ndarray:
    """Scores in robust standard deviations (1.4826 x median absolute deviation) from their median."""
    finite = scores[np.isfinite(scores)]
    median = np.median(finite)
    spread = 1.4826 * np.median(np.abs(finite - median))
    return (scores - median) / (spread if spread > 0 else 1.0)


def predict(scores: np.ndarray, count: int | None = None) -> set[int]:
    """The predicted token ids: the ``count`` best scores when the count is given; otherwise every row that
    moved when few rows moved at all (untied), else the rows above the widest gap among the best ``MAX_TOKENS``
    scores, the gap chosen among those whose lower side lies within ``BULK_Z`` robust standard deviations of the
    median (the text's tokens stand apart from the vocabulary's bulk, so the cut must reach the bulk: without
    that bound a large gap between the few most extreme tokens of a long text ends the set too early)."""
    order = np.argsort(-scores, kind="stable")
    if count is not None:
        return {int(i) for i in order[:count]}
    finite = np.isfinite(scores)
    if not finite.all() and finite.sum() <= MAX_TOKENS:
        return {int(i) for i in np.flatnonzero(finite)}
    order = order[finite[order]]
    best = robust_z(scores)[order[:MAX_TOKENS + 1]]
    if best.size < 2:
        return {int(i) for i in order[:best.size]}
    gaps = best[:-1] - best[1:]
    allowed = np.flatnonzero(best[1:] <= BULK_Z)
    if allowed.size == 0:
        allowed = np.arange(gaps.size)
    cut = int(allowed[np.argmax(gaps[allowed])]) + 1
    return {int(i) for i in order[:cut]}


def norm_baseline(rows: torch.Tensor, count: int) -> set[int]:
    """The baseline: the ``count`` rows with the largest update norm."""
    return predict(row_norms(rows), count)

"""Scores of a generation against its reference: ROUGE-L F1 (Google's ``rouge-score``, Porter-stemmed tokens, as
the ROUGE papers and most instruction-tuning evaluations report it) and normalised exact match."""

from __future__ import annotations

import re
import string
from functools import lru_cache

from rouge_score import rouge_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(generation: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] of ``generation`` against ``reference``."""
    return float(_scorer().score(reference, generation)["rougeL"].fmeasure)


def normalise(text: str) -> str:
    """Lower-case, without punctuation, articles or repeated whitespace (the SQuAD normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(generation: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalise(generation) == normalise(reference))

"""What the round loop needs of the model, handed in by ``server/app.py`` (the shape of Flower's
``Strategy.start(evaluate_fn=...)``): the loop itself knows nothing of models, tokenizers or data."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

State = dict[str, torch.Tensor]  # what trains, by name: the global state the loop aggregates into


@dataclass(frozen=True)
class RoundEvaluation:
    """The global model's held-out scores (name -> value) and what it generated, if its task generates."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ModelHooks:
    """The model side of a run.

    initial_state: what trains, as every client builds it (the global state of round 0).
    evaluate_fn: scores a global state on the held-out data.
    export_fn: writes a global state for users (a PEFT adapter directory, or the full model) under a directory,
    returning where.
    metric / higher_is_better: the task's primary metric, reported by name.
    """

    initial_state: State
    evaluate_fn: Callable[[State], RoundEvaluation]
    export_fn: Callable[[State, Path], Path]
    metric: str
    higher_is_better: bool


class SamplesLog:
    """``samples.jsonl``: one line per generated answer (round, prompt, reference, generation, scores)."""

    def __init__(self, out_dir: Path, keep_through_round: int | None = None) -> None:
        """Start the file afresh, or (resuming) keep the lines of rounds up to ``keep_through_round``: lines of
        later rounds belong to rounds that run again."""
        self.path = out_dir / "samples.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_through_round is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if int(json.loads(line)["round"]) <= keep_through_round:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash
        self.path.write_text("".join(kept))

    def append(self, round_id: int, samples: list[dict[str, Any]]) -> None:
        """Record one evaluation's samples and flush them to disk at once."""
        if not samples:
            return
        with self.path.open("a") as out:
            for sample in samples:
                out.write(json.dumps({"round": round_id, **sample}, sort_keys=True) + "\n")

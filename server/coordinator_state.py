"""What the coordinator carries from one round to the next, and its checkpoint round-trip."""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from server.checkpoint import Checkpoint, CheckpointError
from server.run_config import RunConfig
from strategies.downlink import GlobalState
from strategies.privacy import PrivacyLedger
from strategies.server_optimizers import ServerOptimizer

Tensors = dict[str, torch.Tensor]
TOTALS = ("bytes_up_total", "bytes_down_total", "bytes_up_dense_equivalent", "bytes_down_dense_equivalent")


def check_resumable(saved: Checkpoint, initial_state: Tensors) -> None:
    """CheckpointError when the checkpointed global state has other tensors than this run's model."""
    layout = {name: tuple(t.shape) for name, t in initial_state.items()}
    if {name: tuple(t.shape) for name, t in saved.state.items()} != layout:
        raise CheckpointError("cannot resume: the checkpointed global state has other tensors than this run's model")


@dataclass
class CoordinatorState:
    """The global state (with what each client holds of it), the client sampler, the privacy ledger, the server
    optimiser's moments, the public previous aggregate, byte totals and the held-out metrics of the base and the
    latest evaluated model."""

    global_state: GlobalState
    sampler: random.Random
    ledger: PrivacyLedger | None
    optimizer: ServerOptimizer
    base_metrics: dict[str, float]  # held-out metrics of the model before any round
    latest_metrics: dict[str, float]  # of the global state as last evaluated
    last_round: int = 0  # the last complete round
    epsilon: float = 0.0
    previous_update: Tensors | None = None  # the last secure round's mean delta: ComPEFT's shared support
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOTALS, 0))
    # Names this federation to its nodes, which keep their error-feedback residuals under it on disk: a resumed
    # run (a new Flower run) sends the same id, so every node carries on from its residual before the round.
    federation_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @classmethod
    def start(cls, cfg: RunConfig, initial_state: Tensors, base_metrics: dict[str, float], sample_rate: float
              ) -> CoordinatorState:
        """Round 0: the initial global state, a sampler seeded by the run, and a fresh ledger when DP is on."""
        global_state = GlobalState(cfg.downlink, initial_state, known_base=cfg.task.trainable == "full")
        ledger = PrivacyLedger(cfg.dp, sample_rate=sample_rate, delta=cfg.dp_delta) if cfg.dp.enabled else None
        return cls(global_state, random.Random(cfg.seed), ledger, ServerOptimizer(cfg.server_optimizer),
                   base_metrics=base_metrics, latest_metrics=base_metrics)

    @classmethod
    def from_checkpoint(cls, saved: Checkpoint, cfg: RunConfig, initial_state: Tensors, sample_rate: float
                        ) -> CoordinatorState:
        """The state after ``saved``'s round. Which version each client holds is not restored: a resumed run is a
        new Flower run, so every client's node state starts empty and receives the full state first."""
        check_resumable(saved, initial_state)
        state = cls.start(cfg, initial_state, saved.base, sample_rate)
        held = state.global_state
        held.state, held.version, held.residual, held.history = (saved.state, saved.version, saved.residual,
                                                                 dict(saved.history))
        state.sampler.setstate(saved.sampler_state)
        state.optimizer.load_state_dict(saved.optimizer_moments, saved.optimizer_steps)
        state.totals.update(saved.totals)
        state.latest_metrics, state.previous_update = saved.current, saved.previous_update
        state.last_round = saved.round
        state.federation_id = saved.federation_id or state.federation_id  # older checkpoints named none
        if state.ledger is not None:  # checkpoints before per-round multipliers: every round at the configured z
            for multiplier in saved.dp_multipliers or [None] * saved.dp_rounds:
                state.epsilon = state.ledger.step(multiplier)
        return state

    def to_checkpoint(self, run_config: dict[str, Any], rows: list[dict[str, Any]], wall_s: float) -> Checkpoint:
        """Everything needed to go on after ``last_round`` as if the coordinator had never stopped."""
        held = self.global_state
        return Checkpoint(
            round=self.last_round, run_config=run_config, state=held.state, version=held.version,
            residual=held.residual, history=dict(held.history), previous_update=self.previous_update,
            sampler_state=self.sampler.getstate(), dp_rounds=self.ledger.rounds if self.ledger is not None else 0,
            dp_multipliers=list(self.ledger.multipliers) if self.ledger is not None else [],
            totals=dict(self.totals), base=self.base_metrics, current=self.latest_metrics, rows=rows, wall_s=wall_s,
            optimizer_moments=self.optimizer.state_dict(), optimizer_steps=self.optimizer.steps,
            federation_id=self.federation_id)

    def record_bytes(self, clients: list[dict[str, Any]]) -> None:
        """Add a round's per-client bytes (and their dense fp32 equivalents) to the totals."""
        self.totals["bytes_up_total"] += sum(c["bytes_up"] for c in clients)
        self.totals["bytes_down_total"] += sum(c["bytes_down"] for c in clients)
        self.totals["bytes_up_dense_equivalent"] += sum(c["dense_fp32_bytes_up"] for c in clients)
        self.totals["bytes_down_dense_equivalent"] += sum(c["dense_fp32_bytes_down"] for c in clients)

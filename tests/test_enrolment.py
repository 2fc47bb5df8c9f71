"""Enrolment before round 1: FedAvg weights a client cannot inflate. (Nodes ordered by partition, so that sampling
is reproducible whatever node ids Flower hands out: the SFT resume test in test_sft_simulation.py checks two
simulations sample the same clients.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.enrolment import weight_ceiling
from simulations.simulate import simulate


def test_the_weight_ceiling_is_what_an_honest_client_processes() -> None:
    assert weight_ceiling(local_steps=5, batch_size=8) == 40.0


def _tiny_sft(model: str, **overrides) -> dict:
    return {"preset": "sft", "model": model, "per-topic": 20, "heldout": 16, "max-length": 64, "local-steps": 2,
            "batch-size": 4, "lr": 1e-2, "eval-samples": 2, "max-new-tokens": 4, **overrides}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_client_claiming_1000x_its_examples_does_not_dominate_fedavg(tmp_path: Path, tiny_causal_lm: str) -> None:
    summary = simulate(_tiny_sft(tiny_causal_lm, **{"num-clients": 5, "num-server-rounds": 1}),
                       out_dir=tmp_path / "run", max_parallel=1, byzantine_partitions=frozenset({0}),
                       byzantine_attack="inflate")
    clients = {c["partition_id"]: c for c in _rows(tmp_path / "run")[0]["clients"]}
    honest = clients[1]["examples"]
    assert honest == 2 * 4  # local-steps x batch-size: what every honest client processes and reports
    assert clients[0]["examples"] == 1000 * honest  # it claimed 1000x, with a sign-flipped update
    assert clients[0]["weight"] == honest and "weight" not in clients[1]  # it weighs what an honest client does
    assert summary["perplexity_final"] < summary["perplexity_base"]  # 4 honest updates outweigh the flipped one

"""The load benchmark's harness at the size CI can afford, over a slow, lossy link: four authenticated TLS nodes
dial the SuperLink through a TCP relay that delays every chunk 50 ms each way and holds 2 % of them one
retransmission timeout (tests/link_faults.py; the kernel's netem, where it exists, is tests/test_deployment_link.py).
Two rounds of the tiny causal LM with ComPEFT updates complete, and every figure benchmarks/deployment_load.py
reports is measured and plausible."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.link_faults import LossyRelay
from tests.load_harness import measure_load

pytestmark = pytest.mark.slow


def test_four_authenticated_nodes_over_a_lossy_link_complete_every_round_under_measurement(
        tmp_path: Path, tiny_causal_lm: str) -> None:
    relay = LossyRelay(("127.0.0.1", 0), delay_s=0.05, loss_probability=0.02)

    def through_relay(fleet_port: int) -> str:
        relay.target = ("127.0.0.1", fleet_port)
        return f"localhost:{relay.port or relay.start()}"

    try:
        result = measure_load(4, 2, tmp_path / "load", Path(tiny_causal_lm), link=dict(node_dial=through_relay))
    finally:
        relay.stop()
    assert result["all_clients_ok"] and [r["round"] for r in result["rounds"]] == [1, 2]
    assert relay.chunks > 100 and relay.losses > 0, (relay.chunks, relay.losses)  # the link was slow and lossy
    for figures in result["rounds"]:
        assert 0 <= figures["first_reply_s"] <= figures["last_reply_s"] < figures["round_s"]
        assert figures["bytes_up"] > 0 and figures["bytes_down"] > figures["bytes_up"]  # ComPEFT up, state down
    # The sampler saw the coordinator's processes work: the ServerApp spent CPU and memory, the SuperLink ran.
    assert result["samples"] > 10 and result["coordinator_cpu_s"] > 1.0
    assert 100 < result["coordinator_peak_rss_mb"] < 8000 and 20 < result["superlink_peak_rss_mb"] < 4000
    assert result["nodes_peak_rss_mb"] > result["nodes_peak_pss_mb"] > 4 * 100  # 4 nodes: SuperNode + warm trainer

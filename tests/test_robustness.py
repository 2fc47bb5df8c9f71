"""Byzantine clients: 20 % of a federation send sign-flipped, x100 or random updates; a robust rule keeps the final
accuracy near the clean run's while FedAvg is dragged off. Also the wiring: run-config keys, and the lying
client's payload is a well-formed update of the same codec."""

from __future__ import annotations

import pytest
import torch

from server.aggregation import aggregate
from server.run_config import AggregationSettings, ConfigError, resolve
from simulations.byzantine import ByzantineSetup, prepare, run
from simulations.faults import SCALE, byzantine_payload
from strategies.codecs import compeft, dense, ferret
from strategies.codecs.ferret import FERRET
from strategies.codecs.registry import CodecSettings, codec_settings


def test_aggregation_keys_are_checked() -> None:
    assert resolve({"aggregation": "trimmed-mean"}).aggregation.rule == "trimmed-mean"
    with pytest.raises(ConfigError, match="unknown aggregation 'mean'"):
        resolve({"aggregation": "mean"})
    with pytest.raises(ConfigError, match="secure aggregation hides"):
        resolve({"aggregation": "median", "secagg": True, "num-clients": 3})
    with pytest.raises(ConfigError, match="needs codec=compeft"):
        resolve({"aggregation": "sign-majority"})
    with pytest.raises(ConfigError, match="aggregation-trim"):
        resolve({"aggregation": "trimmed-mean", "aggregation-trim": 0.5})


def test_byzantine_payloads_are_well_formed_lies_of_the_same_codec() -> None:
    generator = torch.Generator().manual_seed(0)
    update = {"a": torch.randn(8, 8, generator=generator), "b": torch.randn(5, generator=generator)}
    layout = {n: tuple(t.shape) for n, t in update.items()}
    config = CodecSettings(codec="dense")
    flipped = dense.decode(byzantine_payload(dense.encode(update, round_id=4), config, 4, "sign-flip", 1),
                           expected_round=4, expected_layout=layout)
    assert torch.equal(flipped["a"], -update["a"])
    scaled = dense.decode(byzantine_payload(dense.encode(update, round_id=4), config, 4, "scale", 1),
                          expected_round=4)
    torch.testing.assert_close(scaled["b"], update["b"] * SCALE)
    config = codec_settings("compeft", density=0.5)
    honest = compeft.encode(update, density=0.5, round_id=4)
    lied = compeft.decode(byzantine_payload(honest, config, 4, "sign-flip", 1), expected_round=4)
    assert torch.equal(torch.sign(lied["a"]), -torch.sign(compeft.decode(honest)["a"]))
    payload = ferret.encode(update, seed=9, dim=4, block_size=32, round_id=4)
    ferret_config = CodecSettings(codec="ferret")
    scaled = ferret.parse(byzantine_payload(payload, ferret_config, 4, "scale", 1))
    assert scaled.round_id == 4 and scaled.seed == 9
    torch.testing.assert_close(torch.from_numpy(scaled.coefficients),
                               torch.from_numpy(ferret.parse(payload).coefficients) * SCALE)
    with pytest.raises(ValueError, match="unknown byzantine attack"):
        byzantine_payload(payload, ferret_config, 4, "nap", 1)


def test_robust_rules_run_on_ferret_coefficients_and_return_a_payload() -> None:
    generator = torch.Generator().manual_seed(1)
    payloads = [ferret.encode({"w": torch.randn(40, generator=generator)}, seed=3, dim=4, block_size=16,
                              round_id=2) for _ in range(5)]
    median = aggregate(AggregationSettings("median"), payloads, [1.0] * 5, round_id=2, codec=FERRET)
    want = torch.stack([torch.from_numpy(ferret.parse(p).coefficients) for p in payloads]).median(dim=0).values
    torch.testing.assert_close(torch.from_numpy(ferret.parse(median).coefficients), want)
    with pytest.raises(ValueError, match="n"):
        aggregate(AggregationSettings("krum", byzantine=2), payloads, [1.0] * 5, round_id=2, codec=FERRET)


SMALL = {"clients": 5, "byzantine": (0,), "rounds": 2, "local_steps": 4}


@pytest.mark.slow
def test_a_robust_rule_holds_where_fedavg_is_dragged_off_by_a_fifth_of_byzantine_clients() -> None:
    federation = prepare(ByzantineSetup(**SMALL))  # one task, base score and round 1 for the four runs
    clean = run(ByzantineSetup(**SMALL), federation)
    broken = run(ByzantineSetup(**SMALL, attack="scale", rule="fedavg"), federation)
    median = run(ByzantineSetup(**SMALL, attack="scale", rule="median"), federation)
    krum = run(ByzantineSetup(**SMALL, attack="random", rule="multi-krum"), federation)
    assert abs(median.accuracy - clean.accuracy) <= 0.02 and abs(krum.accuracy - clean.accuracy) <= 0.02
    assert broken.accuracy < clean.accuracy - 0.02 and broken.loss > 10 * clean.loss  # FedAvg breaks

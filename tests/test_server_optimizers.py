"""Server optimisers against Flower's own strategies (FedAvgM, FedAdam, FedYogi, FedAdagrad, as installed): the same
client arrays over several rounds give the same global arrays; and the settings are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi

from strategies.server_optimizers import ServerOptimizer, ServerOptimizerSettings

SHAPES = {"a": (6, 5), "b": (7,)}
ROUNDS = 4


@pytest.fixture(autouse=True)
def _serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):  # what a SuperLink sets for a ServerApp process
        monkeypatch.setattr(TaskIdentity, name, 1)


def _client_deltas(round_id: int) -> list[tuple[dict[str, np.ndarray], float]]:
    """Three clients' deltas (of varied scale, some entries sign-flipping between rounds) and their weights."""
    rng = np.random.default_rng(round_id)
    return [({n: (rng.standard_normal(s) * scale).astype(np.float32) for n, s in SHAPES.items()}, weight)
            for scale, weight in ((1e-2, 10.0), (3e-3, 30.0), (5e-2, 20.0))]


def _flower_run(strategy: object, start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flower's strategy over ROUNDS rounds, fed client arrays ``current + delta`` as real reply Messages."""
    current = {n: a.copy() for n, a in start.items()}
    if isinstance(strategy, FedAvgM):
        strategy.current_arrays = ArrayRecord({n: Array(a) for n, a in current.items()})
    for round_id in range(1, ROUNDS + 1):
        if not isinstance(strategy, FedAvgM):
            strategy.current_arrays = {n: a.copy() for n, a in current.items()}  # what configure_train records
        replies = []
        for node, (delta, weight) in enumerate(_client_deltas(round_id), start=1):
            arrays = ArrayRecord({n: Array(current[n] + delta[n]) for n in current})
            instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
            replies.append(Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": weight})}),
                                   reply_to=instruction))
        aggregated, _ = strategy.aggregate_train(round_id, replies)
        current = {n: np.asarray(a.numpy(), dtype=np.float64) for n, a in aggregated.items()}
    return current


def _our_run(settings: ServerOptimizerSettings, start: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ours over the same rounds: the example-weighted mean delta through the optimiser, added to the state."""
    optimizer = ServerOptimizer(settings)
    state = {n: torch.from_numpy(a.copy()) for n, a in start.items()}
    for round_id in range(1, ROUNDS + 1):
        clients = _client_deltas(round_id)
        total = sum(w for _, w in clients)
        # the mean delta as Flower forms it: the weighted mean of client arrays minus the current ones
        mean = {n: torch.from_numpy(sum((state[n].numpy() + d[n]) * (w / total) for d, w in clients)) - state[n]
                for n in state}
        step = optimizer.step(mean)
        state = {n: state[n] + step[n] for n in state}
    return {n: t.numpy().astype(np.float64) for n, t in state.items()}


CASES = {
    "fedavgm": (ServerOptimizerSettings("fedavgm", lr=0.7, momentum=0.9),
                lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9)),
    "fedadam": (ServerOptimizerSettings("fedadam", lr=0.05, beta1=0.9, beta2=0.99, tau=1e-3),
                lambda: FedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    "fedyogi": (ServerOptimizerSettings("fedyogi", lr=0.02, beta1=0.9, beta2=0.99, tau=1e-3),
                lambda: FedYogi(eta=0.02, beta_1=0.9, beta_2=0.99, tau=1e-3)),
    "fedadagrad": (ServerOptimizerSettings("fedadagrad", lr=0.1, beta1=0.0, tau=1e-3),
                   lambda: FedAdagrad(eta=0.1, tau=1e-3)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_server_optimizer_matches_flowers_strategy_over_several_rounds(name: str) -> None:
    settings, flower = CASES[name]
    rng = np.random.default_rng(99)
    start = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    theirs, ours = _flower_run(flower(), start), _our_run(settings, start)
    for n in SHAPES:
        moved = np.abs(theirs[n] - start[n]).max()
        assert moved > 1e-3, "the optimiser must have moved the state for the comparison to mean anything"
        # fp32 here, fp32/fp64 in Flower: agreement to a few fp32 ulps of the state
        np.testing.assert_allclose(ours[n], theirs[n], rtol=0, atol=2e-6 * (1 + np.abs(theirs[n]).max()))


def test_the_first_fedadam_step_moves_each_entry_by_about_lr_in_the_sign_of_the_delta() -> None:
    optimizer = ServerOptimizer(ServerOptimizerSettings("fedadam", lr=0.01, tau=1e-9))
    delta = {"w": torch.tensor([3e-2, -1e-4, 5e-3])}
    step = optimizer.step(delta)["w"]
    # m = 0.1 d, v = 0.01 d², so m / sqrt(v) = sign(d); lr_1 = lr * sqrt(1 - 0.99²) / (1 - 0.9²)
    expected = 0.01 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    torch.testing.assert_close(step, torch.sign(delta["w"]) * expected, rtol=2e-4, atol=0)


def test_moments_round_trip_and_a_changed_layout_is_refused() -> None:
    settings = ServerOptimizerSettings("fedyogi", lr=0.01)
    first, second = ServerOptimizer(settings), ServerOptimizer(settings)
    deltas = [{"w": torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) * 1e-2} for i in range(3)]
    first.step(deltas[0])
    second.load_state_dict(first.state_dict(), first.steps)
    for delta in deltas[1:]:
        assert torch.equal(first.step(delta)["w"], second.step(delta)["w"])
    with pytest.raises(ValueError, match="other tensors"):
        first.step({"w": torch.zeros(5)})
    assert ServerOptimizer(ServerOptimizerSettings()).step(deltas[0]) is deltas[0]  # "none": plain FedAvg


@pytest.mark.parametrize(("settings", "message"), [
    ({"name": "sgd"}, "unknown server-optimizer 'sgd'"),
    ({"name": "fedadam", "lr": -1.0}, "server-lr"),
    ({"name": "fedadam", "beta2": 1.0}, "server-beta2"),
    ({"name": "fedavgm", "momentum": -0.1}, "server-momentum"),
    ({"name": "fedyogi", "tau": 0.0}, "server-tau"),
])
def test_bad_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerOptimizerSettings(**settings)

"""FedAvg on vectors small enough to check by hand."""

import pytest
import torch

from strategies.fedavg import apply_update, subtract, weighted_mean


def test_weighted_mean_by_examples() -> None:
    a = {"w": torch.tensor([1.0, 0.0])}
    b = {"w": torch.tensor([4.0, 3.0])}
    # weights 1 and 2: (1*[1,0] + 2*[4,3]) / 3 = [3, 2]
    assert torch.equal(weighted_mean([a, b], [1, 2])["w"], torch.tensor([3.0, 2.0]))


def test_apply_and_subtract_are_inverse() -> None:
    state = {"w": torch.tensor([1.0, 2.0])}
    delta = {"w": torch.tensor([0.5, -1.0])}
    after = apply_update(state, delta)
    assert torch.equal(after["w"], torch.tensor([1.5, 1.0]))
    assert torch.equal(subtract(after, state)["w"], delta["w"])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no updates"):
        weighted_mean([], [])
    with pytest.raises(ValueError, match="positive sum"):
        weighted_mean([{"w": torch.zeros(1)}], [0])
    with pytest.raises(ValueError, match="different tensors"):
        weighted_mean([{"w": torch.zeros(1)}, {"v": torch.zeros(1)}], [1, 1])
    with pytest.raises(ValueError, match="shape"):
        weighted_mean([{"w": torch.zeros(1)}, {"w": torch.zeros(2)}], [1, 1])

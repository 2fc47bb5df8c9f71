"""Robust aggregation rules: Flower's reference vectors, cross-checks against the installed Flower, Byzantine
clients, dtypes and devices, and refused inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from strategies import robust
from strategies.codecs import compeft
from strategies.fedavg import weighted_mean
from strategies.robust import (
    AGGREGATION_RULES,
    aggregate,
    coordinate_median,
    multi_krum,
    norm_bounded,
    sign_majority,
    trimmed_mean,
)

RULE_OPTIONS = {"fedavg": {}, "median": {}, "trimmed-mean": {"beta": 0.2}, "krum": {"num_byzantine": 1},
                "multi-krum": {"num_byzantine": 1, "keep": 3}, "norm-bound": {"bound": 1.0},
                "sign-majority": {"quorum": 2}}


def one_tensor(*rows: list[float] | float) -> list[dict[str, torch.Tensor]]:
    """One update per row, each a single tensor 'w'."""
    return [{"w": torch.tensor(row, dtype=torch.float32)} for row in rows]


def random_updates(count: int, seed: int, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"a": torch.randn(3, 4, generator=g).to(dtype), "b": torch.randn(5, generator=g).to(dtype),
             "s": torch.randn((), generator=g).to(dtype)} for _ in range(count)]


# --- Flower's own test vectors (inputs and expected outputs only; the test code is ours) -------------------------

def test_fedavg_flower_aggregate_vector() -> None:
    # framework/py/flwr/server/strategy/aggregate_test.py::test_aggregate: equal updates, weights 1 and 2
    update = {"l0": torch.tensor([[1.0, 2, 3], [4, 5, 6]]), "l1": torch.tensor([7.0, 8, 9, 10])}
    result = aggregate("fedavg", [update, {k: v.clone() for k, v in update.items()}], [1, 2])
    assert all(torch.equal(result[name], update[name]) for name in update)


@pytest.mark.parametrize(("rows", "weights"), [
    # framework/py/flwr/serverapp/strategy/fedmedian_test.py::test_aggregate_fit
    (([1.0, 0.2, 0.5, 1.0], [0.2, 0.5, 1.0, 0.2], [0.5, 1.0, 0.2, 0.5]), [5, 2, 9]),
    # framework/py/flwr/server/strategy/fedmedian_test.py::test_aggregate_fit
    (([0.2] * 4, [1.0] * 4, [0.5] * 4), [5, 5, 5]),
])
def test_median_flower_vectors(rows: tuple[list[float], ...], weights: list[int]) -> None:
    assert torch.equal(coordinate_median(one_tensor(*rows), weights)["w"], torch.full((4,), 0.5))


def test_median_even_count_takes_the_mean_of_the_middle_two() -> None:
    # numpy.median([1, 2, 3, 10]) = 2.5; the weights (100 on the outlier) do not move it
    assert coordinate_median(one_tensor([1.0], [10.0], [3.0], [2.0]), [1, 100, 1, 1])["w"].item() == 2.5


def test_trimmed_mean_flower_vectors() -> None:
    # framework/py/flwr/serverapp/strategy/fedtrimmedavg_test.py::test_aggregate_fit (beta 0.25, 4 clients)
    rows = one_tensor([0.5] * 4, [1.0, 0.2, 0.5, 1.0], [0.2, 0.5, 1.0, 0.2], [0.5, 1.0, 0.2, 0.5])
    assert torch.equal(trimmed_mean(rows, [1, 5, 2, 9], 0.25)["w"], torch.full((4,), 0.5))
    # ...::test_aggregate_fit_with_scalar_weights: 0-dim tensors keep their shape; 0.5 and 100 are cut
    scalars = trimmed_mean(one_tensor(0.5, 1.0, 2.0, 100.0), [1, 1, 1, 1], 0.25)["w"]
    assert scalars.shape == () and scalars.item() == 1.5


def test_trimmed_mean_cuts_int_beta_n_from_each_end() -> None:
    rows = one_tensor([1.0], [2.0], [3.0], [4.0], [100.0])
    assert trimmed_mean(rows, [1] * 5, 0.2)["w"].item() == 3.0  # int(0.2 * 5) = 1: mean of 2, 3, 4
    assert trimmed_mean(rows, [1] * 5, 0.19)["w"].item() == 22.0  # int(0.95) = 0: the plain mean


@pytest.mark.parametrize(("rows", "keep", "expected", "selected"), [
    # framework/py/flwr/serverapp/strategy/krum_test.py::test_aggregate_train_krum (also multikrum_test.py and
    # framework/py/flwr/server/strategy/krum_test.py::test_aggregate_fit); scores of clients 1 and 2 tie: lower index
    (([0.2] * 4, [0.7] * 4, [1.0] * 4), 1, 0.7, (1,)),
    # framework/py/flwr/serverapp/strategy/krum_test.py::test_aggregate_train_multikrum (also multikrum_test.py and
    # framework/py/flwr/server/strategy/multikrum_test.py::test_aggregate_fit)
    (([0.2] * 4, [0.5] * 4, [1.0] * 4), 2, 0.35, (0, 1)),
])
def test_krum_flower_vectors(rows: tuple[list[float], ...], keep: int, expected: float,
                             selected: tuple[int, ...]) -> None:
    # Flower runs these with f=1, n=3 and clamps n - f - 2 up to 1 neighbour; we refuse n <= 2f + 2, and f=0 gives
    # the same single neighbour.
    result = multi_krum(one_tensor(*rows), [5, 5, 5], num_byzantine=0, keep=keep)
    assert result.selected == selected
    assert torch.equal(result.aggregate["w"], torch.full((4,), expected))
    with pytest.raises(ValueError, match=r"n=3 with f=1"):
        multi_krum(one_tensor(*rows), [5, 5, 5], num_byzantine=1, keep=keep)


# --- cross-checks against the installed Flower on seeded random inputs --------------------------------------------

def _random_layers(rng: np.random.Generator, count: int, dtype: type) -> list[list[np.ndarray]]:
    shapes = [(3, 4), (5,), (2, 2, 2)]
    return [[rng.normal(size=shape).astype(dtype) for shape in shapes] for _ in range(count)]


def _as_updates(layers: list[list[np.ndarray]]) -> list[dict[str, torch.Tensor]]:
    return [{f"layer{i}": torch.from_numpy(array.copy()) for i, array in enumerate(client)} for client in layers]


def _assert_matches(ours: dict[str, torch.Tensor], theirs: list[np.ndarray], rtol: float) -> None:
    for i, expected in enumerate(theirs):
        np.testing.assert_allclose(ours[f"layer{i}"].numpy(), expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("seed", range(8))
def test_median_and_trimmed_mean_match_flower(seed: int) -> None:
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 12))
    layers = _random_layers(rng, count, np.float32)
    weights = [int(w) for w in rng.integers(1, 100, size=count)]
    results = list(zip(layers, weights, strict=True))
    _assert_matches(coordinate_median(_as_updates(layers), weights), aggregate_median(results), rtol=1e-6)
    for beta in (0.0, 0.1, 0.2, 0.25, 0.3, 0.49):
        _assert_matches(trimmed_mean(_as_updates(layers), weights, beta), aggregate_trimmed_avg(results, beta),
                        rtol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_krum_matches_flower(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    count = int(rng.integers(3, 12))
    layers = _random_layers(rng, count, np.float64)
    for client in layers[: count // 3]:  # a few far-off clients so that the choice matters
        client[0] += 5.0
    weights = [int(w) for w in rng.integers(1, 100, size=count)]
    results = list(zip(layers, weights, strict=True))
    for byzantine in range((count - 3) // 2 + 1):
        # Flower's to_keep=0 is Krum (the single best update); to_keep=k averages the best k by example count
        _assert_matches(multi_krum(_as_updates(layers), weights, byzantine, keep=1).aggregate,
                        aggregate_krum(results, byzantine, 0), rtol=1e-12)
        for keep in range(1, count - byzantine + 1):
            _assert_matches(multi_krum(_as_updates(layers), weights, byzantine, keep).aggregate,
                            aggregate_krum(results, byzantine, keep), rtol=1e-12)


def test_fedavg_rule_is_fedavg_weighted_mean() -> None:
    updates, weights = random_updates(5, seed=1), [3.0, 1.0, 4.0, 1.0, 5.0]
    ours, theirs = aggregate("fedavg", updates, weights), weighted_mean(updates, weights)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


# --- Byzantine clients --------------------------------------------------------------------------------------------

SHAPES = {"a": (16, 8), "b": (32,)}


def _flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensor.reshape(-1).to(torch.float64) for tensor in update.values()])


def _cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.nn.functional.cosine_similarity(_flat(a), _flat(b), dim=0))


def _norm_ratio(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(_flat(a).norm() / _flat(b).norm())


class Population:
    """Ten honest clients around a common direction, and helpers to make two Byzantine ones."""

    def __init__(self, seed: int, ternary: bool) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.ternary = ternary
        self.direction = {name: torch.randn(shape, generator=self.g) for name, shape in SHAPES.items()}
        self.honest = [self.honest_like() for _ in range(10)]

    def honest_like(self) -> dict[str, torch.Tensor]:
        delta = {name: self.direction[name] + 0.3 * torch.randn(shape, generator=self.g)
                 for name, shape in SHAPES.items()}
        return compeft.decode(compeft.encode(delta, density=0.5, scope="tensor")) if self.ternary else delta

    def byzantine(self, attack: str) -> list[dict[str, torch.Tensor]]:
        if attack == "flip":
            return [{name: -tensor for name, tensor in self.honest_like().items()} for _ in range(2)]
        if attack == "scale":
            return [{name: 100 * tensor for name, tensor in self.honest_like().items()} for _ in range(2)]
        return [{name: 100 * torch.randn(shape, generator=self.g) for name, shape in SHAPES.items()}
                for _ in range(2)]


def _close(aggregate_: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> bool:
    """Same direction (cosine > 0.9) and about the same length (within 2x)."""
    return _cosine(aggregate_, reference) > 0.9 and 0.5 < _norm_ratio(aggregate_, reference) < 2


ROBUST_OPTIONS = {"median": {}, "trimmed-mean": {"beta": 0.2}, "krum": {"num_byzantine": 2},
                  "multi-krum": {"num_byzantine": 2, "keep": 8}, "norm-bound": {}, "sign-majority": {"quorum": 3}}


@pytest.mark.parametrize("attack", ["flip", "scale", "gaussian"])
@pytest.mark.parametrize("rule", list(ROBUST_OPTIONS))
def test_robust_rules_stay_near_the_honest_mean(rule: str, attack: str) -> None:
    population = Population(seed=0, ternary=False)
    updates, weights = population.honest + population.byzantine(attack), [1.0] * 12
    options = dict(ROBUST_OPTIONS[rule])
    if rule == "norm-bound":  # the median honest norm: what a server would estimate from past rounds
        options["bound"] = float(np.median([_flat(u).norm() for u in population.honest]))
    honest_mean = aggregate("fedavg", population.honest, [1.0] * 10)
    assert _close(aggregate(rule, updates, weights, **options), honest_mean)


def test_fedavg_is_not_robust_to_scaling() -> None:
    population = Population(seed=0, ternary=False)
    honest_mean = aggregate("fedavg", population.honest, [1.0] * 10)
    averaged = aggregate("fedavg", population.honest + population.byzantine("scale"), [1.0] * 12)
    assert not _close(averaged, honest_mean)
    assert _norm_ratio(averaged, honest_mean) > 10


@pytest.mark.parametrize("attack", ["scale", "gaussian"])
def test_multi_krum_drops_the_outliers(attack: str) -> None:
    population = Population(seed=0, ternary=False)
    selection = multi_krum(population.honest + population.byzantine(attack), [1.0] * 12, num_byzantine=2, keep=8)
    assert {10, 11} <= set(selection.dropped) and len(selection.selected) == 8
    assert selection.scores[10] > max(selection.scores[:10])


@pytest.mark.parametrize("attack", ["flip", "scale", "gaussian"])
def test_sign_majority_keeps_the_honest_signs_on_ternary_updates(attack: str) -> None:
    population = Population(seed=0, ternary=True)
    result = _flat(sign_majority(population.honest + population.byzantine(attack), [1.0] * 12))
    honest = torch.stack([_flat(update) for update in population.honest])
    honest_vote = torch.sign(honest).sum(dim=0)
    decided = honest_vote.abs() > 2  # the two attackers' weight cannot outvote these
    assert decided.float().mean() > 0.5
    assert torch.equal(torch.sign(result[decided]), torch.sign(honest_vote[decided]))
    # x100 scaling buys no magnitude: nothing exceeds the largest honest alpha
    assert result.abs().max() <= honest.abs().max() * (1 + 1e-6)
    # dense random voters also settle the coordinates the honest clients left open (|honest vote| <= 2)
    without_attackers = sign_majority(population.honest, [1.0] * 10)
    assert _cosine({"x": result}, {"x": _flat(without_attackers)}) > (0.75 if attack == "gaussian" else 0.9)


def test_sign_majority_rule_by_hand() -> None:
    rows = one_tensor([1.0, -1.0, 0.0, 1.0, 3.0], [2.0, 1.0, 0.0, -1.0, 3.0], [300.0, 1.0, 0.0, 0.0, 300.0])
    # col 0: all +, median of (1, 2, 300) = 2, all the weight agrees; col 1: + wins 2-1, median of (1, 1) = 1 times
    # the agreeing share 2/3; col 2: nobody votes; col 3: a tie; col 4: median of (3, 3, 300) = 3. Caps (median
    # peak per client: 3) do not bind here.
    torch.testing.assert_close(sign_majority(rows, [1, 1, 1])["w"], torch.tensor([2.0, 2 / 3, 0.0, 0.0, 3.0]))
    # weights: in col 1 the negative voter (weight 5) outvotes the two positive ones, but alone it is below the
    # quorum of two agreeing clients, so nothing is set there
    assert sign_majority(rows, [5, 1, 1])["w"].tolist()[:2] == [2.0, 0.0]
    torch.testing.assert_close(sign_majority(rows, [5, 1, 1], quorum=1)["w"][:2], torch.tensor([2.0, -5 / 7]))
    # weight-0 clients abstain entirely: no vote and no magnitude (col 0 becomes the median of 1 and 2)
    assert sign_majority(rows, [5, 1, 0])["w"].tolist()[:4] == [1.5, 0.0, 0.0, 0.0]


def test_sign_majority_caps_a_lone_scaled_voter() -> None:
    # where only the x100 client voted, it sets nothing (quorum); allowed alone, it gets the median alpha (1),
    # not its own 100, times its share of the weight
    rows = one_tensor([1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 100.0])
    assert sign_majority(rows, [1, 1, 1, 1])["w"].tolist() == [0.5, 0.0]
    assert sign_majority(rows, [1, 1, 1, 1], quorum=1)["w"].tolist() == [0.5, 0.25]


# --- norm bounding ------------------------------------------------------------------------------------------------

def test_norm_bounded_clips_whole_updates() -> None:
    long = {"x": torch.tensor([3.0]), "y": torch.tensor([0.0, 4.0])}  # norm 5 over both tensors
    short = {"x": torch.tensor([0.6]), "y": torch.tensor([0.0, 0.8])}  # norm 1
    clipped, norms = norm_bounded([long, short], bound=2.0)
    assert norms == pytest.approx([5.0, 1.0], rel=1e-6)
    assert torch.allclose(clipped[0]["x"], torch.tensor([1.2])) and torch.allclose(clipped[0]["y"],
                                                                                    torch.tensor([0.0, 1.6]))
    assert clipped[1]["x"] is short["x"] and long["x"].item() == 3.0  # short ones pass, inputs untouched
    averaged = aggregate("norm-bound", [long, short], [1, 3], bound=2.0)
    assert torch.allclose(averaged["y"], torch.tensor([0.0, (1.6 + 3 * 0.8) / 4]))


def test_norm_bound_none_clips_to_the_median_norm() -> None:
    updates = one_tensor([1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 400.0])  # norms 1, 2, 3, 400: median 2.5
    clipped, norms = norm_bounded(updates, None)
    assert norms == [1.0, 2.0, 3.0, 400.0]
    assert [c["w"].tolist() for c in clipped] == [[1.0, 0.0], [0.0, 2.0], [2.5, 0.0], [0.0, 2.5]]
    averaged = aggregate("norm-bound", updates, [1, 1, 1, 1], bound=None)["w"]
    assert averaged.tolist() == [3.5 / 4, 4.5 / 4]


# --- dtypes, devices, chunks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_rules_return_the_input_dtype(rule: str, dtype: torch.dtype) -> None:
    updates = random_updates(5, seed=3, dtype=dtype)
    reference = aggregate(rule, [{k: v.float() for k, v in u.items()} for u in updates], [1, 2, 3, 4, 5],
                          **RULE_OPTIONS[rule])
    result = aggregate(rule, updates, [1, 2, 3, 4, 5], **RULE_OPTIONS[rule])
    for name, tensor in result.items():
        assert tensor.dtype == dtype and tensor.shape == updates[0][name].shape
        torch.testing.assert_close(tensor.float(), reference[name], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_chunking_does_not_change_results(rule: str, monkeypatch: pytest.MonkeyPatch) -> None:
    updates = random_updates(5, seed=4)
    whole = aggregate(rule, updates, [1, 2, 3, 4, 5], **RULE_OPTIONS[rule])
    monkeypatch.setattr(robust, "CHUNK_BUDGET", 12)  # two coordinates per chunk for five clients
    chunked = aggregate(rule, updates, [1, 2, 3, 4, 5], **RULE_OPTIONS[rule])
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], atol=1e-6, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_rules_run_on_the_tensors_device(rule: str) -> None:
    updates = random_updates(5, seed=5)
    on_device = [{k: v.cuda() for k, v in u.items()} for u in updates]
    result = aggregate(rule, on_device, [1, 2, 3, 4, 5], **RULE_OPTIONS[rule])
    reference = aggregate(rule, updates, [1, 2, 3, 4, 5], **RULE_OPTIONS[rule])
    for name, tensor in result.items():
        assert tensor.is_cuda
        torch.testing.assert_close(tensor.cpu(), reference[name], atol=1e-5, rtol=1e-5)


# --- refused inputs -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.5, -0.1, 0.7, math.nan, True, "0.2"])
def test_bad_beta_is_refused(beta: object) -> None:
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\)"):
        trimmed_mean(random_updates(4, seed=0), [1] * 4, beta)  # type: ignore[arg-type]


@pytest.mark.parametrize(("count", "byzantine"), [(4, 1), (3, 1), (6, 2), (2, 0)])
def test_krum_needs_more_than_2f_plus_2(count: int, byzantine: int) -> None:
    with pytest.raises(ValueError, match=rf"n > 2f \+ 2 updates, got n={count} with f={byzantine}"):
        multi_krum(random_updates(count, seed=0), [1] * count, byzantine)


@pytest.mark.parametrize("keep", [0, 5, True, 1.0])
def test_krum_keep_out_of_range_is_refused(keep: object) -> None:
    with pytest.raises(ValueError, match=r"keep must be an integer in \[1, n - f\] = \[1, 4\]"):
        multi_krum(random_updates(5, seed=0), [1] * 5, 1, keep)  # type: ignore[arg-type]


def test_krum_refuses_an_all_zero_weight_choice() -> None:
    with pytest.raises(ValueError, match="all have weight 0"):
        multi_krum(one_tensor([0.0], [0.1], [5.0]), [0, 0, 1], 0, keep=1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_non_finite_entries_are_refused(rule: str, bad: float) -> None:
    updates = random_updates(5, seed=0)
    updates[3]["b"][2] = bad
    with pytest.raises(ValueError, match=r"client 3: tensor 'b' has NaN or Inf entries"):
        aggregate(rule, updates, [1] * 5, **RULE_OPTIONS[rule])
    with pytest.raises(ValueError, match=r"client 3: tensor 'b' has NaN or Inf"):
        norm_bounded(updates, 1.0)


@pytest.mark.parametrize("rule", AGGREGATION_RULES)
def test_mismatched_updates_are_refused(rule: str) -> None:
    options = RULE_OPTIONS[rule]
    renamed = random_updates(5, seed=0)
    renamed[2]["c"] = renamed[2].pop("b")
    with pytest.raises(ValueError, match=r"client 2: tensor names differ .*missing \['b'\], extra \['c'\]"):
        aggregate(rule, renamed, [1] * 5, **options)
    reshaped = random_updates(5, seed=0)
    reshaped[4]["a"] = reshaped[4]["a"].reshape(4, 3)
    with pytest.raises(ValueError, match=r"client 4: tensor 'a' has shape \(4, 3\), expected \(3, 4\)"):
        aggregate(rule, reshaped, [1] * 5, **options)
    integer = random_updates(5, seed=0)
    integer[1]["b"] = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"client 1: tensor 'b' has non-float dtype"):
        aggregate(rule, integer, [1] * 5, **options)
    with pytest.raises(ValueError, match="5 updates but 4 weights"):
        aggregate(rule, random_updates(5, seed=0), [1] * 4, **options)
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        aggregate(rule, random_updates(5, seed=0), [1, 1, -1, 1, 1], **options)
    with pytest.raises(ValueError, match="no updates"):
        aggregate(rule, [], [], **options)


def test_unknown_rule_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown aggregation rule 'bulyan'; known rules: fedavg, median, "
                                         "trimmed-mean, krum, multi-krum, norm-bound, sign-majority"):
        aggregate("bulyan", random_updates(3, seed=0), [1] * 3)
    with pytest.raises(ValueError, match=r"'median' takes the options \(none\); unknown: \['beta'\]"):
        aggregate("median", random_updates(3, seed=0), [1] * 3, beta=0.1)
    with pytest.raises(ValueError, match=r"missing: \['keep'\]"):
        aggregate("multi-krum", random_updates(5, seed=0), [1] * 5, num_byzantine=1)
    for bound in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="bound must be a positive finite number or None"):
            aggregate("norm-bound", random_updates(3, seed=0), [1] * 3, bound=bound)
        with pytest.raises(ValueError, match="bound must be a positive finite number or None"):
            norm_bounded(random_updates(3, seed=0), bound)

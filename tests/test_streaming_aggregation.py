"""Streaming aggregation: the coordinator folds each update in as its reply arrives, exactly and in any order, and
keeps O(model) memory for FedAvg; rules that need the whole stack hold it, and say how much."""

from __future__ import annotations

import math
import random
import time

import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from server.aggregation import RoundAggregator, aggregate
from server.federation import collect_replies
from server.replies import ReplyStream
from server.run_config import AggregationSettings
from strategies import messages, robust
from strategies.codecs import dense, ferret
from strategies.codecs.ferret import FERRET
from strategies.codecs.registry import decode_update
from strategies.downlink import digest_prefix
from strategies.exact_sum import LARGEST, ExactSum
from strategies.fedavg import RunningMean, weighted_mean

ROUND = 3
DIGEST = "cd" * 32


def _wild_terms(count: int, size: int, seed: int, smallest: int = -30) -> list[torch.Tensor]:
    """fp32 terms whose magnitudes span 10**smallest to 1e12, with cancellations, so fp64 sums depend on the order.
    (Terms below about 1e-20 lose their bits under 2**-90, the grid's resolution; the order still does not matter.)"""
    gen = torch.Generator().manual_seed(seed)
    terms = []
    for _ in range(count):
        exponents = torch.randint(smallest, 13, (size,), generator=gen).float()
        terms.append((torch.randn(size, generator=gen) * 10.0 ** exponents).float())
    return terms


def test_an_exact_sum_is_the_same_bits_in_every_order_where_plain_fp64_is_not() -> None:
    terms = _wild_terms(12, 4000, seed=0)
    orders = [list(range(12)), list(reversed(range(12)))] + [random.Random(s).sample(range(12), 12) for s in range(4)]
    exact, plain = [], []
    for order in orders:
        acc = ExactSum((4000,))
        fp64 = torch.zeros(4000, dtype=torch.float64)
        for i in order:
            acc.add(terms[i], scale=37.0)
            fp64 += terms[i].double() * 37.0
        exact.append(acc.value())
        plain.append(fp64)
    assert all(torch.equal(exact[0], other) for other in exact[1:])
    assert not all(torch.equal(plain[0], other) for other in plain[1:])  # the problem this solves is real here


def test_an_exact_sum_agrees_with_a_correctly_rounded_sum() -> None:
    rng = random.Random(5)
    for _ in range(300):
        values = [rng.uniform(-1, 1) * 10.0 ** rng.randint(-20, 15) for _ in range(rng.randint(1, 9))]
        acc = ExactSum((1,))
        for v in values:
            acc.add(torch.tensor([v], dtype=torch.float64))
        truth = math.fsum(values)
        assert abs(float(acc.value()[0]) - truth) <= abs(truth) * 2.0 ** -51 + 2.0 ** -80


def test_an_exact_sum_refuses_what_it_cannot_hold() -> None:
    acc = ExactSum((2,))
    for bad in (torch.tensor([1.0, math.nan]), torch.tensor([math.inf, 0.0]), torch.tensor([LARGEST, 0.0],
                                                                                        dtype=torch.float64)):
        with pytest.raises(ValueError, match="cannot be summed"):
            acc.add(bad)
    with pytest.raises(ValueError, match="shape"):
        acc.add(torch.zeros(3))
    assert acc.terms == 0 and torch.equal(acc.value(), torch.zeros(2, dtype=torch.float64))


def test_the_running_mean_is_fedavg_and_a_bad_update_leaves_it_unchanged() -> None:
    updates = [{"a": t[:3000].reshape(30, 100), "b": t[3000:]} for t in _wild_terms(5, 3100, seed=1, smallest=-19)]
    weights = [3.0, 64.0, 1.0, 17.0, 5.0]
    mean = RunningMean()
    for update, weight in zip(updates, weights, strict=True):
        mean.add(update, weight)
    before = mean.result()
    for name in before:  # each entry is the correctly rounded mean (fsum), in fp32
        columns = zip(*(u[name].flatten().tolist() for u in updates), strict=True)
        truth = torch.tensor([math.fsum(x * w for x, w in zip(c, weights, strict=True)) / sum(weights)
                              for c in columns]).reshape(before[name].shape)
        assert before[name].dtype == torch.float32 and torch.equal(before[name], truth.float())
    shuffled = list(zip(updates, weights, strict=True))
    random.Random(2).shuffle(shuffled)
    assert all(torch.equal(before[n], weighted_mean([u for u, _ in shuffled], [w for _, w in shuffled])[n])
               for n in before)
    bad = {"a": updates[0]["a"].clone(), "b": updates[0]["b"].clone()}
    bad["b"][7] = math.nan
    for poison, message in ((bad, "cannot be summed"), ({"a": updates[0]["a"]}, "different tensors"),
                            ({"a": updates[0]["a"], "b": torch.zeros(3)}, "shape")):
        with pytest.raises(ValueError, match=message):
            mean.add(poison, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        mean.add(updates[0], -1.0)
    assert len(mean) == 5 and all(torch.equal(before[n], mean.result()[n]) for n in before)


def test_fedavg_holds_one_running_sum_however_many_clients_and_median_holds_the_stack() -> None:
    update = {"w": torch.randn(10_000)}
    streaming = RoundAggregator(AggregationSettings(rule="fedavg"), ROUND)
    streaming.add((False, 0, 1), update, 1.0)
    after_one = streaming.mean.nbytes()
    for i in range(40):
        streaming.add((False, i + 1, i + 2), {"w": torch.randn(10_000)}, 2.0)
    assert streaming.mean.nbytes() == after_one and streaming.peak_held_bytes == 0 and len(streaming) == 41
    stacked = RoundAggregator(AggregationSettings(rule="median"), ROUND)
    for i in range(8):
        stacked.add((False, i, i), {"w": torch.randn(10_000)}, 1.0)
    assert stacked.peak_held_bytes == 8 * 10_000 * 4
    assert stacked.result()["w"].shape == (10_000,)


def test_a_fixed_norm_bound_streams_and_equals_the_batch_rule() -> None:
    updates = [{"w": torch.randn(500) * scale} for scale in (0.1, 5.0, 1.0, 30.0)]
    weights = [1.0, 2.0, 3.0, 4.0]
    settings = AggregationSettings(rule="norm-bound", norm_bound=4.0)
    streaming = RoundAggregator(settings, ROUND)
    for i in (3, 1, 0, 2):
        streaming.add((False, i, i), updates[i], weights[i])
    assert not streaming.held
    batch = robust.aggregate("norm-bound", updates, weights, bound=4.0)
    assert torch.equal(streaming.result()["w"], batch["w"])


def test_ferret_payloads_are_held_and_combined_in_partition_order() -> None:
    layout = {"w": torch.zeros(300)}
    seed = 11
    payloads = [ferret.encode({"w": torch.randn(300)}, seed=seed, dim=16, block_size=100, round_id=ROUND)
                for _ in range(3)]
    results = []
    for order in ((0, 1, 2), (2, 0, 1)):
        agg = RoundAggregator(AggregationSettings(rule="fedavg"), ROUND, FERRET)
        for i in order:
            agg.add((False, i, 100 + i), payloads[i], float(i + 1))
        results.append(agg.result())
    assert isinstance(results[0], bytes) and results[0] == results[1]
    assert results[0] == aggregate(AggregationSettings(), payloads, [1.0, 2.0, 3.0], round_id=ROUND,
                                    codec=FERRET)
    assert ferret.decode(results[0], like=layout)["w"].shape == (300,)


def _reply(node: int, payload: bytes, partition: int, examples: float) -> Message:
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
    metrics = {"num-examples": examples, "train-loss": 0.5, "partition-id": partition,
               "state-digest-48": digest_prefix(DIGEST)}
    return Message(RecordDict({messages.UPDATE: ConfigRecord({messages.ENCODED_UPDATE: payload}),
                               messages.METRICS: MetricRecord(metrics)}), reply_to=instruction)


def test_collected_replies_aggregate_to_the_same_bits_in_any_arrival_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):  # what a SuperLink sets for a ServerApp process
        monkeypatch.setattr(TaskIdentity, name, 1)
    layout = {"w": (64, 33)}
    terms = _wild_terms(6, 64 * 33, seed=4)
    payloads = [dense.encode({"w": t.reshape(64, 33)}, round_id=ROUND) for t in terms]

    def accept(payload: bytes) -> dict[str, torch.Tensor]:
        return decode_update("dense", payload, expected_round=ROUND, expected_layout=layout)

    means = []
    for seed in range(3):
        order = random.Random(seed).sample(range(6), 6)
        agg = RoundAggregator(AggregationSettings(), ROUND)
        outcome = collect_replies((_reply(10 + i, payloads[i], i, 8.0 + i) for i in order),
                                  {10 + i: 0 for i in range(6)}, accept, DIGEST, sink=agg)
        assert outcome.accepted == [10 + i for i in range(6)] and not outcome.updates
        means.append(agg.result()["w"])
    assert all(torch.equal(means[0], m) for m in means[1:])


class _ScriptedGrid:
    """A Grid whose clients reply at set times after the push (the polling under test is ours, not Flower's)."""

    def __init__(self, delays: dict[int, float]) -> None:
        self.delays = delays
        self.pushed_at = 0.0
        self.sent: dict[str, Message] = {}

    def push_messages(self, out: list[Message]) -> list[str]:
        self.pushed_at = time.monotonic()
        for m in out:
            m.metadata.__dict__["_message_id"] = str(m.metadata.dst_node_id)  # as a Grid does, with a uuid
        self.sent = {m.metadata.message_id: m for m in out}
        return list(self.sent)

    def pull_messages(self, ids: list[str]) -> list[Message]:
        now = time.monotonic() - self.pushed_at
        ready = [i for i in ids if self.delays[int(i)] <= now]
        return [Message(RecordDict(), reply_to=self.sent[i]) for i in ready]


def test_replies_are_handed_on_as_they_arrive_and_the_timeout_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    grid = _ScriptedGrid({1: 0.0, 2: 0.3, 3: 5.0})
    out = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2, 3)]
    started = time.monotonic()
    seen = []
    for reply in ReplyStream(grid, out, timeout=1.0):  # type: ignore[arg-type]
        seen.append((reply.metadata.src_node_id, time.monotonic() - started))
    assert [node for node, _ in seen] == [1, 2]
    assert seen[0][1] < 0.2 and seen[1][1] < 0.8  # node 1's reply came before node 2 had answered
    assert 0.9 < time.monotonic() - started < 1.6  # node 3 never answered within the timeout


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_compeft_folds_from_its_sparse_form_to_the_same_bits_as_decode_then_fold(scope: str) -> None:
    """The coordinator folds ComPEFT payloads straight from kept positions x alpha x sign; the running sum (and
    every rule that needs whole tensors) gives exactly what decoding to dense tensors first gave."""
    from strategies.codecs import compeft
    from strategies.codecs.compeft import COMPEFT
    from strategies.codecs.sparse import SparseTensor

    layout = {"a.lora_A": (8, 300), "a.lora_B": (300, 8), "b.bias": (7,), "c.one": (1,)}
    gen = torch.Generator().manual_seed(4)
    payloads = []
    for client in range(6):
        dtype = torch.bfloat16 if client % 3 == 2 else torch.float32  # bf16 alphas round on the way
        update = {n: (torch.randn(s, generator=gen) * 10.0 ** (client - 3)).to(dtype) for n, s in layout.items()}
        payloads.append(compeft.encode(update, density=0.07, alpha_scale=2.5, scope=scope, round_id=ROUND))
    weights = [33.0, 0.0, 7.0, 1e6, 5.0, 12.0]
    sparse_mean, dense_mean = RunningMean(), RunningMean()
    for payload, weight in zip(payloads, weights, strict=True):
        sparse = COMPEFT.accept(payload, round_id=ROUND, layout=layout, max_bytes=1 << 20, seed=None)
        dense_update = COMPEFT.decode(payload, expected_round=ROUND, expected_layout=layout)
        assert all(isinstance(t, SparseTensor) for t in sparse.values())
        assert all(torch.equal(sparse[n].to_dense(), dense_update[n]) for n in layout)
        assert COMPEFT.nbytes(sparse) < sum(t.numel() * 4 for t in dense_update.values()) / 2
        assert COMPEFT.norm(sparse) == pytest.approx(math.sqrt(sum(float((t.double() ** 2).sum())
                                                                   for t in dense_update.values())), rel=1e-12)
        sparse_mean.add(sparse, weight)
        dense_mean.add(dense_update, weight)
    folded, decoded = sparse_mean.result(), dense_mean.result()
    assert all(torch.equal(folded[n], decoded[n]) for n in layout)
    # Rules that need the stack densify the held sparse contributions first: the same aggregate as dense ones.
    held = RoundAggregator(AggregationSettings(rule="median"), ROUND, COMPEFT)
    for i, payload in enumerate(payloads):
        held.add(i, COMPEFT.accept(payload, round_id=ROUND, layout=layout, max_bytes=1 << 20, seed=None), 1.0)
    stacked = robust.aggregate("median", [COMPEFT.decode(p, expected_round=ROUND, expected_layout=layout)
                                          for p in payloads], [1.0] * len(payloads))
    assert all(torch.equal(held.result().delta[n], stacked[n]) for n in layout)


def test_a_sparse_term_is_checked_before_anything_is_added() -> None:
    acc = ExactSum((10,))
    acc.add_sparse(torch.tensor([1, 4]), torch.tensor([0.5, -2.0]), scale=3.0)
    before = acc.value().clone()
    for positions, values, match in ((torch.tensor([1, 10]), torch.tensor([1.0, 1.0]), "outside"),
                                     (torch.tensor([-1]), torch.tensor([1.0]), "outside"),
                                     (torch.tensor([1, 2]), torch.tensor([1.0]), "positions for"),
                                     (torch.tensor([3]), torch.tensor([float("nan")]), "cannot be summed")):
        with pytest.raises(ValueError, match=match):
            acc.add_sparse(positions, values)
    assert torch.equal(acc.value(), before) and acc.terms == 1
    assert acc.value().tolist() == [0, 1.5, 0, 0, -6.0, 0, 0, 0, 0, 0]


def test_a_sparse_update_with_one_bad_tensor_leaves_the_running_mean_unchanged() -> None:
    from strategies.codecs.sparse import SparseTensor

    good = {"a": SparseTensor((6,), torch.tensor([0, 5]), torch.tensor([1.0, -1.0])),
            "b": SparseTensor((4,), torch.tensor([2]), torch.tensor([0.5]))}
    mean = RunningMean()
    mean.add(good, 2.0)
    before = {n: t.clone() for n, t in mean.result().items()}
    bad = {"a": good["a"], "b": SparseTensor((4,), torch.tensor([4]), torch.tensor([0.5]))}
    with pytest.raises(ValueError, match="b: a position lies outside the 4 entries"):
        mean.add(bad, 1.0)
    assert len(mean) == 1 and all(torch.equal(mean.result()[n], before[n]) for n in before)
    assert mean.result()["a"].tolist() == [1.0, 0, 0, 0, 0, -1.0]

"""Secure aggregation cost: fedsqueeze's SecAgg+ against Flower's own SecAggPlusWorkflow, side by side.

Prints JSON. For each number of clients n and update size d, one round of each protocol runs in this process on
the same fp32 updates, sequentially, on one thread:
- ours: quantise (clip, stochastic rounding, ring of 2^b), the four SecAgg+ stages, unmask and dequantise
  (honest-but-curious server: unsigned keys);
- ours against a malicious server: the same with node identities (P-384 SuperNode keys): signed keys checked
  against the pinned list, the session (every party's advertisement digest, checked against the keys each party
  saw) that binds the later signatures to this execution, signed mask peers naming the signer's keys, the
  confirmation stage (every survivor signs the survivor/dropped story under the session id and checks a strict
  majority's signatures), share digests checked on every revealed share;
- Flower's: ``SecAggPlusWorkflow`` (its legacy API: ``DefaultWorkflow`` + ``LegacyContext`` + ``NumPyClient`` with
  ``secaggplus_mod``), driven by an in-process Grid that hands each message straight to the ClientApp, with the
  same number of shares and the same threshold.
Client seconds are the mean time one client spends per round; server seconds the rest of the round (ours: the
median of --repeats rounds; Flower's: one round, its cost). Bytes per client are what one client uploads in the
round (all stages), and the masked input alone, against an fp32 update (4d bytes) and Flower's int64 words (8d);
ours also count what one client receives (setup, key lists, forwarded shares, requests). Usage:
python benchmarks/secagg.py [--clients 10 50 100] [--sizes 10000 1000000] [--repeats 3] [--flower-max-work 1e8]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import copy
import json
import logging
import platform
import time
from collections.abc import Iterable
from itertools import count

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric import ec

from strategies.codecs.registry import CodecSettings
from strategies.secagg import common, graph
from strategies.secagg.aggregator import Aggregator
from strategies.secagg.identity import SigningIdentity, TrustedIdentities
from strategies.secagg.party import Party
from strategies.secagg.ring import Quantizer
from strategies.secagg.updates import SecureEncoding, encode_input, mean_update

CLIP = 0.05          # fedsqueeze's range for these updates (entries ~ N(0, 0.006^2), like a LoRA delta)
PRECISION_BITS = 16


def make_updates(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """n LoRA-like fp32 updates of ``size`` entries."""
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(size) * 0.006).astype(np.float32) for _ in range(n)]


def node_identities(n: int) -> tuple[list[SigningIdentity], TrustedIdentities]:
    """n node keys of the kind SuperNodes authenticate with (P-384) and the federation's pinned list of them."""
    identities = [SigningIdentity(ec.generate_private_key(ec.SECP384R1())) for _ in range(n)]
    return identities, TrustedIdentities({identity.public_der: f"node-{i}" for i, identity in enumerate(identities)})


def run_ours(updates: list[np.ndarray], malicious: bool = False) -> dict[str, float]:
    """One fedsqueeze SecAgg+ round (``malicious``: with node identities and the confirmation stage); returns
    timings, bytes and the error of the mean."""
    n, size = len(updates), updates[0].size
    layout = {"update": (size,)}
    encoding = SecureEncoding(settings=CodecSettings(), quantizer=Quantizer(CLIP, PRECISION_BITS), parties=n,
                              layout=layout)
    parties = list(range(1, n + 1))
    k = graph.default_neighbours(n)
    setup = common.make_setup(1, parties, encoding.segments(), neighbours=k, run=1)  # signed setups name a run
    client_s = {p: 0.0 for p in parties}
    up = {p: 0 for p in parties}
    down = {p: len(setup) for p in parties}
    server_s = 0.0
    rng = np.random.default_rng(1)

    def on_client(party: int, call, *args):
        started = time.perf_counter()
        result = call(*args)
        client_s[party] += time.perf_counter() - started
        return result

    identities, trusted = node_identities(n) if malicious else ([None] * n, None)
    signer = dict(zip(parties, identities, strict=True))
    states: dict[int, Party] = {}
    for p, update in zip(parties, updates, strict=True):
        words = on_client(p, lambda u: encode_input(encoding, {"update": torch.from_numpy(u)}, rng).words, update)
        states[p] = on_client(p, Party.start, setup, p, words)
    started = time.perf_counter()
    aggregator = Aggregator(setup)
    server_s += time.perf_counter() - started
    replies = {p: on_client(p, states[p].advertise_keys, signer[p]) for p in parties}
    masked_bytes = 0
    stages = [("collect_keys", "share_keys"), ("route_shares", "masked_input"), ("collect_masked", "unmask"),
              ("finish", None)]
    if malicious:
        stages[2:3] = [("collect_masked", "confirm"), ("collect_confirmations", "unmask")]
    for method, call in stages:
        for p, data in replies.items():
            up[p] += len(data)
        started = time.perf_counter()
        out = getattr(aggregator, method)(replies)
        server_s += time.perf_counter() - started
        if call is None:
            break
        extra = {p: signer[p] if call in ("masked_input", "confirm") else trusted for p in parties}
        for p, request in out.items():
            down[p] += len(request)
        replies = {p: on_client(p, getattr(states[p], call), request, extra[p]) for p, request in out.items()}
        if call == "masked_input":
            masked_bytes = max(len(data) for data in replies.values())
    started = time.perf_counter()
    mean = mean_update(encoding, out, len(aggregator.survivors))["update"].numpy()
    server_s += time.perf_counter() - started
    error = float(np.abs(mean - np.mean(updates, axis=0)).max())
    return {"client_s": float(np.mean(list(client_s.values()))), "server_s": server_s,
            "bytes_up_per_client": float(np.mean(list(up.values()))),
            "bytes_down_per_client": float(np.mean(list(down.values()))), "masked_input_bytes": masked_bytes,
            "ring_bits": encoding.segments()[0][1], "neighbours": k, "threshold": graph.default_threshold(k),
            "max_abs_error_of_mean": error}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over repeated runs."""
    return {key: type(value)(np.median([run[key] for run in runs])) for key, value in runs[0].items()}


def _nbytes(content) -> int:
    """Bytes a RecordDict carries: array payloads, bytes and strings in full, numbers at 8 bytes."""
    total = 0
    for record in content.values():
        if hasattr(record, "items") and type(record).__name__ == "ArrayRecord":
            total += sum(len(array.data) for array in record.values())
            continue
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            total += sum(len(v) if isinstance(v, bytes | str) else 8 for v in items)
    return total


def run_flower(updates: list[np.ndarray], neighbours: int, threshold: int) -> dict[str, float]:
    """One round of Flower's SecAggPlusWorkflow on the same updates; timings and bytes."""
    from flwr.app import Context, Message, RecordDict
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import Grid
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a SuperLink would set

    n = len(updates)
    node_ids = list(range(1, n + 1))
    by_node = dict(zip(node_ids, updates, strict=True))

    class UpdateClient(NumPyClient):
        def __init__(self, update: np.ndarray) -> None:
            self.update = update

        def fit(self, parameters, config):
            return [self.update], 1, {}

    def client_fn(context: Context) -> object:
        return UpdateClient(by_node[context.node_id]).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    contexts = {nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
                for nid in node_ids}
    client_s = dict.fromkeys(node_ids, 0.0)
    up = dict.fromkeys(node_ids, 0)
    masked = {"bytes": 0}
    transport = {"s": 0.0}  # copying messages and counting bytes: what a wire would do, not Flower's protocol
    fit = {"s": 0.0}

    class InProcessGrid(Grid):
        """Delivers each message to the node's ClientApp in this process and returns the replies."""

        ids = count(1)

        def set_run(self, run) -> None:
            pass

        @property
        def run(self):
            return Run.create_empty(run_id=1)

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return node_ids

        def push_messages(self, messages):
            raise NotImplementedError

        def pull_messages(self, message_ids):
            raise NotImplementedError

        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            for shared in messages:
                started = time.perf_counter()
                message = copy.deepcopy(shared)  # each node gets its own copy, as over the wire
                transport["s"] += time.perf_counter() - started
                message.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
                node = message.metadata.dst_node_id
                started = time.perf_counter()
                reply = client_app(message, contexts[node])
                client_s[node] += time.perf_counter() - started
                reply.metadata.__dict__["_src_node_id"] = node
                started = time.perf_counter()
                size = _nbytes(reply.content)
                transport["s"] += time.perf_counter() - started
                up[node] += size
                if "masked" in json.dumps(list(reply.content.keys())) or size > masked["bytes"]:
                    masked["bytes"] = max(masked["bytes"], size)
                replies.append(reply)
            return replies

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
                      initial_parameters=ndarrays_to_parameters([np.zeros_like(updates[0])]))
    context = LegacyContext(context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy)
    secagg_plus = SecAggPlusWorkflow(num_shares=neighbours + 1, reconstruction_threshold=threshold)

    def timed_fit(grid: Grid, ctx: LegacyContext) -> None:
        started = time.perf_counter()
        secagg_plus(grid, ctx)
        fit["s"] += time.perf_counter() - started

    DefaultWorkflow(fit_workflow=timed_fit)(InProcessGrid(), context)
    total_client = sum(client_s.values())
    return {"client_s": total_client / n, "server_s": fit["s"] - total_client - transport["s"],
            "bytes_up_per_client": float(np.mean(list(up.values()))), "masked_input_bytes": masked["bytes"]}


def main() -> None:
    """Measure every n and size and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of ours per point (medians reported)")
    parser.add_argument("--flower-max-work", type=float, default=1e8,
                        help="skip Flower's workflow where clients x size exceeds this (memory and time)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    results = []
    for size in args.sizes:
        for n in args.clients:
            updates = make_updates(n, size)
            ours = median_of([run_ours(updates) for _ in range(args.repeats)])
            malicious = median_of([run_ours(updates, malicious=True) for _ in range(args.repeats)])
            row = {"clients": n, "entries": size, "fp32_bytes": 4 * size, "flower_int64_bytes": 8 * size,
                   "ours": ours, "ours_malicious": malicious,
                   "malicious_over_honest": {key: malicious[key] / ours[key] for key in
                                             ("client_s", "server_s", "bytes_up_per_client",
                                              "bytes_down_per_client")},
                   "ours_masked_vs_fp32": ours["masked_input_bytes"] / (4 * size),
                   "ours_masked_vs_flower_int64": ours["masked_input_bytes"] / (8 * size)}
            if n * size <= args.flower_max_work:
                flower = run_flower(updates, ours["neighbours"], ours["threshold"])
                row["flower"] = flower
                row["client_s_ours_over_flower"] = ours["client_s"] / flower["client_s"]
                row["server_s_ours_over_flower"] = ours["server_s"] / flower["server_s"]
                row["bytes_up_ours_over_flower"] = ours["bytes_up_per_client"] / flower["bytes_up_per_client"]
                row["client_s_malicious_over_flower"] = malicious["client_s"] / flower["client_s"]
                row["server_s_malicious_over_flower"] = malicious["server_s"] / flower["server_s"]
            else:
                row["flower"] = f"skipped: {n} x {size} entries exceeds --flower-max-work {args.flower_max_work:g}"
            results.append(row)
            print(json.dumps(row), flush=True, file=__import__("sys").stderr)
    print(json.dumps({"benchmark": "secagg", "machine": {"cpu": platform.processor() or platform.machine(),
                                                         "threads": 1},
                      "clip": CLIP, "precision_bits": PRECISION_BITS, "results": results}, indent=2))


if __name__ == "__main__":
    main()

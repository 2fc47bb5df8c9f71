"""What users run today, for comparison: Flower's built-in ``FedAvg`` strategy shipping fp32 adapter weights in
``ArrayRecord``s, the shape of Flower's FlowerTune LLM template, written here from Flower's public API.

The clients train exactly as fedsqueeze's do (the same task code, partitions and per-round seeds), so only the
federation differs: every client downloads and uploads the whole fp32 adapter each round, the server averages
with Flower's own FedAvg, and nothing is compressed, validated beyond Flower's checks, or kept warm. The server
evaluates the global adapter with fedsqueeze's held-out evaluation after every round and writes ``metrics.jsonl``
(round, train-phase seconds, evaluation seconds, the task's metrics, fp32 bytes up and down per client) and
``summary.json`` under the run config's ``out-dir``, and the final global adapter (fp32 safetensors) as
``global_state.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import save_file

from client.task.build import Task, build_task, load_splits
from client.task.kinds.registry import check_spec
from client.task.loop import client_training_seed, train_locally
from client.task.partition import client_partition
from client.task.quiet import quiet_libraries
from client.task.spec import TaskSpec
from server.app import model_hooks
from server.run_config import RunConfig, resolve
from simulations.config_args import parse_run_config

log = logging.getLogger("fedsqueeze.baseline")
server_app = ServerApp()
client_app = ClientApp()
_TASKS: dict[tuple, tuple[Task, object]] = {}  # per process: in simulation Ray actors live across rounds


def _array_bytes(arrays: ArrayRecord) -> int:
    """fp32 bytes of an ArrayRecord's tensors (what travels, less Flower's framing)."""
    return sum(math.prod(array.shape) * 4 for array in arrays.values())


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the received fp32 adapter, train on this node's partition, return the whole adapter."""
    quiet_libraries()
    threads = int(os.environ.get("FEDSQUEEZE_CLIENT_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    config = dict(msg.content["config"])
    spec = check_spec(TaskSpec.from_record({k: v for k, v in config.items() if k in TaskSpec.__dataclass_fields__}))
    partition_id, partitions = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    key = (spec, partition_id, partitions)
    if key not in _TASKS:
        _TASKS.clear()
        data, _ = load_splits(spec)
        partition = client_partition(data.dataset, partition_id, partitions, kind=spec.partitioner,
                                     alpha=spec.dirichlet_alpha, seed=spec.seed, by=data.partition_by)
        _TASKS[key] = (build_task(spec, data), partition)
    task, partition = _TASKS[key]
    task.load_trainable_state(msg.content["arrays"].to_torch_state_dict())
    result = train_locally(task, partition, steps=spec.local_steps, batch_size=spec.batch_size, lr=spec.lr,
                           seed=client_training_seed(spec.seed, int(config["server-round"]), partition_id))
    arrays = ArrayRecord(torch_state_dict={n: t.detach().float().contiguous() for n, t in
                                           task.trainable_state().items()})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({
        "num-examples": result.num_examples, "train-loss": result.train_loss})}), reply_to=msg)


class _RoundClock:
    """Round and evaluation times as Flower's FedAvg calls ``evaluate_fn`` (before round 1, then after each)."""

    def __init__(self, evaluate, out_dir: Path, clients: int, update_bytes: int) -> None:
        self.evaluate, self.out_dir, self.clients, self.update_bytes = evaluate, out_dir, clients, update_bytes
        self.last = time.perf_counter()
        self.rows: list[dict] = []
        (out_dir / "metrics.jsonl").write_text("")

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        round_s = time.perf_counter() - self.last
        started = time.perf_counter()
        metrics = self.evaluate(arrays.to_torch_state_dict()).metrics
        eval_s = time.perf_counter() - started
        if server_round > 0:
            row = {"round": server_round, "round_s": round_s, "eval_s": eval_s, **metrics,
                   "bytes_up": self.update_bytes * self.clients, "bytes_down": self.update_bytes * self.clients,
                   "clients": [{"bytes_up": self.update_bytes, "bytes_down": self.update_bytes}] * self.clients}
            self.rows.append(row)
            with (self.out_dir / "metrics.jsonl").open("a") as out:
                out.write(json.dumps(row) + "\n")
        else:
            self.base = metrics
        self.last = time.perf_counter()
        return MetricRecord({k: float(v) for k, v in metrics.items()})


def run_baseline(grid: Grid, cfg: RunConfig) -> dict:
    """Flower's FedAvg over the run config's task, every node every round, centrally evaluated; the summary."""
    out_dir = cfg.output_dir().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    hooks = model_hooks(cfg)
    initial = ArrayRecord(torch_state_dict={n: t.detach().float().contiguous() for n, t in
                                            hooks.initial_state.items()})
    clock = _RoundClock(hooks.evaluate_fn, out_dir, cfg.num_clients, _array_bytes(initial))
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=cfg.num_clients,
                      min_available_nodes=cfg.num_clients)
    started = time.perf_counter()
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.num_server_rounds,
                            train_config=ConfigRecord(cfg.task.to_record()), evaluate_fn=clock)
    save_file(result.arrays.to_torch_state_dict(), out_dir / "global_state.safetensors")
    summary = {"metric": hooks.metric, "metric_base": clock.base[hooks.metric],
               "metric_final": clock.rows[-1][hooks.metric] if clock.rows else None,
               "rounds": len(clock.rows), "bytes_up_total": sum(r["bytes_up"] for r in clock.rows),
               "bytes_down_total": sum(r["bytes_down"] for r in clock.rows), "wall_s": time.perf_counter() - started}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls with the fused run config."""
    quiet_libraries()
    run_baseline(grid, resolve(dict(context.run_config)))


def simulate_baseline(user_config: dict, clients_at_once: int) -> dict:
    """The baseline in Flower's simulation engine (one CPU and one torch thread per client)."""
    from flwr.simulation import run_simulation  # Ray: only here, not in a deployed node's ClientApp

    from simulations.simulate import backend_config

    quiet_libraries()
    cfg = resolve(user_config)
    result: dict = {}
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        result.update(run_baseline(grid, cfg))

    os.environ.setdefault("FEDSQUEEZE_CLIENT_THREADS", "1")
    run_simulation(server_app=app, client_app=client_app, num_supernodes=cfg.num_clients,
                   backend_config=backend_config(parallel=clients_at_once))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Flower's FedAvg baseline in simulation")
    parser.add_argument("--clients", type=int, default=2, help="clients training at once")
    parser.add_argument("--run-config", default="", help="overrides in TOML form, as fedsqueeze simulate takes")
    arguments = parser.parse_args()
    print(json.dumps(simulate_baseline(parse_run_config(arguments.run_config), arguments.clients)))

"""The Flower ClientApp: receive the global adapter, train locally, send back an encoded update."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace

import torch
from datasets import Dataset
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client import messages
from client.quiet import quiet_libraries
from client.task.build import Task, build_task, load_splits
from client.task.loop import train_locally
from client.task.partition import client_partition
from client.task.spec import TaskSpec
from strategies.codecs import encode_update
from strategies.fedavg import subtract

log = logging.getLogger(__name__)
app = ClientApp()


@dataclass
class _Loaded:
    task: Task
    partition: Dataset


_CACHE: dict[tuple, _Loaded] = {}


def _node_partition(context: Context) -> tuple[int, int]:
    config = context.node_config
    try:
        return int(config["partition-id"]), int(config["num-partitions"])
    except KeyError as exc:
        raise ValueError("this node's config lacks partition-id / num-partitions "
                         "(start flower-supernode with --node-config \"partition-id=0 num-partitions=N\")") from exc


def _load(spec: TaskSpec, partition_id: int, num_partitions: int) -> _Loaded:
    """Build the task once per process and spec; later rounds only reload adapter weights."""
    key = (spec, partition_id, num_partitions)
    if key not in _CACHE:
        _CACHE.clear()
        train, _ = load_splits(spec)
        partition = client_partition(train.dataset, partition_id, num_partitions, kind=spec.partitioner,
                                     alpha=spec.dirichlet_alpha, seed=spec.seed)
        _CACHE[key] = _Loaded(build_task(spec, train.label_names), partition)
    return _CACHE[key]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global adapter on this node's data and reply with an encoded update."""
    quiet_libraries()
    threads = int(os.environ.get("FEDSQUEEZE_CLIENT_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    config = dict(msg.content[messages.TRAIN_CONFIG])
    round_id = int(config["round"])
    spec = TaskSpec.from_record({k: v for k, v in config.items() if k in TaskSpec.__dataclass_fields__})
    partition_id, num_partitions = _node_partition(context)
    if context.node_config.get("device"):
        spec = replace(spec, device=str(context.node_config["device"]))
    loaded = _load(spec, partition_id, num_partitions)
    received = {k: v.to(torch.float32) for k, v in msg.content[messages.GLOBAL_ADAPTER].to_torch_state_dict().items()}
    loaded.task.load_adapter_state(received)
    started = time.perf_counter()
    result = train_locally(loaded.task, loaded.partition, steps=spec.local_steps, batch_size=spec.batch_size,
                           lr=spec.lr, seed=spec.seed * 1_000_003 + round_id * 1009 + partition_id)
    delta = subtract(loaded.task.adapter_state(), received)
    encoded_update = encode_update(str(config["codec"]), delta, round_id=round_id, options=config)
    train_s = time.perf_counter() - started
    log.info("partition %d round %d: loss %.4f on %d examples, %d bytes up", partition_id, round_id,
             result.train_loss, result.num_examples, len(encoded_update))
    content = RecordDict({
        messages.UPDATE: ConfigRecord({messages.ENCODED_UPDATE: encoded_update}),
        messages.METRICS: MetricRecord({
            "num-examples": result.num_examples,
            "train-loss": result.train_loss,
            "bytes-up": len(encoded_update),
            "train-s": train_s,
            "partition-id": partition_id,
        }),
    })
    return Message(content=content, reply_to=msg)

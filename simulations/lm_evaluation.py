"""Score an exported adapter on lm-evaluation-harness tasks, next to its base model alone.

One load serves both: the base with the adapter (the project's own loading code, ``client/task/exported.py``) is
handed to lm-eval's ``HFLM`` as a model instance, and the base alone is scored with the adapter switched off
(PEFT's ``disable_adapter``). Task names are lm-eval's own (``mmlu``, ``hellaswag`` ...; their data comes from the
Hugging Face hub) and fedsqueeze's local tasks (``simulations/lm_eval_tasks/``, built offline). lm-eval, torch and
transformers are imported on first use, so the CLI starts without them.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulations.lm_eval_tasks import TASKS_DIR

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

LIST_HINT = "list lm-eval's tasks with: lm-eval ls tasks"
NO_FILTER = "none"  # lm-eval's name for a metric's unfiltered responses ("acc,none")


def _is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).is_file()


@functools.cache
def _local_tasks() -> TaskManager:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@functools.cache
def _all_tasks() -> TaskManager:
    # Indexing lm-eval's own ~15,000 task configs takes seconds: only when a task is not one of fedsqueeze's.
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def _task_manager(tasks: list[str]) -> TaskManager:
    """The smallest task index that knows every task: fedsqueeze's local one, else lm-eval's with it."""
    if not tasks:
        raise ValueError(f"no lm-eval task given ({LIST_HINT}; fedsqueeze's own: {_local_names()})")
    if all(name in _local_tasks().all_tasks or _is_task_file(name) for name in tasks):
        return _local_tasks()
    manager = _all_tasks()
    for name in tasks:
        if name not in manager.all_tasks and not _is_task_file(name):
            close = difflib.get_close_matches(name, manager.all_tasks, n=1)
            guess = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown lm-eval task '{name}'{guess}: {LIST_HINT}; fedsqueeze's own: {_local_names()}")
        entry = manager.task_index.get(name)
        if entry is not None and (entry.cfg or {}).get("unsafe_code"):
            raise ValueError(f"lm-eval task '{name}' runs code the model writes: fedsqueeze evaluate does not run "
                             "such tasks (run lm-eval itself with --confirm_run_unsafe_code in a sandbox)")
    return manager


def _local_names() -> str:
    return ", ".join(_local_tasks().all_tasks)


def check_tasks(tasks: list[str]) -> None:
    """Check that every name is an lm-eval task, group or tag, one of fedsqueeze's local tasks, or a path to a
    task YAML file, before any model loads (a sweep checks its ``--evaluate-tasks`` this way). ValueError with one
    line naming the first unknown task and how to list them."""
    _task_manager(tasks)


def adapter_base_name(adapter_dir: Path, model: str = "") -> str:
    """The base model an adapter is evaluated on: ``model`` when given, else its ``adapter_config.json``'s
    ``base_model_name_or_path``. FileNotFoundError when ``adapter_dir`` is missing or holds no PEFT adapter."""
    if not adapter_dir.is_dir():
        raise FileNotFoundError(f"adapter directory '{adapter_dir}' does not exist")
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"'{adapter_dir}' holds no PEFT adapter (no adapter_config.json)")
    base = model or json.loads(config_path.read_text()).get("base_model_name_or_path") or ""
    if not base:
        raise ValueError(f"{config_path} names no base model: pass the base with --model")
    return str(base)


def _check_options(limit: int | None, batch_size: int, num_fewshot: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"--num-fewshot must be 0 or more, got {num_fewshot}")


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device '{device}' is not a torch device (cpu, cuda, cuda:1, mps ...)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible to torch")


def _quiet_lm_eval() -> None:
    # lm-eval warns on every run about things that are meant here (a model instance, a custom dataset); a caller
    # that set the "lm_eval" logger's level keeps it.
    logger = logging.getLogger("lm_eval")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


def evaluate_adapter(adapter_dir: Path, tasks: list[str], *, model: str = "", limit: int | None = None,
                     batch_size: int = 8, num_fewshot: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Run lm-eval ``tasks`` on the base model alone and with the adapter in ``adapter_dir``, and return a
    JSON-ready mapping: ``tasks``, ``model`` (the base), ``adapter_dir``, ``limit``, ``num_fewshot``, ``base`` and
    ``adapter`` (``{task: {metric: value, metric + "_stderr": value}}``, every task and group lm-eval reported),
    ``difference`` (adapter − base, with a paired stderr where the metric is a per-item mean), ``samples``
    (items scored per task), ``subtasks`` (each group's members) and ``wall_s``.

    The arguments are checked before the model loads: FileNotFoundError for a missing adapter, ValueError for an
    unknown task or a bad option, each one line. ``limit`` caps the items per task (lm-eval's first N), ``device``
    is where the model runs (cpu, cuda, cuda:1 ...).
    """
    started = time.perf_counter()
    _check_options(limit, batch_size, num_fewshot)
    base_name = adapter_base_name(adapter_dir, model)
    manager = _task_manager(tasks)
    _check_device(device)
    from lm_eval.models.huggingface import HFLM

    from client.task.exported import load_adapter
    from client.task.quiet import quiet_libraries

    quiet_libraries()
    _quiet_lm_eval()

    peft_model, tokenizer = load_adapter(adapter_dir, model)
    peft_model.to(device).eval()
    lm = HFLM(pretrained=peft_model, tokenizer=tokenizer, batch_size=batch_size)
    with peft_model.disable_adapter():  # the base alone: PEFT switches the adapter layers off, then on again
        base_raw = _run(lm, tasks, manager, limit, num_fewshot)
    adapter_raw = _run(lm, tasks, manager, limit, num_fewshot)
    return {"tasks": list(tasks), "model": base_name, "adapter_dir": str(adapter_dir), "limit": limit,
            "num_fewshot": num_fewshot, "base": _scores(base_raw), "adapter": _scores(adapter_raw),
            "difference": _differences(base_raw, adapter_raw),
            "samples": {task: counts["effective"] for task, counts in adapter_raw["n-samples"].items()},
            "subtasks": {group: list(members) for group, members in adapter_raw["group_subtasks"].items()},
            "wall_s": round(time.perf_counter() - started, 1)}


def _run(lm: Any, tasks: list[str], manager: TaskManager, limit: int | None, num_fewshot: int | None
         ) -> dict[str, Any]:
    """lm-eval's results for one arm, with each item's metrics (``samples``) for the paired differences."""
    from lm_eval import simple_evaluate

    results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                              num_fewshot=num_fewshot, log_samples=True)
    if results is None:  # only a non-zero rank of a distributed run gets None; this runs in one process
        raise RuntimeError("lm-eval returned no results")
    return dict(results)


def _metric_name(key: str) -> tuple[str, bool] | None:
    """(name, is_stderr) of one of lm-eval's result keys ("acc,none", "acc_stderr,none", "exact_match,strict"),
    None for the rest ("alias", "sample_len"). A filtered metric is named ``metric/filter``."""
    if "," not in key:
        return None
    metric, filter_name = key.split(",", 1)
    is_stderr = metric.endswith("_stderr")
    metric = metric.removesuffix("_stderr")
    return (metric if filter_name == NO_FILTER else f"{metric}/{filter_name}"), is_stderr


def _number(value: object) -> float | None:
    # lm-eval writes "N/A" where a stderr cannot be computed.
    return float(value) if isinstance(value, int | float) and math.isfinite(float(value)) else None


def _scores(raw: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{task: {metric: value, metric + "_stderr": value or None}}`` from lm-eval's ``results``."""
    scores: dict[str, dict[str, float | None]] = {}
    for task, entries in raw["results"].items():
        metrics: dict[str, float | None] = {}
        for key, value in entries.items():
            named = _metric_name(key)
            if named is not None:
                metrics[named[0] + "_stderr" if named[1] else named[0]] = _number(value)
        scores[task] = metrics
    return scores


def _per_item(raw: Mapping[str, Any], task: str, metric: str) -> dict[int, float] | None:
    """Each scored item's value of ``metric`` in ``task`` (by doc id), None when lm-eval logged none or a value
    is not a number (generation metrics scored on the corpus)."""
    name, _, filter_name = metric.partition("/")
    values = {}
    for sample in raw.get("samples", {}).get(task, []):
        if sample.get("filter") != (filter_name or NO_FILTER) or name not in sample:
            continue
        value = _number(sample[name])
        if value is None:
            return None
        values[int(sample["doc_id"])] = value
    return values or None


def _paired_stderr(base_raw: Mapping[str, Any], adapter_raw: Mapping[str, Any], task: str, metric: str,
                   difference: float) -> float | None:
    """The standard error of the adapter − base difference over the same items (paired), when ``metric`` is the
    mean of per-item values in both arms; None otherwise (groups, corpus-level metrics)."""
    base_items, adapter_items = _per_item(base_raw, task, metric), _per_item(adapter_raw, task, metric)
    if not base_items or not adapter_items or base_items.keys() != adapter_items.keys() or len(base_items) < 2:
        return None
    deltas = [adapter_items[doc] - base_items[doc] for doc in sorted(base_items)]
    if not math.isclose(statistics.fmean(deltas), difference, abs_tol=1e-9):
        return None  # the reported score is not the per-item mean: a paired stderr would not describe it
    return statistics.stdev(deltas) / math.sqrt(len(deltas))


def _differences(base_raw: Mapping[str, Any], adapter_raw: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{task: {metric: adapter − base, metric + "_stderr": paired stderr or None}}`` for every metric both arms
    report as a number."""
    base, adapter = _scores(base_raw), _scores(adapter_raw)
    differences: dict[str, dict[str, float | None]] = {}
    for task, metrics in adapter.items():
        rows: dict[str, float | None] = {}
        for metric, value in metrics.items():
            before = base.get(task, {}).get(metric)
            if metric.endswith("_stderr") or value is None or before is None:
                continue
            rows[metric] = value - before
            rows[metric + "_stderr"] = _paired_stderr(base_raw, adapter_raw, task, metric, value - before)
        differences[task] = rows
    return differences


def shown_tasks(result: Mapping[str, Any]) -> list[str]:
    """The tasks a summary shows: those asked for by name, and every other task that is not a member of a
    group in the results (a tag such as ``ai2_arc`` expands to its tasks, a group such as ``mmlu`` shows its own
    score, not its 57 subjects)."""
    members = {member for group in result["subtasks"].values() for member in group}
    return [task for task in result["adapter"] if task in result["tasks"] or task not in members]


def _plus_minus(value: float | None, stderr: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{text} ± {stderr:.3f}" if stderr is not None else text


def render_table(result: Mapping[str, Any]) -> str:
    """A short table of an ``evaluate_adapter`` result: one line per task and metric with the base score, the
    adapter's and the difference (each ± its stderr; the difference's is paired), then what was scored."""
    header = ("task", "metric", "base", "adapter", "difference")
    rows = []
    for task in shown_tasks(result):
        for metric, value in result["adapter"][task].items():
            if metric.endswith("_stderr"):
                continue
            base, change = result["base"].get(task, {}), result["difference"].get(task, {})
            rows.append((task, metric, _plus_minus(base.get(metric), base.get(metric + "_stderr")),
                         _plus_minus(value, result["adapter"][task].get(metric + "_stderr")),
                         _plus_minus(change.get(metric), change.get(metric + "_stderr"), signed=True)))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    counts = sorted({result["samples"][task] for task in shown_tasks(result) if task in result["samples"]})
    items = f"{'/'.join(map(str, counts))} items per task" if counts else "items per task: see the subtasks"
    lines.append(f"base {result['model']}, adapter {result['adapter_dir']}: {items}, {result['wall_s']} s")
    return "\n".join(lines)

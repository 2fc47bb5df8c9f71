"""``fedsqueeze evaluate``: lm-evaluation-harness tasks on an exported adapter and on its base alone."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_TASKS = "fedsqueeze_wordnet_gloss"


def _task_list(text: str) -> list[str]:
    tasks = [name.strip() for name in text.split(",") if name.strip()]
    if not tasks:
        raise ValueError("--tasks names no task (comma-separated lm-eval task names)")
    return tasks


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory: name the JSON file to write")
    tasks = _task_list(args.tasks)
    from simulations.lm_evaluation import evaluate_adapter, render_table

    result = evaluate_adapter(Path(args.adapter), tasks, model=args.model, limit=args.limit,
                              batch_size=args.batch_size, num_fewshot=args.num_fewshot, device=args.device)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else render_table(result))
    if args.out:
        print(f"results in {Path(args.out).resolve()}", file=sys.stderr)
    return 0


def add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    """Register ``fedsqueeze evaluate`` on the CLI's subcommands (its imports wait until it runs)."""
    evaluate = sub.add_parser("evaluate", help="score an exported adapter and its base alone on lm-eval tasks "
                                               "(MMLU, FlowerTune's suites, fedsqueeze's offline WordNet task)")
    evaluate.add_argument("--adapter", required=True, help="the adapter directory a run wrote (OUT/adapter)")
    evaluate.add_argument("--tasks", default=DEFAULT_TASKS,
                          help="comma-separated lm-eval tasks, groups or tags, e.g. mmlu,hellaswag (their data "
                               f"comes from the Hugging Face hub), or task YAML files (default {DEFAULT_TASKS}: "
                               "offline; list lm-eval's with: lm-eval ls tasks)")
    evaluate.add_argument("--model", default="", help="the base model (default: the adapter config's base)")
    evaluate.add_argument("--limit", type=int, default=None,
                          help="score at most N items per task (lm-eval's first N; default all)")
    evaluate.add_argument("--batch-size", type=int, default=8, help="items per forward pass (default 8)")
    evaluate.add_argument("--num-fewshot", type=int, default=None,
                          help="examples in each prompt (default: each task's own, else 0)")
    evaluate.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:1 ...")
    evaluate.add_argument("--out", default="", metavar="FILE", help="also write the results as JSON to FILE")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    evaluate.set_defaults(func=_cmd_evaluate)
